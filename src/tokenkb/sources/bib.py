"""BibTeX files, read with bibtexparser v2.

Every entry becomes an `Entry` (title, authors, year, venue from booktitle/journal, arXiv id
from eprint or the URL, DOI, code from a `code`/`github` field). Blocks bibtexparser could not
read (a missing brace, a duplicate key) are reported as unparsed with their line, never dropped.
"""

from __future__ import annotations

import logging
import re

import bibtexparser
from bibtexparser.model import DuplicateBlockKeyBlock, ParsingFailedBlock
from bibtexparser.model import Entry as BibEntry

from ..model import normalize_arxiv
from .entry import Entry, ParseResult, Unparsed
from .hints import read_venue
from .links import author_name, clean_title, read_link, repair


def looks_like_bibtex(text: str) -> bool:
    return re.search(r"^\s*@[A-Za-z]+\s*[{(]", text, re.M) is not None


def _plain(value: str) -> str:
    """Braces and simple TeX escapes removed."""
    value = re.sub(r"\\[`'^\"~=.]\{?([A-Za-z])\}?", r"\1", value)
    return " ".join(value.replace("{", "").replace("}", "").split())


def parse(text: str, source: str) -> ParseResult:
    result = ParseResult(source=source, format="bibtex")
    log = logging.getLogger("bibtexparser")
    level = log.level
    log.setLevel(logging.CRITICAL)  # its failures are reported below, with their lines
    try:
        library = bibtexparser.parse_string(repair(text))  # type: ignore[attr-defined]
    finally:
        log.setLevel(level)
    for block in library.failed_blocks:
        line = (block.start_line or 0) + 1
        if isinstance(block, DuplicateBlockKeyBlock):
            reason = f"duplicate key {block.key!r}; rename one of the entries"
        elif isinstance(block, ParsingFailedBlock):
            detail = str(block.error).strip() or "unbalanced braces"
            reason = f"not valid BibTeX ({detail}); check its braces and commas"
        else:
            reason = "not valid BibTeX"
        result.unparsed.append(Unparsed(line, (block.raw or "").strip()[:300], reason))
    for bib in library.entries:
        result.entries.append(_entry(bib, source))
    return result


def _field(bib: BibEntry, name: str) -> str | None:
    field = bib.fields_dict.get(name)
    if field is None:
        return None
    value = _plain(str(field.value))
    return value or None


def _entry(bib: BibEntry, source: str) -> Entry:
    line = (bib.start_line or 0) + 1
    entry = Entry(source=source, line=line, text=(bib.raw or "").strip()[:300])
    title = _field(bib, "title")
    entry.title = clean_title(title) if title else None
    if entry.title is None:
        entry.problems.append(f"@{bib.entry_type}{{{bib.key}}} has no title")
    authors = _field(bib, "author")
    if authors:
        entry.authors = [author_name(a) for a in re.split(r"\s+and\s+", authors)]
        entry.authors = [a for a in entry.authors if a.lower() != "others"]
    year = _field(bib, "year")
    if year and re.fullmatch(r"(?:19|20)\d\d", year):
        entry.year = int(year)
    venue = _field(bib, "booktitle") or _field(bib, "journal")
    if venue:
        entry.venue_text = venue
        guess = read_venue(venue if re.search(r"\d{4}", venue) else f"{venue} {year or ''}")
        entry.venue = guess
    eprint = _field(bib, "eprint")
    if eprint:
        entry.arxiv = normalize_arxiv(eprint)
    doi = _field(bib, "doi")
    if doi:
        entry.doi = re.sub(r"^https?://(?:dx\.)?doi\.org/", "", doi)
    for name in ("url", "pdf"):
        url = _field(bib, name)
        if url:
            link = read_link(url)
            entry.arxiv = entry.arxiv or link.arxiv
            entry.doi = entry.doi or link.doi
            entry.ieee = entry.ieee or link.ieee
            entry.openreview = entry.openreview or link.openreview
            entry.acl = entry.acl or link.acl
            entry.paper = entry.paper or link.paper
    for name in ("code", "github"):
        url = _field(bib, name)
        if url:
            entry.code = read_link(url).code or url
    if entry.venue is None and entry.arxiv and (venue is None or "arxiv" in venue.lower()):
        entry.venue = "arXiv"
    return entry
