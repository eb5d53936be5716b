"""`kb query`: filters, output formats, and the record cache behind them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bibtexparser
import pybtex.database
import pytest
import yaml

from tokenkb import cache
from tokenkb.bibtex import entry
from tokenkb.formats import JSON_KEYS, md_escape, to_md, to_table
from tokenkb.problems import RecordError
from tokenkb.query import FilterError, Filters, check_filters, select
from tokenkb.store import record_paths

from .conftest import PAPERS, ROOT, valid_record

ALL_IDS = sorted(p.stem for p in record_paths(PAPERS))


def ids(run_out: str) -> list[str]:
    return sorted(record["id"] for record in json.loads(run_out))


def query(kb, *args: str) -> list[str]:
    result = kb("--papers", str(PAPERS), "query", "--format", "json", *args)
    assert result.code == 0, result.err
    return ids(result.out)


# --- filters ----------------------------------------------------------------------------------


def test_no_filter_selects_everything(kb) -> None:
    assert query(kb) == ALL_IDS


def test_json_has_the_documented_keys_for_every_record(kb) -> None:
    result = kb("--papers", str(PAPERS), "query", "--format", "json")
    records = json.loads(result.out)
    assert len(records) == len(ALL_IDS)
    for record in records:
        assert set(JSON_KEYS) <= set(record), record["id"]
        assert isinstance(record["modality"], list) and isinstance(record["family"], list)


# Every record, read once with PyYAML: filters are checked against plain predicates on these, so
# the tests hold as papers/ grows. Known members are named too, so an empty result cannot pass.
RECORDS = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in record_paths(PAPERS)}


def expect(kb, args: list[str], predicate, members: set[str]) -> None:  # type: ignore[no-untyped-def]
    got = query(kb, *args)
    assert got == sorted(i for i, r in RECORDS.items() if predicate(r)), args
    assert members <= set(got), args


def test_modality_and_family(kb) -> None:
    expect(
        kb,
        ["--modality", "vlm"],
        lambda r: "vlm" in r.get("modality", []),
        {"fastv-2024", "prumerge-2025"},
    )
    expect(
        kb,
        ["--modality", "diffusion"],
        lambda r: "diffusion" in r.get("modality", []),
        {"tome-sd-2023"},
    )
    expect(
        kb,
        ["--modality", "ssm", "--modality", "diffusion"],
        lambda r: {"ssm", "diffusion"} & set(r.get("modality", [])),
        {"token-pruning-vision-ssm-2024", "tome-sd-2023", "tor-ssm-2024"},
    )
    expect(
        kb,
        ["--family", "kv-eviction"],
        lambda r: "kv-eviction" in r.get("family", []),
        {"h2o-2023", "snapkv-2024", "streamingllm-2024"},
    )
    expect(
        kb,
        ["--modality", "language", "--family", "prompt-compression"],
        lambda r: (
            "language" in r.get("modality", []) and "prompt-compression" in r.get("family", [])
        ),
        {"llmlingua-2023", "longllmlingua-2024"},
    )


def test_training_free_partitions_the_methods(kb) -> None:
    free = query(kb, "--training-free")
    trained = query(kb, "--needs-training")
    assert {"tome-2023", "fastv-2024", "h2o-2023"} <= set(free)
    assert {"dynamicvit-2021"} <= set(trained)
    assert not set(free) & set(trained)
    # Methods whose training-freeness nobody has verified are in neither set.
    unknown = [i for i, r in RECORDS.items() if r["kind"] == "method" and "training_free" not in r]
    assert sorted(free + trained + unknown) == query(kb, "--kind", "method")


def test_year_since_venue(kb) -> None:
    expect(kb, ["--year", "2021"], lambda r: r["year"] == 2021, {"dynamicvit-2021"})
    expect(kb, ["--since", "2024"], lambda r: r["year"] >= 2024, {"fastv-2024", "kivi-2024"})
    expect(
        kb,
        ["--venue", "ICLR"],
        lambda r: r.get("venue", "").startswith("ICLR "),
        {"evit-2022", "streamingllm-2024", "tome-2023"},
    )
    expect(kb, ["--venue", "iclr 2023"], lambda r: r.get("venue") == "ICLR 2023", {"tome-2023"})
    expect(
        kb,
        ["--venue", "CVPR 2023 Workshop"],
        lambda r: r.get("venue") == "CVPR 2023 Workshop",
        {"tome-sd-2023"},
    )
    expect(
        kb, ["--venue", "CVPR"], lambda r: r.get("venue", "").startswith("CVPR "), {"tome-sd-2023"}
    )


def test_search_finds_titles_nicknames_authors(kb) -> None:
    assert "tome-2023" in query(kb, "--search", "token merging")
    assert query(kb, "--search", "FastV")[0] == "fastv-2024"  # FastVLM matches too
    assert query(kb, "--search", "bolya") == ["tome-2023", "tome-sd-2023"]
    assert query(kb, "--search", "attention sinks") == ["streamingllm-2024"]
    assert query(kb, "--search", "no such words anywhere") == []


def test_has_code_and_has_impl(kb, papers_dir: Path) -> None:
    (papers_dir / "valid-2023.yaml").write_text(valid_record(), encoding="utf-8")
    (papers_dir / "impl-2023.yaml").write_text(
        valid_record("impl-2023", "Another Title", "2301.00002")
        + "code: https://github.com/owner/repo\nimpl: reference_impls.vision.tome\nimpl_level: family\n",
        encoding="utf-8",
    )
    result = kb("--papers", str(papers_dir), "query", "--has-impl", "--format", "json")
    assert ids(result.out) == ["impl-2023"]
    result = kb("--papers", str(papers_dir), "query", "--has-code", "--format", "json")
    assert ids(result.out) == ["impl-2023"]
    expect(kb, ["--has-code"], lambda r: bool(r.get("code")), {"tome-2023", "h2o-2023"})
    expect(kb, ["--has-impl"], lambda r: bool(r.get("impl")), set())


def test_unknown_filter_value_is_a_usage_error(kb) -> None:
    result = kb("--papers", str(PAPERS), "query", "--family", "kv-evict")
    assert result.code == 2
    assert "did you mean 'kv-eviction'?" in result.err
    with pytest.raises(FilterError, match="did you mean 'vlm'"):
        check_filters(Filters(modality=["VLM"]))


def test_results_are_newest_first() -> None:
    records = [
        {"id": "b-2021", "year": 2021, "modality": ["vision"], "kind": "method"},
        {"id": "a-2024", "year": 2024, "modality": ["vision"], "kind": "method"},
        {"id": "c-2024", "year": 2024, "modality": ["vision"], "kind": "method"},
    ]
    assert [r["id"] for r in select(records, Filters())] == ["a-2024", "c-2024", "b-2021"]


# --- formats ----------------------------------------------------------------------------------

HOSTILE = {
    "id": "hostile-2024",
    "title": "<script>alert(1)</script> | [x](y) `code` {braces} 50% & $math$ #1 \\ ~ ^ é 高效",
    "aliases": [],
    "authors": ["Zoë O'Brien", "Jean-Luc D_Arc"],
    "year": 2024,
    "venue": "CVPR 2024 Workshop",
    "kind": "method",
    "modality": ["vision"],
    "family": ["merging"],
    "training_free": True,
    "arxiv": "2401.00001",
    "doi": "10.1109/x_y.2024.1",
    "paper": "https://arxiv.org/abs/2401.00001",
    "code": None,
    "impl": None,
    "impl_level": None,
    "sources": [],
}


def test_bibtex_is_read_back_by_bibtexparser_and_pybtex(kb) -> None:
    result = kb("--papers", str(PAPERS), "query", "--format", "bibtex")
    library = bibtexparser.parse_string(result.out)
    assert not library.failed_blocks
    assert sorted(e.key for e in library.entries) == ALL_IDS
    data = pybtex.database.parse_string(result.out, "bibtex")
    assert sorted(data.entries) == ALL_IDS
    tome = data.entries["tome-2023"]
    assert tome.fields["booktitle"] == "ICLR"
    assert tome.fields["year"] == "2023"
    assert str(tome.persons["author"][0]) == "Bolya, Daniel"


def test_bibtex_escapes_hostile_text() -> None:
    text = entry(HOSTILE)
    library = bibtexparser.parse_string(text)
    assert not library.failed_blocks
    title = library.entries[0]["title"]
    assert title.startswith("{") and title.endswith("}")
    assert r"\{braces\}" in title and r"50\% \& \$math\$ \#1 \textbackslash{}" in title
    assert library.entries[0]["booktitle"] == "CVPR Workshops"
    pybtex.database.parse_string(text, "bibtex")  # a real BibTeX reader accepts it too


def test_bibtex_arxiv_only_is_an_article() -> None:
    record = {**HOSTILE, "venue": "arXiv", "title": "Plain"}
    text = entry(record)
    assert text.startswith("@article{hostile-2024,")
    assert "journal = {arXiv preprint arXiv:2401.00001}" in text


def test_markdown_escapes_hostile_text() -> None:
    line = to_md([HOSTILE])
    assert "<script>" not in line
    assert "&lt;script&gt;" in line
    assert r"\[x\]\(y\)" in line and r"\|" in line and r"\`code\`" in line


def test_yaml_format_loads(kb) -> None:
    result = kb("--papers", str(PAPERS), "query", "--format", "yaml", "--modality", "vlm")
    loaded = yaml.safe_load(result.out)
    assert sorted(r["id"] for r in loaded) == query(kb, "--modality", "vlm")
    assert "doi" not in loaded[0]  # empty fields are left out


def test_md_format_one_line_per_record(kb) -> None:
    result = kb("--papers", str(PAPERS), "query", "--format", "md", "--family", "kv-eviction")
    lines = result.out.splitlines()
    assert len(lines) == len(query(kb, "--family", "kv-eviction")) and all(
        line.startswith("- **[") for line in lines
    )
    assert "[[code]](https://github.com/mit-han-lab/streaming-llm)" in result.out


def test_table_is_aligned_and_clipped() -> None:
    records = [{**HOSTILE, "title": "A very long title " * 10}]
    table = to_table(records, width=140).splitlines()
    assert table[0].split() == ["ID", "YEAR", "VENUE", "MODALITY", "FAMILY", "TF", "CODE", "TITLE"]
    assert len(table[1]) <= 140 and table[1].endswith("…")
    assert table[1].index("A very") == table[0].index("TITLE")
    narrow = to_table(records, width=80).splitlines()
    assert narrow[0].split() == ["ID", "YEAR", "FAMILY", "TF", "TITLE"]
    assert len(narrow[1]) <= 80
    assert to_table(records).splitlines()[1].endswith("title")  # a pipe: nothing clipped
    assert table[-1] == "1 record"
    assert to_table([]).splitlines()[-1] == "0 records"


def test_md_escape_neutralises_html() -> None:
    assert md_escape("<b>&") == "&lt;b&gt;&amp;"


# --- cache ------------------------------------------------------------------------------------


def _copy_papers(tmp_path: Path, age_s: float = 60) -> Path:
    papers = tmp_path / "proj" / "papers"
    shutil.copytree(PAPERS, papers)
    past = time.time() - age_s
    for path in papers.iterdir():
        os.utime(path, (past, past))
    return papers


def test_warm_query_does_not_import_pydantic(tmp_path: Path) -> None:
    """The fast path: a warm cache answers without loading the schema machinery."""
    papers = _copy_papers(tmp_path)
    env = {**os.environ, "TOKENKB_CACHE_DIR": str(tmp_path / "c"), "TOKENKB_PAPERS": str(papers)}
    script = (
        "import sys, io, contextlib\n"
        "from tokenkb.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(['query', '--modality', 'vlm', '--format', 'json'])\n"
        "print(code, 'pydantic' in sys.modules, len(out.getvalue()) > 0)\n"
    )
    first = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert first.stdout.split() == ["0", "True", "True"]  # cold: validated, cache written
    second = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert second.stdout.split() == ["0", "False", "True"]


def test_cache_sees_edits_additions_and_deletions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "c"))
    papers = _copy_papers(tmp_path)
    first = cache.load_records(papers)
    assert [r["id"] for r in first] == ALL_IDS
    target = papers / "tome-2023.yaml"
    target.write_text(target.read_text().replace("Your ViT But Faster", "Your ViT But Quicker"))
    (papers / "valid-2023.yaml").write_text(valid_record())
    (papers / "h2o-2023.yaml").unlink()
    second = {r["id"]: r for r in cache.load_records(papers)}
    assert second["tome-2023"]["title"] == "Token Merging: Your ViT But Quicker"
    assert "valid-2023" in second and "h2o-2023" not in second


def test_cache_distrusts_a_racy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file rewritten in the same clock tick as the cache (same size, same mtime) is re-read."""
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "c"))
    papers = tmp_path / "papers"
    papers.mkdir()
    target = papers / "valid-2023.yaml"
    target.write_text(valid_record(title="Title AAAA"))
    stamp = target.stat().st_mtime_ns
    assert cache.load_records(papers)[0]["title"] == "Title AAAA"
    target.write_text(valid_record(title="Title BBBB"))  # same size
    os.utime(target, ns=(stamp, stamp))  # and the same mtime: stat cannot tell
    assert cache.load_records(papers)[0]["title"] == "Title BBBB"


def test_invalid_record_is_reported_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kb
) -> None:
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "c"))
    papers = _copy_papers(tmp_path)
    bad = papers / "valid-2023.yaml"
    bad.write_text(valid_record().replace("- vision", "- vllm"))
    for _ in range(2):
        with pytest.raises(RecordError) as info:
            cache.load_records(papers)
        assert [p.line for p in info.value.problems] == [9]
    result = kb("--papers", str(papers), "query")
    assert result.code == 1
    assert f"{bad}:9: modality 'vllm'" in result.err
    assert result.out == ""


def test_corrupt_cache_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "c"))
    papers = _copy_papers(tmp_path)
    cache.load_records(papers)
    cache.cache_path(papers).write_text("{not json")
    assert [r["id"] for r in cache.load_records(papers)] == ALL_IDS


def test_default_papers_dir_is_found_from_a_subdirectory(
    monkeypatch: pytest.MonkeyPatch, kb
) -> None:
    monkeypatch.delenv("TOKENKB_PAPERS", raising=False)
    monkeypatch.chdir(ROOT / "tests" / "data")
    result = kb("query", "--format", "json")
    assert ids(result.out) == ALL_IDS


def test_broken_pipe_is_not_an_error(tmp_path: Path) -> None:
    """`kb query | head`: output larger than a pipe buffer, reader gone; no traceback."""
    papers = tmp_path / "papers"
    papers.mkdir()
    for i in range(400):
        (papers / f"w{i}-2023.yaml").write_text(
            valid_record(f"w{i}-2023", f"Title number {i}", f"2301.{i:05d}")
        )
    env = {**os.environ, "TOKENKB_CACHE_DIR": str(tmp_path / "c"), "TOKENKB_PAPERS": str(papers)}
    done = subprocess.run(
        f"{sys.executable} -m tokenkb.cli query --format json | head -c 10",
        shell=True, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "Traceback" not in done.stderr
