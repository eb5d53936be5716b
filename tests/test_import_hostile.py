"""`kb import`, `kb dedupe` and `kb validate` against titles that lossy normalisers confuse,
edited lists, hostile source files and malformed curation files (issue "Hard to break")."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import ROOT, valid_record
from tokenkb import importer
from tokenkb.dedupe import Item, find_duplicates
from tokenkb.store import load_record, record_paths, write_record
from tokenkb.titles import fold, matchable, same_title, title_key


def record(papers: Path, id: str, title: str, arxiv: str | None = None, extra: str = "") -> Path:
    text = valid_record(id=id, title=json.dumps(title, ensure_ascii=False), arxiv=arxiv or "x")
    if arxiv is None:
        text = text.replace("arxiv: 'x'\n", "")
    path = papers / f"{id}.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return write_record(load_record(path), papers)  # canonical, as kb import wants it


@pytest.fixture
def papers(tmp_path: Path) -> Path:
    directory = tmp_path / "papers"
    directory.mkdir()
    return directory


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- one title normaliser -----------------------------------------------------------------------


def test_title_key_keeps_letters_of_every_script() -> None:
    assert title_key("Pruning with α-Tokens") != title_key("Pruning with β-Tokens")
    assert title_key("视觉令牌剪枝方法") != title_key("视觉令牌合并方法")
    assert title_key("हिन्दी शब्द") != title_key("हन्द शब्द")  # vowel signs are letters
    assert title_key("Café Tokens") == title_key(unicodedata.normalize("NFD", "Café Tokens"))
    assert title_key("Müller & Co") == title_key("Muller and co")
    assert title_key("H$_2$O: Heavy-Hitter Oracle") == title_key("H2O: heavy hitter oracle")
    assert title_key("Ｔｏｋｅｎ ﬁne") == "token fine"  # full-width forms and ligatures
    assert title_key("Token\u200b Merging\u202e") == "token merging"  # invisible characters


def test_empty_and_one_short_word_keys_never_match() -> None:
    assert title_key("\u200b\u202e") == "" and not matchable("")
    assert not same_title("α", "α") and not same_title("!!!", "???")
    assert not matchable(title_key("PPT")) and matchable(title_key("视觉令牌剪枝"))


def test_fold_is_what_search_uses() -> None:
    from tokenkb.query import Filters, select

    records = [{"id": "a-2023", "title": "Müller’s Café Tokens", "year": 2023}]
    assert select(records, Filters(search="cafe muller")) == records
    assert fold("ÉCOLE") == "ecole"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "Pruning with α-Tokens for Vision Transformers",
            "Pruning with β-Tokens for Vision Transformers",
        ),
        ("视觉令牌剪枝方法", "视觉令牌合并方法"),
        ("视觉语言模型中的令牌剪枝方法研究", "视觉语言模型中的令牌合并方法研究"),
        ("Token Merging for Vision Transformers v1", "Token Merging for Vision Transformers v2"),
        ("Efficient ViT-B/16 Token Pruning", "Efficient ViT-L/16 Token Pruning"),
    ],
)
def test_dedupe_keeps_works_apart_that_differ_in_a_letter_a_number_or_a_script(
    a: str, b: str
) -> None:
    groups = find_duplicates([Item("a", a), Item("b", b)])
    assert groups.groups == [[0], [1]] and not groups.conflicts


def test_dedupe_still_joins_typos_and_equal_titles_of_any_script() -> None:
    items = [
        Item("a", "Token Merging: Your ViT But Faster"),
        Item("b", "Token Merjing: Your ViT But Faster"),
        Item("c", "视觉令牌剪枝方法"),
        Item("d", "视觉令牌剪枝方法"),
        Item("e", "Café Tokens Everywhere"),
        Item("f", unicodedata.normalize("NFD", "Café Tokens Everywhere")),
    ]
    assert find_duplicates(items).groups == [[0, 1], [2, 3], [4, 5]]


def test_kb_dedupe_does_not_call_different_cjk_titles_duplicates(kb, papers: Path) -> None:
    record(papers, "a-2023", "视觉令牌剪枝方法")
    record(papers, "b-2023", "视觉令牌合并方法")
    record(papers, "c-2023", "Pruning with α-Tokens")
    record(papers, "d-2023", "Pruning with β-Tokens")
    result = kb("--papers", str(papers), "dedupe")
    assert result.code == 0, result.out


def test_validate_names_identical_titles_of_any_script_and_only_those(kb, papers: Path) -> None:
    record(papers, "a-2023", "视觉令牌剪枝方法")
    record(papers, "b-2023", "视觉令牌剪枝方法")
    record(papers, "c-2023", "Café Tokens")
    record(papers, "d-2023", unicodedata.normalize("NFD", "Café Tokens"))
    record(papers, "e-2023", "Pruning with α-Tokens")
    record(papers, "f-2023", "Pruning with β-Tokens")
    result = kb("validate", str(papers))
    lines = sorted(line.split(": ", 1)[0] for line in result.out.splitlines())
    assert lines == [f"{papers}/b-2023.yaml:3", f"{papers}/d-2023.yaml:3"], result.out
    assert "is also the title of a-2023" in result.out


# --- import matches by identifiers; a title alone copies nothing --------------------------------


def test_import_never_gives_one_work_the_identifiers_of_another(
    kb, papers: Path, tmp_path: Path
) -> None:
    record(papers, "alpha-2023", "Pruning with α-Tokens")
    cjk = record(papers, "cjk-2023", "视觉令牌剪枝方法")
    alpha_before = (papers / "alpha-2023.yaml").read_bytes()
    cjk_before = cjk.read_bytes()
    source = tmp_path / "list.md"
    source.write_text(
        "# List\n"
        "* [CVPR 2024] Pruning with β-Tokens [[Paper](https://arxiv.org/abs/2401.00001)]"
        "[[Code](https://github.com/example/beta)]\n"
        "* [ICLR 2024] 视觉令牌合并方法 [[Paper](https://arxiv.org/abs/2401.00002)]"
        "[[Code](https://github.com/example/merge)]\n",
        encoding="utf-8",
    )
    result = kb("--papers", str(papers), "import", str(source), "--dry-run", "--format", "json")
    actions = [(e["line"], e["action"], e["target"]) for e in json.loads(result.out)["entries"]]
    assert [a[1] for a in actions] == ["new", "new"], actions
    assert kb("--papers", str(papers), "import", str(source)).code == 0
    assert (papers / "alpha-2023.yaml").read_bytes() == alpha_before
    assert cjk.read_bytes() == cjk_before
    assert len(record_paths(papers)) == 4


def test_a_title_only_match_is_cited_and_reported_but_copies_nothing(
    kb, papers: Path, tmp_path: Path
) -> None:
    record(papers, "known-2023", "Token Pruning for Known Works")
    source = tmp_path / "list.md"
    source.write_text(
        "# List\n* [CVPR 2024] Token Pruning for Known Works "
        "[[Paper](https://arxiv.org/abs/2401.00009)][[Code](https://github.com/example/known)]\n",
        encoding="utf-8",
    )
    result = kb("--papers", str(papers), "import", str(source))
    assert result.code == 0, result.err
    assert (
        "matches known-2023 by title only, so its arxiv 2401.00009; code https://github.com/example/known"
        in result.out
    )
    paper = load_record(papers / "known-2023.yaml")
    assert paper.arxiv is None and paper.code is None and paper.venue == "ICLR 2023"
    assert [(s.source, s.line, s.fields) for s in paper.sources] == [("list", 2, ["title"])]
    again = kb("--papers", str(papers), "import", str(source))
    assert "0 new, 0 merged, 1 skipped" in again.err


def test_an_identifier_match_still_fills_empty_fields(kb, papers: Path, tmp_path: Path) -> None:
    record(papers, "known-2023", "Token Pruning for Known Works", arxiv="2301.00001")
    source = tmp_path / "list.md"
    source.write_text(
        "# List\n* [ICLR 2023] Token Pruning for Known Works "
        "[[Paper](https://arxiv.org/abs/2301.00001)][[Code](https://github.com/example/known)]\n",
        encoding="utf-8",
    )
    assert kb("--papers", str(papers), "import", str(source)).code == 0
    assert load_record(papers / "known-2023.yaml").code == "https://github.com/example/known"


# --- provenance follows the entry when a list is edited -----------------------------------------


WORDS = [
    "token",
    "pruning",
    "merging",
    "visual",
    "cache",
    "sparse",
    "dynamic",
    "adaptive",
    "efficient",
    "compact",
]


def synthetic_list(count: int) -> str:
    """A list of `count` distinct works: every other one with an arXiv link, the rest bare."""
    lines = ["# A List", "", "## Vision"]
    for i in range(count):
        title = " ".join(WORDS[(i * k) % len(WORDS)].title() for k in (1, 3, 7)) + f" Study {i}"
        link = f"[[Paper](https://arxiv.org/abs/2401.{i:05d})]" if i % 2 else ""
        lines.append(f"* [CVPR 2024] {title} {link}".rstrip())
    return "\n".join(lines) + "\n"


def test_a_line_inserted_above_entries_reimports_as_the_same_entries(
    kb, papers: Path, tmp_path: Path
) -> None:
    source = tmp_path / "list.md"
    source.write_text(synthetic_list(50), encoding="utf-8")
    assert kb("--papers", str(papers), "import", str(source)).code == 0
    before = {p.stem: load_record(p) for p in record_paths(papers)}
    assert len(before) == 50
    source.write_text("A line a maintainer added at the top.\n" + synthetic_list(50), "utf-8")

    plan = json.loads(
        kb("--papers", str(papers), "import", str(source), "--format", "json", "--dry-run").out
    )
    assert {e["action"] for e in plan["entries"]} == {"merge"}  # citations move, nothing new
    assert kb("--papers", str(papers), "import", str(source)).code == 0
    after = {p.stem: load_record(p) for p in record_paths(papers)}
    assert sorted(after) == sorted(before)
    lines = source.read_text(encoding="utf-8").splitlines()
    for id, paper in after.items():
        (old,) = before[id].sources
        (new,) = paper.sources
        assert new.line == (old.line or 0) + 1, id
        assert paper.title in lines[new.line - 1]  # the citation names this work's line
    assert "0 new, 0 merged, 50 skipped" in kb("--papers", str(papers), "import", str(source)).err


def test_a_cited_line_now_holding_another_work_is_not_taken_as_imported(
    kb, papers: Path, tmp_path: Path
) -> None:
    source = tmp_path / "list.md"
    first = (
        "* [CVPR 2024] Token Pruning for Known Works [[Paper](https://arxiv.org/abs/2401.00001)]\n"
    )
    second = "* [ICLR 2024] Merging Visual Tokens Elsewhere [[Paper](https://arxiv.org/abs/2401.00002)]\n"
    source.write_text("# List\n" + first, encoding="utf-8")
    assert kb("--papers", str(papers), "import", str(source)).code == 0
    source.write_text("# List\n" + second + first, encoding="utf-8")  # line 2 is another work now
    result = kb("--papers", str(papers), "import", str(source), "--format", "json", "--dry-run")
    by_line = {e["line"]: e for e in json.loads(result.out)["entries"]}
    assert by_line[2]["action"] == "new"
    assert by_line[3]["action"] == "merge" and "now says line 3" in by_line[3]["problems"][0]
    assert kb("--papers", str(papers), "import", str(source)).code == 0
    (known,) = [p for p in record_paths(papers) if "known" in load_record(p).title.casefold()]
    assert [s.line for s in load_record(known).sources] == [3]


# --- hostile source and curation files ----------------------------------------------------------


def test_import_refuses_devices_fifos_directories_and_huge_files(
    kb, papers: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo.md"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.md"
    with huge.open("wb") as handle:
        handle.truncate(importer.MAX_SOURCE_BYTES + 1)  # sparse: no disk used
    zero = tmp_path / "zero.md"
    zero.symlink_to("/dev/zero")
    loop = tmp_path / "loop.md"
    loop.symlink_to(loop)
    for path, words in [
        ("/dev/zero", "character device"),
        (str(zero), "character device"),
        (str(fifo), "FIFO"),
        (str(tmp_path), "directory"),
        (str(huge), "over 32 MiB"),
        (str(loop), "cannot read"),
    ]:
        result = kb("--papers", str(papers), "import", path)
        assert result.code == 2 and result.err.count("\n") == 1 and words in result.err, (
            path,
            result.err,
        )
    assert list(papers.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- title: [unclosed\n", "excluded.yaml:2: invalid YAML"),
        ("title: not a list\n", "excluded.yaml:1: the exclusion list is a YAML list"),
        ("- title: Some Excluded Work Title\n", "excluded.yaml:1: give the reason"),
        ("- reason: no work named\n", "excluded.yaml:1: name the work"),
        (
            "- title: A Work\n  reason: r\n- title: Some Work\n  reason: r\n  places: [nowhere]\n",
            "excluded.yaml:3: place 'nowhere' is not 'source:line'",
        ),
        ("- title: '!!!'\n  reason: r\n", "excluded.yaml:1: title '!!!' is too short"),
        ("- 3\n", "excluded.yaml:1: each item is a mapping"),
    ],
)
def test_a_malformed_exclusion_list_is_one_line_with_its_place(
    kb, papers: Path, text: str, message: str
) -> None:
    (papers.parent / "curation").mkdir()
    (papers.parent / "curation" / "excluded.yaml").write_text(text, encoding="utf-8")
    result = kb("--papers", str(papers), "import", str(ROOT / "tests/data/sources/venue_first.md"))
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result.err


@pytest.mark.parametrize("what", ["title", "authors"])
def test_import_refuses_entries_whose_record_validation_would_reject(
    kb, papers: Path, tmp_path: Path, what: str
) -> None:
    if what == "title":
        fields = "title = {" + "Token " * 14_000 + "}, author = {Ada Lovelace},"
    else:
        fields = (
            "title = {Many Authors Prune Tokens}, author = {"
            + " and ".join(f"Author Number{i}" for i in range(4000))
            + "},"
        )
    source = tmp_path / "big.bib"
    source.write_text(
        "@article{big, " + fields + " year = {2024}, eprint = {2401.00003}}\n", encoding="utf-8"
    )
    result = kb("--papers", str(papers), "import", str(source))
    assert result.code == 1 and "nothing written" in result.err
    assert "bytes" in result.err or "characters" in result.err or "authors" in result.err
    assert list(papers.iterdir()) == []


def test_more_works_of_one_name_and_year_than_letters_still_get_ids(
    kb, papers: Path, tmp_path: Path
) -> None:
    """Found by benchmarks/fuzz_import.py: the 27th `foo-2024` raised StopIteration."""
    source = tmp_path / "list.md"
    source.write_text(
        "# List\n"
        + "".join(
            f"* [CVPR 2024] Foo: Token Study Number {i} [[Paper](https://arxiv.org/abs/2401.{i:05d})]\n"
            for i in range(1, 31)
        ),
        encoding="utf-8",
    )
    result = kb("--papers", str(papers), "import", str(source))
    assert result.code == 0, result.err
    ids = sorted(p.stem for p in record_paths(papers))
    assert len(ids) == 30 and "foo-2024" in ids and "foo-2024z" in ids and "foo-2-2024" in ids


def test_an_identifier_match_without_a_year_still_merges(kb, papers: Path, tmp_path: Path) -> None:
    """Found importing zongqianli-prompt-compression.md: an entry with a DOI and no year made
    the merge raise `ValueError: no year` (a traceback)."""
    record(papers, "known-2023", "Token Pruning for Known Works", extra="doi: 10.1000/known.1\n")
    source = tmp_path / "list.md"
    source.write_text(
        "# List\n* Token Pruning for Known Works [[Paper](https://doi.org/10.1000/known.1)]"
        "[[Code](https://github.com/example/known)]\n",
        encoding="utf-8",
    )
    result = kb("--papers", str(papers), "import", str(source))
    assert result.code == 0, result.err
    paper = load_record(papers / "known-2023.yaml")
    assert paper.code == "https://github.com/example/known" and paper.year == 2023
