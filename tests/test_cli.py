"""The `kb` commands, run in process: exit codes, streams, and documentation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tokenkb.cli import build_parser, main
from tokenkb.taxonomy import MEANINGS, VENUES

from .conftest import DATA, PAPERS, ROOT, valid_record

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_commands_exist() -> None:
    assert {"validate", "fmt", "query", "render", "build", "vocab"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: kb {command}")
    assert len(out.splitlines()) >= 4


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_documented_in_readme(command: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"`kb {command}\b", readme), f"README.md does not document kb {command}"


def test_readme_has_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = re.search(r"^(.*pytest.*)$", readme, re.M)
    assert test_command, "README.md has no test command"
    assert test_command.group(1).strip() in ci
    assert "kb build" in readme


# --- validate ---------------------------------------------------------------------------------


def test_validate_clean_papers(kb) -> None:
    result = kb("validate", str(PAPERS))
    assert (result.code, result.out) == (0, "")
    assert result.err == f"{len(list(PAPERS.glob('*.yaml')))} records valid\n"


def test_validate_problems_on_stdout_count_on_stderr(kb) -> None:
    bad = DATA / "invalid" / "bad-modality-2023.yaml"
    unknown = DATA / "invalid" / "unknown-field-2023.yaml"
    result = kb("validate", str(bad), str(unknown))
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{bad}:9: modality 'vllm' is not one of vision, video, language, vlm, audio, diffusion, ssm, multimodal; did you mean 'vlm'?",
        f"{unknown}:12: unknown field 'traning_free'; did you mean 'training_free'?",
    ]
    assert result.err == "2 problems in 2 of 2 files\n"


def test_validate_missing_path_is_a_usage_error(kb) -> None:
    result = kb("validate", "no/such/file.yaml")
    assert result.code == 2
    assert result.err == "kb validate: no such file or directory: no/such/file.yaml\n"


def test_validate_defaults_to_papers(kb, papers_dir: Path) -> None:
    (papers_dir / "valid-2023.yaml").write_text(valid_record())
    assert kb("--papers", str(papers_dir), "validate").code == 0


def test_cross_record_problems(kb, papers_dir: Path) -> None:
    (papers_dir / "first-2023.yaml").write_text(
        valid_record("first-2023", "Token Merging") + "aliases:\n- ToMe\ndoi: 10.1000/abc\n"
    )
    (papers_dir / "second-2023.yaml").write_text(
        valid_record("second-2023", "token merging!", "2301.00001").replace(
            "authors:", "aliases:\n- TOME\nauthors:"
        )
        + "doi: 10.1000/ABC\n"
    )
    (papers_dir / "third.yml").write_text(valid_record("third-2023", "Third", "2301.00003"))
    result = kb("validate", str(papers_dir))
    assert result.code == 1
    first, second = papers_dir / "first-2023.yaml", papers_dir / "second-2023.yaml"
    assert result.out.splitlines() == [
        f"{second}:2: title 'token merging!' is also the title of first-2023 ({first}:2); names must point at one work, so make this one distinct (e.g. add the venue or a qualifier)",
        f"{second}:4: alias 'TOME' is also the alias of first-2023 ({first}:15); names must point at one work, so make this one distinct (e.g. add the venue or a qualifier)",
        f"{second}:15: arXiv id 2301.00001 is also in first-2023 ({first}); the same work should have one record: merge them",
        f"{second}:16: DOI 10.1000/abc is also in first-2023 ({first}); the same work should have one record: merge them",
        f"{papers_dir / 'third.yml'}:1: records use the .yaml extension; rename to 'third.yaml'",
    ]


def test_duplicate_ids_across_directories(kb, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for directory, arxiv in ((one, "2301.00001"), (two, "2301.00002")):
        directory.mkdir()
        (directory / "same-2023.yaml").write_text(
            valid_record("same-2023", f"Title {arxiv}", arxiv)
        )
    result = kb("validate", str(one), str(two))
    assert result.out.splitlines() == [
        f"{two / 'same-2023.yaml'}:1: id 'same-2023' is also used by {one / 'same-2023.yaml'}:1"
    ]


def test_parallel_validation_matches_serial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenkb import validate as validate_module

    papers = tmp_path / "papers"
    papers.mkdir()
    for i in range(30):
        (papers / f"w{i}-2023.yaml").write_text(
            valid_record(f"w{i}-2023", f"Title {i}", f"2301.{i:05d}")
        )
    (papers / "w3-2023.yaml").write_text(valid_record("w3-2023", "Title 4", "2301.00005"))
    serial = validate_module.validate([papers], keep_records=True, jobs=1)
    monkeypatch.setattr(validate_module, "PARALLEL_THRESHOLD", 2)
    monkeypatch.setattr(validate_module, "CHUNK", 7)
    parallel = validate_module.validate([papers], keep_records=True, jobs=2)
    assert parallel.problems == serial.problems and len(serial.problems) == 2
    assert parallel.records == serial.records and len(serial.records) == 30


# --- fmt --------------------------------------------------------------------------------------


def test_fmt_check_and_rewrite(kb, papers_dir: Path) -> None:
    path = papers_dir / "valid-2023.yaml"
    path.write_text(valid_record().replace("modality:\n- vision", "modality: [vision]"))
    result = kb("fmt", "--check", str(papers_dir))
    assert result.code == 1
    assert result.out == f"{path}:1: not in canonical form; run 'kb fmt {path}'\n"
    assert kb("fmt", str(papers_dir)).code == 0
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../schema/paper.schema.json\n")
    assert "modality:\n- vision\n" in text
    assert kb("fmt", "--check", str(papers_dir)).code == 0


def test_fmt_never_drops_comments(kb, papers_dir: Path) -> None:
    path = papers_dir / "valid-2023.yaml"
    original = valid_record().replace(
        "year: 2023", "year: 2023  # arXiv v1\n# a note for reviewers"
    )
    path.write_text(original)
    result = kb("fmt", str(path))
    assert result.code == 1
    assert [line.split(": ", 1)[0] for line in result.out.splitlines()] == [
        f"{path}:5",
        f"{path}:6",
    ]
    assert path.read_text() == original


def test_fmt_leaves_invalid_files_alone(kb, papers_dir: Path) -> None:
    path = papers_dir / "valid-2023.yaml"
    original = valid_record().replace("- vision", "- vllm")
    path.write_text(original)
    result = kb("fmt", str(path))
    assert result.code == 1 and "did you mean 'vlm'" in result.out
    assert path.read_text() == original


def test_fmt_keeps_hash_inside_values(kb, papers_dir: Path) -> None:
    path = papers_dir / "valid-2023.yaml"
    path.write_text(valid_record("valid-2023", "'C# and #hashtags: a title'"))
    assert kb("fmt", str(path)).code == 0
    assert "title: 'C# and #hashtags: a title'\n" in path.read_text()


# --- render, build, vocab ---------------------------------------------------------------------


def test_repository_generated_files_are_fresh(kb) -> None:
    result = kb("--papers", str(PAPERS), "render", "--check")
    assert result.code == 0, result.out


def test_render_check_reports_stale_files_with_a_diff(kb, papers_dir: Path) -> None:
    result = kb("--papers", str(papers_dir), "render", "--check")
    assert result.code == 1
    assert result.out.startswith("--- a/schema/paper.schema.json\n+++ b/schema/paper.schema.json\n")
    assert kb("--papers", str(papers_dir), "render").code == 0
    assert kb("--papers", str(papers_dir), "render", "--check").code == 0


def test_build_validates_renders_and_summarises(kb, tmp_path: Path) -> None:
    papers = tmp_path / "proj" / "papers"
    shutil.copytree(PAPERS, papers)
    result = kb("--papers", str(papers), "build", "--no-site")  # the site: tests/test_site.py
    assert result.code == 0, result.out
    records = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in PAPERS.glob("*.yaml")]
    methods = sum(r["kind"] == "method" for r in records)
    evicting = sum("kv-eviction" in r.get("family", []) for r in records)
    assert result.out.startswith(f"tokenkb: {len(records)} works, {methods} methods\n")
    assert f"kv-eviction {evicting}," in result.out
    assert (tmp_path / "proj" / "schema" / "paper.schema.json").exists()
    assert (tmp_path / "proj" / "awesome" / "README.md").exists()
    assert "[1/2] validating" in result.err and "[2/2] rendering" in result.err


def test_build_stops_on_invalid_records(kb, tmp_path: Path) -> None:
    papers = tmp_path / "proj" / "papers"
    papers.mkdir(parents=True)
    (papers / "valid-2023.yaml").write_text(valid_record().replace("year: 2023", "year: '2023'"))
    result = kb("--papers", str(papers), "build")
    assert result.code == 1
    assert "year: expected a whole number" in result.out
    assert not (tmp_path / "proj" / "schema").exists()


def test_vocab_lists_every_value(kb) -> None:
    out = kb("vocab").out
    for meanings in MEANINGS.values():
        for value, meaning in meanings.items():
            assert re.search(rf"^  {re.escape(value)} +{re.escape(meaning)}$", out, re.M)
    assert all(v in out for v in VENUES)
