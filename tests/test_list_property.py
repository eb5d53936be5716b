"""Property: any list built from random records in any layout reads back to the same records.

Each layout below writes records the way one family of real lists does (the seed layouts, pipe
and badge tables, HTML tables, nested nickname bullets, numbered entries, bold titles with italic
authors, short blocks under headings). The reader must give back every record, in order, with
the facts that layout carries: title, arXiv id, code, normalised venue, year, authors, nickname.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenkb.sources import markdown
from tokenkb.sources.entry import Entry

WORDS = [
    "adaptive",
    "attention",
    "budget",
    "cache",
    "compact",
    "dynamic",
    "efficient",
    "fast",
    "focus",
    "global",
    "hierarchical",
    "image",
    "language",
    "layer",
    "learned",
    "long",
    "merging",
    "model",
    "multimodal",
    "pruning",
    "query",
    "reduction",
    "selection",
    "sparse",
    "spatial",
    "temporal",
    "token",
    "transformer",
    "video",
    "vision",
    "visual",
    "window",
]
FIRST = ("Ada", "Bo", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun")
LAST = ("Lovelace", "Zhang", "Okafor", "Silva", "Novak", "Tanaka", "Moreau", "Kowalski")
VENUES = ("CVPR", "ICCV", "ECCV", "NeurIPS", "ICLR", "ICML", "AAAI", "EMNLP")


@dataclass(frozen=True)
class Work:
    nick: str
    rest: str  # the title after "Nick: "
    arxiv: str
    code: str
    venue: str
    year: int
    month: int
    authors: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"{self.nick}: {self.rest}"

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"

    @property
    def short_venue(self) -> str:
        """`NeurIPS'24`, the spelling many lists use."""
        return f"{self.venue}'{self.year % 100:02d}"


syllable = st.sampled_from(("Ka", "Zo", "Mi", "Tu", "Re", "Vo", "Xe", "Lu"))
works = st.builds(
    Work,
    nick=st.tuples(syllable, syllable, syllable).map(lambda s: s[0] + s[1].lower() + s[2]),
    rest=st.lists(st.sampled_from(WORDS), min_size=3, max_size=8).map(
        lambda w: " ".join([w[0].title(), *w[1:]])
    ),
    arxiv=st.tuples(st.integers(19, 24), st.integers(1, 12), st.integers(1, 99999)).map(
        lambda t: f"{t[0]:02d}{t[1]:02d}.{t[2]:05d}"
    ),
    code=st.tuples(st.sampled_from(WORDS), st.sampled_from(WORDS)).map(
        lambda t: f"https://github.com/{t[0]}-lab/{t[1]}-code"
    ),
    venue=st.sampled_from(VENUES),
    year=st.integers(2019, 2025),
    month=st.integers(1, 12),
    authors=st.lists(
        st.tuples(st.sampled_from(FIRST), st.sampled_from(LAST)).map(" ".join),
        min_size=2,
        max_size=3,
        unique=True,
    ).map(tuple),
)


def _bibtex_authors(work: Work) -> str:
    return " and ".join(f"{a.split()[1]}, {a.split()[0]}" for a in work.authors)


# Each layout: (writer of the whole list, the facts it carries).
Layout = tuple[Callable[[list[Work]], str], tuple[str, ...]]


def venue_first(ws: list[Work]) -> str:
    return "# List\n\n## Vision\n" + "".join(
        f"* [{w.venue} {w.year}] {w.title} [[Paper]({w.url})][[Code]({w.code})]\n" for w in ws
    )


def link_title(ws: list[Work]) -> str:
    return "# List\n\n## 2024\n" + "".join(
        f'-  <img alt="arXiv" src="https://img.shields.io/badge/arXiv-{w.arxiv}-red" /> '
        f"[{w.title}]({w.url.replace('abs', 'pdf')}) "
        f".[{w.nick};{w.short_venue};[GitHub]({w.code})]\n"
        for w in ws
    )


def numbered_bold(ws: list[Work]) -> str:
    return "# List\n\n" + "".join(
        f"- **[{n}] {w.title}**, **{w.venue} {w.year}**.\n\n"
        f"  *{_bibtex_authors(w)}.*\n\n"
        f"  [[Code]({w.code})] [[Paper]({w.url})] "
        f"![](https://img.shields.io/badge/{w.nick}-blue)\n\n"
        for n, w in enumerate(ws, start=1)
    )


def pipe_table(ws: list[Work]) -> str:
    rows = "".join(
        f"| {w.year} | {w.title} | {w.venue} | [Link]({w.url}) | [Link]({w.code}) |\n" for w in ws
    )
    return "## Papers\n\n| Year | Title | Venue | Paper | Code |\n|---|---|---|---|---|\n" + rows


def nick_date_table(ws: list[Work]) -> str:
    rows = "".join(
        f"|{w.year}.{w.month:02d}| 🔥[**{w.nick}**] {w.title}(@Lab)|[[pdf]]({w.url})|"
        f"[[{w.nick}]]({w.code}) ![](https://img.shields.io/github/stars/x/y.svg)|\n"
        for w in ws
    )
    return "|Date|Title|Paper|Code|\n|:---:|:---:|:---:|:---:|\n" + rows


def badge_table(ws: list[Work]) -> str:
    rows = "".join(
        f"| **{w.nick}** | ![{w.venue}](https://img.shields.io/badge/{w.venue}-{w.year}-lightgrey) "
        f"[![Stars](https://img.shields.io/github/stars/a/b?style=social)]({w.code}) "
        f"<br>[{w.title}]({w.url}) <br><sub>{', '.join(w.authors)}</sub> | x |\n"
        for w in ws
    )
    return "### 2024\n\n| Method | Title & Authors | Backbone |\n|:---|:---|:---:|\n" + rows


def html_table(ws: list[Work]) -> str:
    rows = "".join(
        f"  <tr>\n    <td>{w.nick}</td>\n"
        f'    <td><a href="{w.url}">{w.title}</a><br><i>{", ".join(w.authors)}</i></td>\n'
        f"    <td>{w.short_venue}</td>\n"
        f'    <td><a href="{w.code}">GitHub</a></td>\n  </tr>\n'
        for w in ws
    )
    head = "  <tr>\n    <th>Name</th><th>Paper</th><th>Venue</th><th>Code</th>\n  </tr>\n"
    return f"# List\n\n<table>\n{head}{rows}</table>\n"


def nested_nick(ws: list[Work]) -> str:
    return "## Papers\n\n- **Filtering:**\n\n  - General:\n\n" + "".join(
        f"    - [[{w.nick}]({w.url})] {w.title}\n" for w in ws
    )


def bold_title_authors(ws: list[Work]) -> str:
    return "### Papers\n\n" + "".join(
        f"- **{w.title}**  \n  *{', '.join(w.authors)}*. [[pdf]({w.url})], [[code]({w.code})], "
        f"{w.year}.{w.month:02d}. ![](https://img.shields.io/badge/{w.venue}{w.year}-orange)\n"
        for w in ws
    )


def bold_link_date(ws: list[Work]) -> str:
    return "## List\n\n" + "".join(
        f"- [**{w.title}**]({w.url}) · `{w.year}-{w.month:02d}` · A note. "
        f"<sub>[Code]({w.code}) · Venue: {w.venue} {w.year}</sub>\n"
        for w in ws
    )


def numbered(ws: list[Work]) -> str:
    return "# List\n\n" + "".join(
        f"{n}. **{w.title}**. *{', '.join(w.authors)}*. {w.short_venue}. "
        f"[[pdf]({w.url})] [[code]({w.code})]\n"
        for n, w in enumerate(ws, start=1)
    )


def short_blocks(ws: list[Work]) -> str:
    return "# Notes\n\n" + "".join(
        f"## {w.nick}\n\n**{w.title}** [[arXiv]({w.url})] [[Code]({w.code})]\n\nA note.\n\n"
        for w in ws
    )


BASE = ("title", "arxiv", "code")
LAYOUTS: dict[str, Layout] = {
    "venue_first": (venue_first, (*BASE, "venue")),
    "link_title": (link_title, (*BASE, "venue", "nick")),
    "numbered_bold": (numbered_bold, (*BASE, "venue", "authors", "nick")),
    "pipe_table": (pipe_table, (*BASE, "venue", "year")),
    "nick_date_table": (nick_date_table, (*BASE, "year", "nick")),
    "badge_table": (badge_table, (*BASE, "venue", "authors", "nick")),
    "html_table": (html_table, (*BASE, "venue", "authors", "nick")),
    "nested_nick": (nested_nick, ("title", "arxiv", "nick")),
    "bold_title_authors": (bold_title_authors, (*BASE, "venue", "year", "authors")),
    "bold_link_date": (bold_link_date, (*BASE, "venue", "year")),
    "numbered": (numbered, (*BASE, "venue", "authors")),
    "short_blocks": (short_blocks, BASE),
}


def expected(work: Work, facts: tuple[str, ...]) -> dict[str, object]:
    values: dict[str, object] = {
        "title": work.title,
        "arxiv": work.arxiv,
        "code": work.code,
        "venue": f"{work.venue} {work.year}",
        "year": work.year,
        "authors": list(work.authors),
        "nick": work.nick,
    }
    return {fact: values[fact] for fact in facts}


def got(entry: Entry, facts: tuple[str, ...]) -> dict[str, object]:
    values: dict[str, object] = {
        "title": entry.title,
        "arxiv": entry.arxiv,
        "code": entry.code,
        "venue": entry.venue,
        "year": entry.year,
        "authors": entry.authors,
        "nick": entry.aliases[0] if entry.aliases else None,
    }
    return {fact: values[fact] for fact in facts}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(works, min_size=1, max_size=4, unique_by=(lambda w: w.arxiv, lambda w: w.nick)),
    st.sampled_from(sorted(LAYOUTS)),
)
def test_any_list_in_any_layout_reads_back_to_its_records(ws: list[Work], name: str) -> None:
    write, facts = LAYOUTS[name]
    result = markdown.parse(write(ws), "list")
    assert result.unparsed == []
    assert [got(e, facts) for e in result.entries] == [expected(w, facts) for w in ws]
    assert all(e.problems == [] for e in result.entries)


def test_every_layout_is_tried() -> None:
    """The property above draws from all twelve layouts."""
    assert len(LAYOUTS) == 12
    sample = [
        Work("KaZoMi", "Fast token merging", "2401.00001", "https://github.com/a/b", "ICLR", 2024, 3,
             ("Ada Lovelace", "Bo Zhang")),
    ]  # fmt: skip
    for name, (write, facts) in LAYOUTS.items():
        entries = markdown.parse(write(sample), "list").entries
        assert [got(e, facts) for e in entries] == [expected(sample[0], facts)], name


def test_a_layout_that_loses_a_fact_fails() -> None:
    """The comparison is strict: a list that drops the venue does not read back to its records."""
    work = Work("KaZoMi", "Fast token merging", "2401.00001", "https://github.com/a/b", "ICLR",
                2024, 3, ("Ada Lovelace", "Bo Zhang"))  # fmt: skip
    text = venue_first([work]).replace("[ICLR 2024] ", "")
    entries = markdown.parse(text, "list").entries
    assert got(entries[0], ("venue",)) != expected(work, ("venue",))
