"""Importers, deduplication, merging and `kb import` / `kb dedupe` on small hand-written fixtures
(one per list dialect, each with broken and hostile lines), never on copies of the real lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tokenkb import importer
from tokenkb.dedupe import Item, find_duplicates
from tokenkb.sources.links import read_link, repair
from tokenkb.store import load_record, record_paths
from tokenkb.titles import title_key

from .conftest import PAPERS

DATA = Path(__file__).parent / "data" / "sources"


def run(kb: Any, *args: str) -> tuple[int, str, str]:
    result = kb(*args)
    return result.code, result.out, result.err


def entries(name: str) -> dict[int, importer.Entry]:
    return {e.line: e for e in importer.read_source(DATA / name).entries}


# --- text and links ---------------------------------------------------------------------------


def test_repair_undoes_cp1252_and_mac_roman_mojibake() -> None:
    assert repair("Don\u00e2\u20ac\u2122t Look Twice") == "Don\u2019t Look Twice"
    assert repair("## \uf8ffüî• News") == "## 🔥 News"  # UTF-8 read as Mac Roman
    assert repair("Stéphane Clinchant") == "Stéphane Clinchant"  # correct text is left alone


@pytest.mark.parametrize(
    ("url", "field", "value"),
    [
        ("https://arxiv.org/pdf/2210.09461v2.pdf", "arxiv", "2210.09461"),
        ("https://arxiv.org/abs/2402.03766.pdf", "arxiv", "2402.03766"),
        ("https://arxiv.org/abs//2406.02657", "arxiv", "2406.02657"),
        ("https://doi.org/10.48550/arXiv.2111.00230", "arxiv", "2111.00230"),
        ("https://doi.org/10.1007/s00521-024-09444-0", "doi", "10.1007/s00521-024-09444-0"),
        ("https://ieeexplore.ieee.org/stamp/stamp.jsp?tp=&arnumber=10071047", "ieee", "10071047"),
        ("https://ieeexplore.ieee.org/abstract/document/10183862", "ieee", "10183862"),
        ("https://openreview.net/pdf?id=BjyvwnXXVn_", "openreview", "BjyvwnXXVn_"),
        ("https://aclanthology.org/2023.acl-long.353.pdf", "acl", "2023.acl-long.353"),
        ("https://dl.acm.org/doi/abs/10.1145/3534678.3539260", "doi", "10.1145/3534678.3539260"),
        (
            "https://github.com/youweiliang/evit?tab=readme-ov-file",
            "code",
            "https://github.com/youweiliang/evit",
        ),
        (
            "https://rccchoudhury.github.io/projects/rlt/",
            "project",
            "https://rccchoudhury.github.io/projects/rlt/",
        ),
    ],
)
def test_links_become_identifiers(url: str, field: str, value: str) -> None:
    assert getattr(read_link(url), field) == value


# --- the dialects -----------------------------------------------------------------------------


def test_venue_first_dialect() -> None:
    found = entries("venue_first.md")
    tome = found[5]
    assert (tome.title, tome.venue, tome.arxiv) == (
        "Token Merging: Your ViT But Faster",
        "ICLR 2023",
        "2210.09461",
    )
    assert tome.code == "https://github.com/facebookresearch/ToMe"
    assert tome.modality == ["vision"]
    # A "title" that is a URL: matched by its IEEE id only, its code link not trusted.
    url_title = found[7]
    assert url_title.title is None and url_title.ieee == "10183862"
    assert url_title.venue == "TIP 2023"  # the year comes from the section heading
    assert found[8].venue == "arXiv" and found[8].year == 2023
    result = importer.read_source(DATA / "venue_first.md")
    assert [(u.line, u.reason) for u in result.unparsed] == [
        (11, "no title could be read from this bullet")
    ]
    assert [u.line for u in result.skipped] == [10]


def test_link_title_dialect_with_a_wrapped_title_and_hostile_tags() -> None:
    found = entries("link_title.md")
    fastv = found[3]
    assert fastv.aliases == ["FastV"] and fastv.venue == "ECCV 2024"
    assert fastv.code == "https://github.com/pkunlp-icler/FastV"
    prumerge = found[4]  # the title wraps onto the next line
    assert prumerge.title == (
        "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models"
    )
    assert prumerge.arxiv == "2403.15388" and "video" in prumerge.modality
    assert (
        prumerge.code is None and prumerge.project == "https://rccchoudhury.github.io/projects/x/"
    )
    assert any("not a code repository" in p for p in prumerge.problems)
    cls = found[6]  # brackets inside the link text, an OpenReview pdf link
    assert cls.title == "[CLS] Tokens Are Enough" and cls.openreview == "UQJ7CDW8nb"


def test_numbered_bold_dialect_reads_authors_badges_and_venues() -> None:
    found = entries("numbered_bold.md")
    merger = found[7]
    assert merger.venue == "TIP 2023" and merger.ieee == "10183862"
    assert merger.authors == ["Zhanzhou Feng", "Shiliang Zhang"]
    assert merger.family == ["merging"] and merger.training_free is False
    zero = found[13]
    assert zero.training_free is True and zero.family == ["pruning"]
    assert zero.aliases == ["Zero-TPrune"]


def test_structured_blocks_split_where_a_header_is_missing() -> None:
    result = importer.read_source(DATA / "structured.txt")
    found = {e.line: e for e in result.entries}
    assert found[1].venue == "ICLR 2022" and found[1].authors == []  # "et al." is not a list
    minicache = found[7]
    # The arXiv id below the repeated field belongs to the headless work, not to MiniCache.
    assert minicache.arxiv is None
    assert minicache.authors == ["Akide Liu", "Jing Liu", "Zizheng Pan"]
    assert any("missing header" in p for p in minicache.problems)
    assert found[16].aliases == ["ToMe-SD"] and found[16].arxiv == "2303.17604"
    assert found[16].venue == "CVPR 2023 Workshop" and found[16].modality == ["diffusion"]
    unparsed = {u.line: u.reason for u in result.unparsed}
    assert "2401.15077" in unparsed[12] and "repeats" in unparsed[12]
    assert 19 in unparsed


def test_free_text_citations_in_several_styles() -> None:
    result = importer.read_source(DATA / "citations.txt")
    found = {e.line: e for e in result.entries}
    assert found[3].title == "Token Merging for Fast Stable Diffusion"
    assert found[3].authors == ["Daniel Bolya", "Judy Hoffman"] and found[3].year == 2023
    assert found[4].title == (  # a comma inside the title
        "Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation"
    )
    assert found[5].title.startswith("Not all patches are what you need")
    assert found[6].title == "SaiT: Sparse Vision Transformers through Adaptive Token Pruning"
    assert found[7].title.startswith("AirNN: A Featherweight Framework")  # quoted title
    assert found[8].kind == "blog"
    assert found[11].kind == "thesis"
    assert [u.line for u in result.skipped] == [10]  # a taxonomy bullet is not a work


def test_bibtex_failed_blocks_are_reported_not_dropped() -> None:
    result = importer.read_source(DATA / "works.bib")
    assert [e.title for e in result.entries] == [
        "Token Merging: Your ViT But Faster",
        "SnapKV: LLM Knows What You are Looking for Before Generation",
    ]
    tome, snap = result.entries
    assert tome.venue == "ICLR 2023" and tome.arxiv == "2210.09461"
    assert snap.arxiv == "2404.14469" and snap.code == "https://github.com/FasterDecoding/SnapKV"
    reasons = [u.reason for u in result.unparsed]
    assert len(reasons) == 2 and "duplicate key 'snap'" in reasons[1]


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some prose\nwith no list in it\n", encoding="utf-8")
    with pytest.raises(importer.ImportError_, match="cannot tell the format"):
        importer.read_source(path)


# --- deduplication ----------------------------------------------------------------------------


def test_dedupe_by_id_title_and_fuzzy_title_but_not_by_nickname() -> None:
    items = [
        Item("a", "Token Merging: Your ViT But Faster", {"arxiv": "2210.09461"}),
        Item("b", "TOKEN MERGING: YOUR VIT BUT FASTER", {}),
        Item("c", "Token Merging (ToMe): Your ViT But Faster", {"doi": "10.1/x"}),
        Item("d", "PPT: Token Pruning and Pooling for Efficient Vision Transformers", {}),
        Item("e", "PPT: Token-Pruned Pose Transformer for Human Pose Estimation", {}),
        Item("f", "Token Merging: Your ViT But Fastr", {}),  # a typo
        Item("g", "Expediting Vision Transformers via Token Reorganizations", {}, []),
        Item("h", "EViT", {}, ["Expediting Vision Transformers via Token Reorganizations"]),
    ]
    groups = {tuple(sorted(items[i].key for i in g)) for g in find_duplicates(items).groups}
    assert ("a", "b", "c", "f") in groups
    assert ("d",) in groups and ("e",) in groups
    assert ("g", "h") in groups


def test_same_id_different_title_and_same_title_different_id_are_conflicts() -> None:
    items = [
        Item("a", "TempMe: Video Temporal Token Merging", {"arxiv": "2409.01156"}),
        Item("b", "A Completely Unrelated Paper On Graphs", {"arxiv": "2409.01156"}),
        Item("c", "Unlocking Context Constraints of LLMs", {"arxiv": "2304.12102"}),
        Item("d", "Unlocking context constraints of LLMs", {"arxiv": "2310.06201"}),
    ]
    result = find_duplicates(items)
    kinds = sorted(c.kind for c in result.conflicts)
    assert kinds == ["same-id-different-title", "same-title-different-id"]
    assert all(len(g) == 1 for g in result.groups)


def test_title_key_folds_case_accents_and_parentheticals() -> None:
    assert title_key("Token Merging (ToMe): Your ViT—But Fàster!") == (
        "token merging your vit but faster"
    )


# --- kb import --------------------------------------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> Path:
    papers = tmp_path / "papers"
    papers.mkdir()
    for name in ("tome-2023", "evit-2022"):
        shutil.copy(PAPERS / f"{name}.yaml", papers)
    return papers


def test_import_dry_run_plans_and_writes_nothing(kb, base: Path) -> None:
    before = sorted(p.name for p in base.iterdir())
    code, out, _ = run(kb, "--papers", str(base), "import", str(DATA / "venue_first.md"),
                      "--dry-run", "--format", "json")  # fmt: skip
    assert code == 0
    report = json.loads(out)
    by_line = {e["line"]: e for e in report["entries"]}
    assert by_line[5]["action"] in ("merge", "skip") and by_line[5]["target"] == "tome-2023"
    assert by_line[6]["action"] == "new"
    assert report["unparsed"][0]["line"] == 11
    # The repository shared by two unrelated works is not used for either.
    assert any("unrelated works" in p for p in by_line[8]["problems"])
    assert sorted(p.name for p in base.iterdir()) == before


def test_import_writes_valid_records_with_provenance_and_is_idempotent(kb, base: Path) -> None:
    tome_before = (base / "tome-2023.yaml").read_text(encoding="utf-8")
    code, _, err = run(kb, "--papers", str(base), "import", str(DATA / "numbered_bold.md"),
                      str(DATA / "structured.txt"), str(DATA / "works.bib"))  # fmt: skip
    assert code == 0, err
    records = {p.stem: load_record(p) for p in record_paths(base)}
    evit = records["evit-2022"]  # merged: curated fields kept, provenance added
    assert any(s.source == "structured" and s.line == 1 for s in evit.sources)
    assert (base / "tome-2023.yaml").read_text(encoding="utf-8") != tome_before  # cites works.bib
    assert records["tome-2023"].venue == "ICLR 2023"
    new = [r for r in records.values() if r.id not in ("tome-2023", "evit-2022")]
    zero = next(r for r in new if r.arxiv == "2305.17328")
    assert zero.training_free is True and zero.family == ["pruning"]
    assert zero.authors[0] == "Hongjie Wang" and zero.sources[0].source == "numbered_bold"
    snapshot = {p.name: p.read_text(encoding="utf-8") for p in base.iterdir()}
    code, _, err = run(kb, "--papers", str(base), "import", str(DATA / "numbered_bold.md"),
                      str(DATA / "structured.txt"), str(DATA / "works.bib"))  # fmt: skip
    assert code == 0 and "0 new, 0 merged" in err
    assert {p.name: p.read_text(encoding="utf-8") for p in base.iterdir()} == snapshot


def test_import_never_overwrites_a_curated_field(kb, base: Path, tmp_path: Path) -> None:
    source = tmp_path / "wrong.md"
    source.write_text(
        "* [NeurIPS 2021] Token Merging: Your ViT But Faster "
        "[[Paper](https://arxiv.org/abs/2210.09461)][[Code](https://github.com/someone/fork)]\n",
        encoding="utf-8",
    )
    code, out, _ = run(kb, "--papers", str(base), "import", str(source))
    record = load_record(base / "tome-2023.yaml")
    assert code == 0
    assert record.venue == "ICLR 2023" and record.code == "https://github.com/facebookresearch/ToMe"
    assert "kept the record's" in out


def test_a_failed_import_writes_nothing(kb, base: Path) -> None:
    (base / "broken-2023.yaml").write_text("id: broken-2023\ntitle: [unclosed\n", encoding="utf-8")
    before = {p.name: p.read_text(encoding="utf-8") for p in base.iterdir()}
    code, _, err = run(kb, "--papers", str(base), "import", str(DATA / "numbered_bold.md"))
    assert code == 1 and "nothing written" in err and "broken-2023.yaml:" in err
    assert {p.name: p.read_text(encoding="utf-8") for p in base.iterdir()} == before


def test_import_of_an_unreadable_or_unknown_file_is_one_line(
    kb, base: Path, tmp_path: Path
) -> None:
    code, _, err = run(kb, "--papers", str(base), "import", str(tmp_path / "missing.md"))
    assert code == 2 and err.count("\n") == 1 and "cannot read" in err


def test_excluded_works_are_skipped(kb, base: Path) -> None:
    curation = base.parent / "curation"
    curation.mkdir()
    (curation / "excluded.yaml").write_text(
        "- title: Efficient Vision Transformer via Token Merger\n  reason: test exclusion\n",
        encoding="utf-8",
    )
    code, out, _ = run(kb, "--papers", str(base), "import", str(DATA / "numbered_bold.md"),
                      "--dry-run", "--format", "json")  # fmt: skip
    by_line = {e["line"]: e for e in json.loads(out)["entries"]}
    assert code == 0 and by_line[7]["action"] == "skip"
    assert by_line[7]["problems"] == ["excluded: test exclusion"]


def test_kb_dedupe_reports_duplicates_with_evidence(kb, base: Path) -> None:
    # A near-identical title with no shared id: kb validate cannot see it, kb dedupe does.
    (base / "tome-2022.yaml").write_text(
        "id: tome-2022\ntitle: 'Token Merging: Your ViT but Fastr'\nyear: 2022\nkind: method\n",
        encoding="utf-8",
    )
    code, out, _ = run(kb, "--papers", str(base), "dedupe", "--format", "json")
    report = json.loads(out)
    assert code == 1
    assert report["duplicates"][0]["ids"] == ["tome-2022", "tome-2023"]
    assert report["duplicates"][0]["evidence"][0].startswith("titles ")


def test_the_real_base_has_no_duplicates(kb) -> None:
    code, out, _err = run(kb, "dedupe")
    assert code == 0, out


def test_a_line_already_cited_is_skipped_even_after_a_curator_retitled_the_record(
    kb, base: Path
) -> None:
    code, _, _ = run(kb, "--papers", str(base), "import", str(DATA / "numbered_bold.md"))
    assert code == 0
    path = next(p for p in base.iterdir() if "via Token Merger" in p.read_text(encoding="utf-8"))
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace("Efficient Vision Transformer via Token Merger", "A Curated New Title"),
        encoding="utf-8",
    )
    code, out, _ = run(kb, "--papers", str(base), "import", str(DATA / "numbered_bold.md"),
                       "--dry-run", "--format", "json")  # fmt: skip
    assert code == 0
    assert {e["action"] for e in json.loads(out)["entries"]} == {"skip"}
