"""Awesome-list Markdown: one entry reader for every layout the lists use.

What every layout shares is read with a real parser (markdown-it-py, with its table rule, and
`html.parser` for HTML fragments; `inline` reads an entry's inline text), not per-dialect
regular expressions over raw text. Nothing here does I/O or matching. An *entry
unit* is a list item (bullet or numbered, at any nesting: a nested item is its own unit), a table
row (pipe tables and HTML tables; a cell's `<br>` parts are read like lines), or a short block
under a heading (a paragraph or heading that links a paper). In a unit:

- the paper is the first link that points at a paper (`links.read_link`: arXiv, OpenReview, ACL
  Anthology, CVF, IEEE, ACM and other DOIs, proceedings sites, Springer, a PDF);
- the title is that link's text, or, when its text is a label ("Paper", "pdf", "arXiv"), the
  bold, italic or quoted text of the unit, else the unit's plain text before its links; a
  `[[Nick](url)] Title` item gives the nickname as link text and the title after it; a table's
  title column gives the title when it has one;
- the code is a GitHub/GitLab link (a star badge's image URL is not one; a doubled
  `https://github.com/https://github.com/...` is repaired);
- nicknames come from a `[Nick]` or `**Nick**` prefix, a name column, a `.[Nick;...]` tag group
  or a title-prefix badge;
- venue and year come from bracket tags, bold tags, shields.io badges, venue and date columns,
  `Venue: X` notes and a trailing `Venue Year.`, in the spellings lists use (`NeurIPS'24`,
  `NIPS 2024`, `Arxiv 2024`, `2025.07`, `202506`), normalised by `hints.read_venue`; a venue
  that cannot be normalised is reported on the entry, never dropped;
- authors come from an italic line, a `<sub>` line or an authors column;
- headings and badges give modality, family and training-free hints.

A unit that links a paper but yields no title is reported as unparsed with its line and the
reason; a table whose rows all fail says so once more. A unit with links but none to a paper is
reported as not a work. BibTeX fenced outside entries (```` ```bibtex ````) is read by `bib`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

from markdown_it import MarkdownIt
from markdown_it.token import Token

from . import bib
from .entry import Entry, ParseResult, Unparsed
from .hints import date_year, read_tag, read_venue
from .inline import Inline, Link, Span, read_inline
from .links import author_name, clean_title, read_link

# Blocks only: a unit's inline text is parsed once, when the unit is read.
_BLOCKS = MarkdownIt("commonmark", {"html": True}).enable("table").disable("inline")

_GENERIC_LABELS = {
    "paper", "pdf", "arxiv", "link", "abs", "html", "openreview", "acl", "doi", "ieee", "acm",
    "springer", "cvf", "aaai", "neurips", "icml", "pmlr", "iclr", "download", "here", "pub",
    "preprint", "proceedings", "article", "publication", "url", "web",
}  # fmt: skip
_NOT_CODE_LABELS = {"paper list", "list", "awesome list", "survey list", "dataset", "data"}
_ORGS = {"apple", "deepmind", "google", "meta", "nvidia", "microsoft", "openai", "amazon"}
_NOT_NICKNAMES = {"video", "image", "github", "code", "paper"}
_EMOJI = re.compile(
    "[\U0001f300-\U0001faff\u2600-\u27bf\u2b50\u2b06\u2190-\u21ff\ufe0f\u200d\U0001f000-\U0001f2ff]"
)


# ---------------------------------------------------------------------------------------------
# Units: list items, table rows, short blocks.


@dataclass
class _Unit:
    line: int
    cells: list[tuple[str | None, str]]  # (column header, markdown text); header None in lists
    section: dict[int, str]
    table: int | None = None  # which table the row belongs to (for "all rows failed")


def looks_like_awesome(text: str) -> bool:
    """Markdown (or HTML) links to papers are at least as many as bare paper URLs."""
    linked = len(re.findall(r"\]\(\s*https?://|href=[\"']https?://", text, re.I))
    bare = len(re.findall(r"(?<![(\"'=])\bhttps?://", text)) - linked
    return linked >= 1 and linked >= bare


def looks_like_markdown(text: str) -> bool:
    """Any Markdown or HTML link, or a bullet that carries a paper URL."""
    return bool(
        re.search(r"\]\(\s*https?://|href=[\"']https?://", text, re.I)
        or re.search(r"^\s*(?:[*+-]|\d+[.)])\s.*https?://", text, re.M)
    )


def parse(text: str, source: str) -> ParseResult:
    result = ParseResult(source=source, format="awesome")
    tokens = _BLOCKS.parse(text)
    units: list[_Unit] = []
    sections: dict[int, str] = {}
    tables = 0
    table_lines: dict[int, int] = {}  # table number -> its first line
    i = 0
    depth = 0  # list nesting
    while i < len(tokens):
        token = tokens[i]
        if token.type == "heading_open":
            level = int(token.tag[1])
            content = tokens[i + 1].content
            sections = {k: v for k, v in sections.items() if k < level}
            sections[level] = _heading_text(content)
            if re.search(r"\]\(\s*https?://", content) and depth == 0:
                units.append(_Unit(_line(token), [(None, content)], dict(sections)))
            i += 3
            continue
        if token.type in ("bullet_list_open", "ordered_list_open"):
            depth += 1
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            depth -= 1
        elif token.type == "list_item_open":
            units.append(_Unit(_line(token), [(None, _item_text(tokens, i))], dict(sections)))
        elif token.type == "table_open":
            tables += 1
            table_lines[tables] = _line(token)
            end = _close(tokens, i)
            units += _pipe_rows(tokens[i:end], dict(sections), tables)
            i = end
            continue
        elif token.type == "html_block":
            if "<table" in token.content.lower() or "<tr" in token.content.lower():
                tables += 1
                table_lines[tables] = _line(token)
                units += _html_rows(token, dict(sections), tables)
            elif depth == 0 and re.search(r"<a\s[^>]*href", token.content, re.I):
                units.append(_Unit(_line(token), [(None, token.content)], dict(sections)))
        elif token.type == "fence" and depth == 0:
            if bib.looks_like_bibtex(token.content):
                _read_fenced_bibtex(token, source, result)
        elif token.type == "paragraph_open" and depth == 0:
            content = tokens[i + 1].content
            if re.search(r"\]\(\s*https?://|href=", content):
                units.append(_Unit(_line(token), [(None, content)], dict(sections)))
        i += 1
    failed_tables: dict[int, list[int]] = {}
    seen_tables: dict[int, int] = {}
    for unit in units:
        ok = _read_unit(unit, result)
        if unit.table is not None:
            seen_tables[unit.table] = seen_tables.get(unit.table, 0) + 1
            if ok is False:
                failed_tables.setdefault(unit.table, []).append(unit.line)
    for table, lines in failed_tables.items():
        if len(lines) == seen_tables[table] and len(lines) > 1:
            result.unparsed.append(
                Unparsed(
                    table_lines[table],
                    "(table)",
                    f"no row of this table could be read ({len(lines)} rows with paper links): "
                    "is its title column named 'Title' or 'Paper'?",
                )
            )
    result.entries.sort(key=lambda e: e.line)
    result.unparsed.sort(key=lambda u: u.line)
    return result


def _line(token: Token) -> int:
    return token.map[0] + 1 if token.map else 1


def _close(tokens: list[Token], start: int) -> int:
    level = 0
    for j in range(start, len(tokens)):
        level += tokens[j].nesting
        if level == 0:
            return j + 1
    return len(tokens)


def _heading_text(content: str) -> str:
    inline = read_inline(content)
    return " ".join(inline.plain().replace("\x00", "").split())


def _item_text(tokens: list[Token], start: int) -> str:
    """The item's own paragraphs: not its nested lists (their items are units of their own),
    not its fenced blocks (a BibTeX copy of the entry)."""
    parts = []
    level = 0
    j = start
    while j < len(tokens):
        token = tokens[j]
        if level == 1 and token.type in ("bullet_list_open", "ordered_list_open"):
            j = _close(tokens, j)
            continue
        level += token.nesting
        if token.type == "inline" and level == 2:
            parts.append(token.content)
        if level == 0:
            break
        j += 1
    return "\n".join(parts)


def _pipe_rows(tokens: list[Token], sections: dict[int, str], table: int) -> list[_Unit]:
    headers: list[str] = []
    units = []
    row: list[str] = []
    row_line = 0
    in_head = False
    for token in tokens:
        if token.type == "thead_open":
            in_head = True
        elif token.type == "thead_close":
            in_head = False
        elif token.type == "tr_open":
            row = []
            row_line = _line(token)
        elif token.type == "inline":
            row.append(token.content)
        elif token.type == "tr_close":
            if in_head:
                headers = [_heading_text(cell) for cell in row]
            else:
                cells = [(headers[n] if n < len(headers) else None, c) for n, c in enumerate(row)]
                units.append(_Unit(row_line, cells, sections, table))
    return units


class _Table(HTMLParser):
    """Rows of an HTML table; each cell kept as its inner HTML, with the line it starts on."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.rows: list[tuple[int, list[tuple[bool, str]]]] = []
        self._cell: list[str] | None = None
        self._header = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((self.getpos()[0], []))
        elif tag in ("td", "th"):
            self._cell = []
            self._header = tag == "th"
        elif self._cell is not None:
            self._cell.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._cell is not None:
            self._cell.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            if self.rows:
                self.rows[-1][1].append((self._header, "".join(self._cell)))
            self._cell = None
        elif self._cell is not None:
            self._cell.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_entityref(self, name: str) -> None:
        if self._cell is not None:
            self._cell.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        if self._cell is not None:
            self._cell.append(f"&#{name};")


def _html_rows(token: Token, sections: dict[int, str], table: int) -> list[_Unit]:
    parser = _Table()
    parser.feed(token.content)
    parser.close()
    headers: list[str] = []
    units = []
    for offset, cells in parser.rows:
        texts = [" ".join(html.split()) for _, html in cells]
        if cells and all(header for header, _ in cells):
            headers = [_heading_text(t) for t in texts]
            continue
        named = [(headers[n] if n < len(headers) else None, t) for n, t in enumerate(texts)]
        units.append(_Unit(_line(token) + offset - 1, named, sections, table))
    return units


def _read_fenced_bibtex(token: Token, source: str, result: ParseResult) -> None:
    read = bib.parse(token.content, source)
    first = _line(token) + 1
    for entry in read.entries:
        entry.line += first - 1
        result.entries.append(entry)
    for unparsed in read.unparsed:
        result.unparsed.append(Unparsed(unparsed.line + first - 1, unparsed.text, unparsed.reason))


# ---------------------------------------------------------------------------------------------
# Reading one unit.

_TITLE_COLUMNS = ("title", "paper title", "paper", "papers", "title & authors", "name of paper")
_NAME_COLUMNS = ("method", "name", "abbr", "abbreviation", "nickname", "short name", "model")
_VENUE_COLUMNS = ("venue", "conference", "conf", "publication", "published", "pub", "journal")
_DATE_COLUMNS = ("date", "year", "time", "published date", "release", "month")
_AUTHOR_COLUMNS = ("authors", "author")
_CODE_COLUMNS = ("code", "github", "repo", "repository")
_FREE_COLUMNS = ("training-free", "training free", "training_free")


def _role(header: str | None) -> str | None:
    if header is None:
        return None
    key = " ".join(_EMOJI.sub("", header).lower().replace("*", "").split())
    for role, names in (
        ("title", _TITLE_COLUMNS),
        ("name", _NAME_COLUMNS),
        ("venue", _VENUE_COLUMNS),
        ("date", _DATE_COLUMNS),
        ("authors", _AUTHOR_COLUMNS),
        ("code", _CODE_COLUMNS),
        ("free", _FREE_COLUMNS),
    ):
        if key in names:
            return role
    return None


def _read_unit(unit: _Unit, result: ParseResult) -> bool | None:
    """Add the unit's entry (True), report it unparsed (False) or as not a work (None)."""
    if not unit.cells:
        return None
    cells = [(_role(header), read_inline(text), text) for header, text in unit.cells]
    raw = " | ".join(text for _, _, text in cells) if len(cells) > 1 else cells[0][2]
    raw = " ".join(raw.split())
    entry = Entry(source=result.source, line=unit.line, text=raw)
    entry.section = " / ".join(unit.section.values()) or None
    for heading in unit.section.values():
        modality, family, _ = read_tag(heading)
        if modality and modality not in entry.modality:
            entry.modality.append(modality)
        if family and family not in entry.family:
            entry.family.append(family)
    links = [link for _, inline, _ in cells for link in inline.links]
    paper = next((link for link in links if _is_paper(link)), None)
    if paper is None and not links and not _venue_first_item(cells[0][1]):
        what = "row" if unit.table is not None else "bullet"
        result.skipped.append(Unparsed(unit.line, raw, f"a {what} without a link: not a work"))
        return None
    for link in links:
        _apply(entry, link, "code" if _is_code(link) else "paper")
    badge_arxiv = next((i.arxiv_badge for _, i, _ in cells if i.arxiv_badge), None)
    if badge_arxiv:
        if entry.arxiv and entry.arxiv != badge_arxiv:
            entry.problems.append(
                f"the arXiv badge says {badge_arxiv} but the link says {entry.arxiv}"
            )
        entry.arxiv = entry.arxiv or badge_arxiv
    title_cell = next((c for c in cells if c[0] == "title"), None)
    if title_cell is None and len(cells) > 1:
        # a table with no title column: the cell that holds the paper link
        title_cell = next((c for c in cells if paper is not None and paper in c[1].links), None)
    title_inline = title_cell[1] if title_cell else cells[0][1]
    if paper is None and title_cell is not None and title_cell[0] == "title":
        paper = next((link for link in title_cell[1].links if _names_work(link)), None)
    if paper is None and unit.table is not None:
        # a table's `[Link](...)` / `[pdf](...)` cell is the paper, wherever it is hosted
        paper = next(
            (k for k in links if _label(k.text) in _GENERIC_LABELS and not _is_code(k)), None
        )
    title = _title(title_inline, paper, entry)
    entry.title = _clean(title) if title else None  # cells must not read it as authors
    for role, inline, text in cells:
        _read_cell(role, inline, text, entry, title_inline is inline)
    if title and title.endswith(")"):
        nick = re.search(r"\s\(([A-Za-z0-9][\w.\-+]*)\)$", title)
        if nick and re.search(r"[A-Z0-9]", nick.group(1)[1:]) and len(title) > 30:
            title = title[: nick.start()].strip()
            _alias(entry, nick.group(1))
    entry.title = clean_title(title) if title else None
    _tail_tags(title_inline, paper, entry)
    _badge_aliases(cells, entry)
    if entry.venue_text and entry.venue is None:
        entry.problems.append(f"venue {entry.venue_text!r} is not one tokenkb knows")
    twice = sorted({a for a in entry.authors if entry.authors.count(a) > 1})
    if twice:  # two people of one name, or a copy error: a record lists each name once
        entry.authors = list(dict.fromkeys(entry.authors))
        entry.problems.append(f"authors {', '.join(twice)} listed twice; kept once")
    if not entry.title:
        if paper is not None:
            url = re.match(r"^\s*(?:\[[^\]]*\]\s*)*(https?://\S+)", title_inline.plain())
            if url or _url_title(title_inline, paper):
                shown = url.group(1) if url else (paper.text if paper else "").strip()
                if url and entry.code and read_link(url.group(1)).code == entry.code:
                    entry.code = None  # a URL in the title's place is no code link either
                entry.problems.append(
                    f"the title is a URL ({shown}), not a title; the entry is matched by its "
                    "identifiers only and its code link is not trusted"
                )
                if entry.fields_given():
                    result.entries.append(entry)
                    return True
        if paper is not None:
            what = "row" if unit.table is not None else "bullet"
            result.unparsed.append(
                Unparsed(unit.line, raw, f"no title could be read from this {what}")
            )
            return False
        result.skipped.append(
            Unparsed(unit.line, raw, "no title and no link to a paper: not a work")
        )
        return None
    if (
        paper is None
        and not any(
            getattr(entry, k) for k in ("arxiv", "doi", "ieee", "openreview", "acl", "paper")
        )
        and not _venue_first_item(title_inline)
    ):
        result.skipped.append(Unparsed(unit.line, raw, "no link to a paper: not a work"))
        return None
    result.entries.append(entry)
    return True


def _names_work(link: Link) -> bool:
    """In a table's title column, a link whose text is a title names the work even when it
    points at a project or conference page rather than a paper."""
    return (
        link.url.startswith(("http://", "https://"))
        and not link.images
        and len(_clean(link.text).split()) >= 2
        and (not _is_code(link) or len(_clean(link.text).split()) >= 4)
    )


def _url_title(inline: Inline, paper: Link | None) -> bool:
    return paper is not None and re.match(r"^\s*https?://", paper.text or "") is not None


def _venue_first_item(inline: Inline) -> bool:
    """`[ECCV 2024] Title [[Paper](url)]` whose paper link points at a project page or repo."""
    return re.match(r"^\s*\[[^\]]+\]", inline.plain(links=False)) is not None


def _is_paper(link: Link) -> bool:
    read = read_link(link.url)
    if read.code and _label(link.text) in _GENERIC_LABELS and link.url.lower().endswith(".pdf"):
        return True
    return bool(read.arxiv or read.doi or read.ieee or read.openreview or read.acl or read.paper)


def _is_code(link: Link) -> bool:
    label = _label(link.text)
    if label in ("code", "github", "gitlab", "repo", "repository", "official code", "project"):
        return True
    if label in _NOT_CODE_LABELS:
        return False
    read = read_link(link.url)
    return bool(read.code and not (label in _GENERIC_LABELS and link.url.lower().endswith(".pdf")))


def _label(text: str) -> str:
    """A link's text, lowercased; an arXiv id as link text counts as the label 'arxiv'."""
    label = " ".join(_EMOJI.sub("", text).replace("\x00", "").strip(" []*`").lower().split())
    if label.startswith(("http://", "https://")):
        return "link"  # a bare URL says nothing about the work
    return "arxiv" if re.fullmatch(r"(?:arxiv:?\s*)?\d{4}\.\d{4,5}(?:v\d+)?", label) else label


def _apply(entry: Entry, link: Link, role: str) -> None:
    url = link.url
    read = read_link(url)
    if role == "code":
        if _label(link.text) in _NOT_CODE_LABELS:
            return
        if read.code:
            entry.code = entry.code or read.code
        elif not entry.code and not entry.project:
            entry.project = read.project or read.paper or url
            entry.problems.append(
                f"the code link {url} is not a code repository (a project page?); kept as project"
            )
        return
    if _label(link.text) in _NOT_CODE_LABELS:
        return
    for name in ("arxiv", "doi", "ieee", "openreview", "acl"):
        value = getattr(read, name)
        if value and getattr(entry, name) is None:
            setattr(entry, name, value)
    if read.code:
        if _label(link.text) in _GENERIC_LABELS:
            entry.problems.append(f"the paper link {url} points at a code repository")
        entry.code = entry.code or read.code
    elif read.paper and entry.paper is None:
        entry.paper = read.paper
    elif read.project and entry.project is None and not link.images:
        entry.project = read.project


def _clean(text: str) -> str:
    text = _EMOJI.sub(" ", text.replace("\x00", " "))
    return " ".join(text.split())


def _title(inline: Inline, paper: Link | None, entry: Entry) -> str | None:
    """The title, by the rules in the module docstring; nicknames found on the way go to
    `entry.aliases`."""
    if paper is not None:
        label = _label(paper.text)
        wrapped = paper.before.endswith("[") and paper.after.lstrip().startswith("]")
        rest = _clean(paper.after.lstrip()[1:]) if wrapped else ""
        if (
            wrapped
            and label not in _GENERIC_LABELS
            and len(rest.split()) >= 3
            and len(paper.text.split()) <= 3
        ):
            _alias(entry, _clean(paper.text))  # `[[Nick](url)] Title`
            return rest
        if label and label not in _GENERIC_LABELS and not paper.images:
            return _strip_number(_clean(paper.text))
    runs = _runs(inline)
    plain = _clean(inline.plain(links=False))
    bracketed = re.sub(r"\s+\]", "]", re.sub(r"\[\s+", "[", plain))
    for run, is_bold, _ in runs:
        in_brackets = f"[{run}]" in bracketed
        if is_bold and in_brackets and not _read_venue_tag(run, entry):
            _alias(entry, run)  # `[**Nick**] Title`
    bold = [r for r, b, _ in runs if b and not _is_tag(r) and f"[{r}]" not in bracketed]
    italic = [r for r, b, i in runs if i and not b]
    if bold:
        if len(bold) > 1 and _is_nick(bold[0]) and len(bold[1].split()) >= 3:
            _alias(entry, bold[0])
            bold = bold[1:]
        title = _strip_number(bold[0])
        if len(title.split()) >= 2 or not italic:
            return title
    if italic:
        return _strip_number(italic[0])
    quoted = re.search(r"[\"“]([^\"”]{10,})[\"”]", inline.plain(links=False))
    if quoted:
        return quoted.group(1)
    text = inline.plain(links=False)
    first = text.split("\n")[0]
    first = _clean(re.sub(r"^\s*(?:\d+\.\s+)?(?:\[\s*\]\s*)*", "", first))
    first = _bracket_prefix(first, entry)
    first = re.split(r"\[|\s\|\s", first)[0]
    first = re.sub(r"\(@[^)]*\)", "", first)
    # `Title - description` / `Title \u2014 description`: the description is not the title
    first = re.split(r"\s[-\u2013\u2014]\s", first)[0]
    first = _clean(first.strip(" [].,;|-"))
    # `Title, ICLR 2023. code: https://...`: a trailing venue phrase and link label are not title
    first = re.sub(r"[\s,.;]*\b(?:code|github|project|paper|pdf|url)\s*:?$", "", first, flags=re.I)
    trailing = re.search(r"[,.]\s*([^,.]{2,30}?)\s*[.,]?$", first)
    if trailing and read_venue(trailing.group(1)):
        first = first[: trailing.start()].strip()
    # a title is several words, or a run of CJK characters with no spaces
    return first if len(first.split()) >= 2 or (len(first) >= 4 and not first.isascii()) else None


def _runs(inline: Inline) -> list[tuple[str, bool, bool]]:
    """Maximal emphasised runs outside links: (text, bold, italic)."""
    runs: list[tuple[str, bool, bool]] = []
    current: list[str] = []
    style: tuple[bool, bool] | None = None
    for span in [*inline.spans, Span("\x00")]:
        key = (span.bold, span.italic) if not span.in_link and (span.bold or span.italic) else None
        if key != style or "\x00" in span.text:
            if style is not None and current:
                text = _clean("".join(current))
                if text:
                    runs.append((text, style[0], style[1]))
            current = []
            style = key
        if key is not None:
            current.append(span.text.replace("\x00", ""))
    return runs


def _strip_number(title: str) -> str:
    return re.sub(r"^\s*\[\d+\]\s*|^\s*\d+\.\s+", "", title).strip()


def _is_tag(text: str) -> bool:
    """A bold venue or date tag rather than a title (`**NeurIPS 2024**`, `**[CVPR'25]**`)."""
    text = text.strip(" []")
    return (bool(read_venue(text)) and len(text.split()) <= 4) or date_year(text) is not None


def _is_nick(text: str) -> bool:
    text = text.strip(" :")
    return len(text) <= 30 and len(text.split()) <= 3 and bool(re.search(r"[A-Z0-9]", text[1:]))


def _alias(entry: Entry, name: str) -> None:
    name = name.strip(" :;,.[]")
    if name and name not in entry.aliases and name.lower() not in _NOT_NICKNAMES:
        entry.aliases.append(name)


def _bracket_prefix(text: str, entry: Entry) -> str:
    """Read leading `[Venue Year]` / `[Nick]` tags off `text`; return the rest."""
    while True:
        match = re.match(r"^\s*\[([^\[\]]+)\]\s*(?!\()", text)
        if not match:
            return text
        tag = _clean(match.group(1))
        rest = text[match.end() :]
        if not _read_venue_tag(tag, entry, heading_year=_heading_year(entry.section)):
            if len(tag.split()) > 5:
                return text  # not a tag: a bracketed title
            if _is_nick(tag) or rest.lower().startswith(tag.lower()):
                _alias(entry, tag)  # `[Loki] Loki: Low-Rank Keys ...`
        text = rest


def _read_venue_tag(tag: str, entry: Entry, heading_year: int | None = None) -> bool:
    """Read `tag` as a venue tag: set `venue` (and the year of an arXiv tag) when it can be
    normalised, or only `venue_text` when it names a venue in a form we cannot normalise (it is
    then reported, not dropped). True when `tag` is a venue tag at all."""
    tag = tag.strip(" .,;[]*")
    if not tag or entry.venue:
        return bool(tag) and bool(read_venue(tag))
    venue = read_venue(tag)
    if venue is None and heading_year and not re.search(r"\d", tag) and _venue_word(tag):
        venue = read_venue(f"{tag} {heading_year}")
    if venue is None and _venue_word(tag):
        entry.venue_text = tag
        return True
    if venue is None:
        return False
    entry.venue = venue
    entry.venue_text = tag
    if venue == "arXiv":
        year = re.search(r"(?:19|20)\d\d|'(\d\d)\b", tag)
        if year:
            entry.year = int(year.group()) if not year.group(1) else 2000 + int(year.group(1))
    return True


def _venue_word(tag: str) -> bool:
    """`tag` names a venue we could not normalise (a typo, a venue we do not list)."""
    base = re.sub(r"(?:19|20)\d\d|'\d\d", "", tag).strip(" ,.")
    return bool(read_venue(f"{base} 2020")) if base else False


def _heading_year(section: str | None) -> int | None:
    years = re.findall(r"\b((?:19|20)\d\d)\b", section or "")
    return int(years[-1]) if years else None


def _read_cell(role: str | None, inline: Inline, text: str, entry: Entry, is_title: bool) -> None:
    plain = _clean(inline.plain(links=False))
    if role == "name" and plain and not is_title:
        _alias(entry, plain)
    elif role == "venue" and plain and plain not in ("-", "—"):
        _read_venue_tag(plain, entry, entry.year)
        if entry.venue is None and not entry.venue_text:
            entry.venue_text = plain
    elif role == "date" and plain:
        year = date_year(plain)
        if year and entry.year is None:
            entry.year = year
    elif role == "authors" and plain:
        entry.authors = _authors(plain)
    elif role == "free" and inline.plain().strip():
        mark = inline.plain().replace("\x00", "").strip().lower()
        if mark in ("✓", "✔", "✅", "yes", "y", "true", "√"):
            entry.training_free = True
        elif mark in ("✗", "✘", "❌", "no", "n", "false", "\u00d7"):
            entry.training_free = False
    if role in (None, "title", "name"):
        _loose_facts(inline, entry)
    else:
        _badge_facts(inline, entry)


def _authors(text: str) -> list[str]:
    text = " ".join(text.replace("\x00", " ").split()).strip(" .*")
    if re.search(r"\bet al\b", text, re.I) and "," not in text:
        return []
    text = re.sub(r",?\s*et al\.?$", "", text)
    parts = text.split(" and ")
    single = len(parts) == 1 and all(len(n.split()) == 1 for n in text.split(","))
    if all(p.count(",") == 1 for p in parts[:-1]) and (
        (len(parts) > 1 and (parts[-1].count(",") == 1 or parts[-1].strip().lower() == "others"))
        or (single and text.count(",") == 1)
    ):
        names = parts  # BibTeX style: 'Last, First and Last, First'
    else:
        names = re.split(r",\s*(?:and\s+)?|\s+and\s+|\s*&\s*", text)
    authors = [author_name(a) for a in names]
    return [a for a in authors if a and a.lower() not in ("others", "et al", "et al.")]


def _loose_facts(inline: Inline, entry: Entry) -> None:
    """Venue, year and authors written around the title of a list item or title cell."""
    runs = _runs(inline)
    bold_runs = [r for r, b, _ in runs if b]
    for run in bold_runs:
        if _is_tag(run):
            _read_venue_tag(run, entry) or _date_into(run, entry)
    italic = [r for r, b, i in runs if i and not b]
    if not entry.authors:
        for run in italic:
            if _clean(run) != (entry.title or "") and ("," in run or " and " in run):
                entry.authors = _authors(run)
                break
    subs = [s.text for s in inline.spans if s.sub and not s.in_link]
    for line in "".join(subs).split("\n"):
        line = _clean(line)
        venue = re.search(r"\bVenue:\s*([^·|]+)", line)
        if venue:
            _read_venue_tag(venue.group(1), entry)
        elif (
            line
            and not entry.authors
            and re.search(r"[A-Z][a-z]+ [A-Z]", line)
            and "·" not in line
            and "Code" not in line
        ):
            entry.authors = _authors(line)  # `<sub>First Last, First Last</sub>`
    text = inline.plain(links=False).replace("\x00", " ")
    # A trailing `Venue Year.` after a bold title: `**Title**, NeurIPS 2024.`
    trailing = re.search(r"\*\*\s*,\s*([^*\n\[]+)", _raw_text(inline))
    written = trailing.group(1).strip(" .") if trailing else ""
    if written and not entry.venue and not _read_venue_tag(written, entry):
        entry.venue_text = entry.venue_text or written
    if not entry.venue and not entry.venue_text:
        _plain_venue(inline, entry)
    for code in inline.codes:
        if entry.year is None:
            _date_into(code, entry)
    for line in text.split("\n"):
        for match in re.finditer(r",\s*((?:19|20)\d\d[.\-/](?:0[1-9]|1[0-2]))\b", line):
            if entry.year is None:
                _date_into(match.group(1), entry)
    _badge_facts(inline, entry)


def _plain_venue(inline: Inline, entry: Entry) -> None:
    """A short `Venue Year` phrase in the unemphasised text (`*Authors*. ICLR'23. [[pdf](...)]`)."""
    plain = "".join(
        s.text for s in inline.spans if not (s.in_link or s.bold or s.italic or s.sub)
    ).replace("\x00", " ")
    for phrase in re.split(r"[.,]\s|[;\n\[\]()|\u00b7]", plain):
        phrase = phrase.strip(" .")
        if len(phrase.split()) <= 4 and re.search(r"(?:19|20)\d\d|'\d\d\b", phrase):
            venue = read_venue(phrase)
            if venue and venue != "arXiv":
                entry.venue, entry.venue_text = venue, phrase
                return


def _raw_text(inline: Inline) -> str:
    """Plain text with bold runs re-marked, to see what follows a bold title."""
    out = []
    for span in inline.spans:
        if span.in_link:
            continue
        out.append(f"**{span.text}**" if span.bold else span.text)
    return "".join(out).replace("****", "").replace("\x00", "")


def _date_into(text: str, entry: Entry) -> bool:
    year = date_year(text)
    if year and entry.year is None:
        entry.year = year
        return True
    return False


def _badge_facts(inline: Inline, entry: Entry) -> None:
    for badge in inline.badges:
        modality, family, training_free = read_tag(badge)
        if modality and modality not in entry.modality:
            entry.modality.append(modality)
        if family and family not in entry.family:
            entry.family.append(family)
        if training_free is not None:
            entry.training_free = training_free
        if modality or family or training_free is not None:
            continue
        compact = badge.replace(" ", "")
        arxiv = re.match(r"^arxiv[\s\-]*((?:19|20)\d\d)?[.\-]?(\d\d)?$", badge, re.I)
        if arxiv or badge.lower() == "arxiv":
            if not entry.venue:
                entry.venue = "arXiv"
                entry.venue_text = badge
            if arxiv and arxiv.group(1) and entry.year is None:
                entry.year = int(arxiv.group(1))
            continue
        spaced = badge.replace("-", " ")
        venue = read_venue(spaced) or read_venue(re.sub(r"((?:19|20)\d\d)", r" \1", compact))
        if venue and not entry.venue:
            entry.venue = venue
            entry.venue_text = badge


def _badge_aliases(cells: list[tuple[str | None, Inline, str]], entry: Entry) -> None:
    """A badge whose text is the title's prefix before its colon is the work's nickname."""
    if not entry.title:
        return
    for _, inline, _ in cells:
        for badge in inline.badges:
            if any(x is not None for x in read_tag(badge)):
                continue
            if entry.title.lower().startswith(badge.lower() + ":"):
                _alias(entry, badge)


def _tail_tags(inline: Inline, paper: Link | None, entry: Entry) -> None:
    """The `.[Nick;Venue;[GitHub](url)]` tag group after a title link."""
    if paper is None or paper not in inline.links:
        return
    tail = paper.after
    group = re.match(r"^\s*\.?\s*\[(.*)", tail, re.S)
    if not group or (";" not in tail and not re.match(r"^\s*\.\s*\[", tail)):
        return
    tags = [t.strip(" .[]") for t in re.split(r"[;\[\]]|:\s", group.group(1))]
    for position, token in enumerate(t for t in tags if t):
        token = _clean(token)
        venue = read_venue(token) if re.search(r"(?:19|20)\d\d|'\d\d\b", token) else None
        modality, _family, _ = read_tag(token)
        if venue:
            entry.venue = entry.venue or venue
            entry.venue_text = entry.venue_text or token
        elif modality:
            if modality not in entry.modality:
                entry.modality.append(modality)
        elif token.lower() in _ORGS or token.lower() in _NOT_NICKNAMES:
            continue
        elif _tail_nickname(token, entry.title, first=position == 0):
            _alias(entry, token)
        elif not any(_label(link.text) == token.lower() for link in inline.links):
            entry.problems.append(f"tag {token!r} was not read (not a nickname, venue or modality)")


def _tail_nickname(token: str, title: str | None, *, first: bool) -> bool:
    if len(token) > 40 or token.count(" ") > 2:
        return False
    if title and title.lower().startswith(token.lower() + ":"):
        return True
    compact = token.replace(" ", "")
    return bool(re.search(r"[A-Z0-9]", compact[1:])) and (first or " " not in token)
