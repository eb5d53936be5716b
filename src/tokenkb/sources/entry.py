"""What an importer produces: candidate entries, lines it could not read, and why.

An `Entry` is one mention of a work in one source, with the facts that source gives and the line
it starts on. Importers fill entries and never write files; deduplication and merging decide what
becomes a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Entry:
    """One mention of a work in a source list."""

    source: str  # source name: the file stem, e.g. "000_bc6bb1248e4d14b4"
    line: int  # 1-based line where the mention starts
    text: str  # the raw text of the mention (repaired encoding), for reports
    title: str | None = None
    aliases: list[str] = field(default_factory=list)  # nicknames: "ToMe", "FastV"
    authors: list[str] = field(default_factory=list)  # "First Last"; empty when only "X et al."
    year: int | None = None  # first public year, when the source gives a date
    venue: str | None = None  # normalised venue, or None when the source gives none we can read
    venue_text: str | None = None  # the venue as the source wrote it
    arxiv: str | None = None
    doi: str | None = None
    openreview: str | None = None
    acl: str | None = None
    ieee: str | None = None
    paper: str | None = None  # canonical paper URL the source links (non-arXiv)
    code: str | None = None  # code repository link (GitHub normalised)
    project: str | None = None  # a project page given where a code link was expected
    kind: str | None = None  # a Kind value when the source says (survey, thesis, blog)
    modality: list[str] = field(default_factory=list)  # hints from sections and tags
    family: list[str] = field(default_factory=list)  # hints from sections and tags
    training_free: bool | None = None  # only when the source states it (a tag, "training-free")
    section: str | None = None  # the heading the entry sits under
    problems: list[str] = field(default_factory=list)  # suspicions, each a sentence

    def fields_given(self) -> list[str]:
        """Record fields this entry supplies, for provenance (`sources[].fields`)."""
        names = [
            "title",
            "aliases",
            "authors",
            "year",
            "venue",
            "arxiv",
            "doi",
            "openreview",
            "acl",
            "ieee",
            "paper",
            "code",
            "project",
        ]
        return [name for name in names if getattr(self, name) not in (None, [])]


@dataclass(frozen=True)
class Unparsed:
    """A line (or block) the importer could not turn into an entry, and why."""

    line: int
    text: str
    reason: str


@dataclass
class ParseResult:
    """Everything an importer read from one source."""

    source: str
    format: str  # "awesome", "structured", "citations" or "bibtex"
    entries: list[Entry] = field(default_factory=list)
    unparsed: list[Unparsed] = field(default_factory=list)
    skipped: list[Unparsed] = field(default_factory=list)  # read, and judged not to be works
