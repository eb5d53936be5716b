"""Records from arXiv metadata: `kb new --arxiv ID` scaffolds one, `kb enrich` fills gaps.

`new_record` turns one paper's `ArxivMeta` into a valid record with what arXiv can vouch for
(title, authors, year, arXiv id, link, a venue and DOI when arXiv gives them) plus the few
curated fields the schema requires, which the contributor supplies (`modality`; `kind`, which
defaults to method). Everything else that needs judgement (family, training_free, summary,
code) is left out for the contributor, as the template asks: never guess a fact.

`enrich` compares records that have an arXiv id with arXiv's metadata. It fills only empty
fields (authors, doi, paper) and never changes a value someone wrote; where a written value
disagrees with arXiv (title beyond case and punctuation, year, authors, DOI, venue) it reports a
`Problem` and leaves the value alone. Every fill is recorded in `sources` as `{source: arxiv}`.

The metadata comes from a client passed in (`tokenkb.sources.arxiv.ArxivClient`, or a fake in
tests): this module never touches the network. It writes files only through `outputs`, under
the lock on the directory (`outputs.locked`), never over a file that changed since it was read,
and never a text that `kb validate` would reject (`store.check_record_text`).
"""

from __future__ import annotations

import contextlib
import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from .canonical import first_difference
from .files import read_bytes_bounded
from .model import DOI_PATTERN, Paper, normalize_arxiv, suggest_venue, venue_year
from .outputs import LockTimeout, locked, write_text_atomic
from .problems import Problem, RecordError
from .store import (
    MAX_BYTES,
    ParsedYaml,
    check_record_text,
    dump_record,
    parse_record,
    read_text,
    record_paths,
)
from .taxonomy import ARXIV_VENUE, Kind, Modality
from .titles import title_key

if TYPE_CHECKING:
    from .sources.arxiv import ArxivMeta

ARXIV_SOURCE = "arxiv"
MAX_SLUG_WORDS = 3
MAX_SLUG_CHARS = 40
# Fields enrich may fill when they are empty; everything else is curated or required.
FILLABLE = ("authors", "doi", "paper")
# Words that make poor nicknames when a slug is built from the first words of a title.
# fmt: off
_STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it",
    "its", "of", "on", "or", "our", "the", "to", "toward", "towards", "via", "we", "what", "when",
    "where", "which", "with", "without", "you", "your",
))
# fmt: on
_DOI = re.compile(DOI_PATTERN)
_ARXIV_LINE = re.compile(r"^arxiv:[ \t]*['\"]?([^'\"\s#]+)", re.MULTILINE)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


class ScaffoldError(Exception):
    """A record cannot be made or written as asked; the message is one line saying why."""


class MetadataSource(Protocol):
    """What enrich needs from an arXiv client: metadata for many bare ids at once."""

    def fetch_many(self, arxiv_ids: Iterable[str]) -> dict[str, ArxivMeta]: ...


# --- text keys --------------------------------------------------------------------------------


def _ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _name_key(name: str) -> str:
    return re.sub(r"[^a-z]+", "", _ascii_fold(name).casefold())


# --- kb new -----------------------------------------------------------------------------------


def slug_base(title: str) -> str:
    """The nickname part of an id: the text before ':' when short, else the first words.

    'Token Merging: Your ViT But Faster' -> 'token-merging'; 'H$_2$O: ...' -> 'h2o';
    'Efficient Streaming Language Models with Attention Sinks' -> 'efficient-streaming-language'.
    """
    clean = _LATEX_COMMAND.sub("", _ascii_fold(title)).replace("$", "")
    clean = re.sub(r"[_^{}]", "", clean)
    head, colon, _ = clean.partition(":")
    head_words = re.findall(r"[A-Za-z0-9]+", head)
    if colon and 1 <= len(head_words) <= MAX_SLUG_WORDS and len(head.strip()) <= 30:
        words = head_words
    else:
        every = re.findall(r"[A-Za-z0-9]+", clean)
        significant = [w for w in every if w.lower() not in _STOP_WORDS and not w.isdigit()]
        words = (significant or every)[:MAX_SLUG_WORDS]
    base = "-".join(word.lower() for word in words)[:MAX_SLUG_CHARS].strip("-")
    return base or "paper"


def unique_id(base: str, year: int, papers_dir: Path) -> str:
    """`<base>-<year>`, or with a letter after the year (b, c, ...) when that file exists."""
    for suffix in ["", *"bcdefghijklmnopqrstuvwxyz"]:
        candidate = f"{base}-{year}{suffix}"
        if not (papers_dir / f"{candidate}.yaml").exists():
            return candidate
    raise ScaffoldError(
        f"every id from {base}-{year} to {base}-{year}z is taken in {papers_dir}; "
        "choose an id by hand"
    )


def find_arxiv(papers_dir: Path, arxiv_id: str) -> Path | None:
    """The record file in `papers_dir` whose `arxiv:` is this id, if any.

    Reads the field from the text, so a record that is invalid for another reason still counts.
    """
    if not papers_dir.is_dir():
        return None
    try:
        paths = record_paths(papers_dir)
    except RecordError:  # cannot be listed: writing there will fail, and say why
        return None
    for path in paths:
        try:  # regular files only, never past the size limit: a FIFO or /dev/zero cannot hold us
            text = read_bytes_bounded(path, MAX_BYTES).decode("utf-8", errors="replace")
        except OSError:  # not a readable record; kb validate reports it
            continue
        for match in _ARXIV_LINE.finditer(text):
            if normalize_arxiv(match.group(1)) == arxiv_id:
                return path
    return None


def _venue_from(meta: ArxivMeta, year: int) -> str | None:
    if meta.journal_ref is None:
        return None
    venue = suggest_venue(meta.journal_ref)
    if venue is None or venue == ARXIV_VENUE:
        return None
    published = venue_year(venue)
    # A venue can be the next year's conference, never later: '... 2099' is not a fact.
    if published is None or not year <= published <= meta.updated.year + 1:
        return None
    return venue


def _valid_doi(value: str | None) -> str | None:
    return value if value is not None and _DOI.match(value) else None


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)


def new_record(
    meta: ArxivMeta,
    papers_dir: Path,
    modality: Sequence[Modality | str],
    kind: Kind | str = Kind.METHOD,
) -> tuple[Path, str]:
    """The path and canonical text of a new record for `meta`; nothing is written.

    Raises ScaffoldError when a record in `papers_dir` already has this arXiv id, or when the
    metadata cannot make a valid record.
    """
    existing = find_arxiv(papers_dir, meta.arxiv_id)
    if existing is not None:
        raise ScaffoldError(f"{existing} already has arXiv {meta.arxiv_id}; edit that record")
    if not modality:
        raise ScaffoldError(
            "a record needs at least one modality, which arXiv does not give; choose from "
            + ", ".join(m.value for m in Modality)
        )
    year = meta.published.year
    venue = _venue_from(meta, year)
    doi = _valid_doi(meta.doi)
    id_year = (venue_year(venue) if venue else None) or year
    record_id = unique_id(slug_base(meta.title), id_year, papers_dir)
    fields = ["title", "authors", "year", *(["venue"] if venue else []), "arxiv"]
    fields += [*(["doi"] if doi else []), "paper"]
    data: dict[str, Any] = {
        "id": record_id,
        "title": meta.title,
        "authors": list(meta.authors),
        "year": year,
        "venue": venue or ARXIV_VENUE,
        "kind": str(kind),
        "modality": [str(m) for m in modality],
        "arxiv": meta.arxiv_id,
        "doi": doi,
        "paper": meta.abs_url,
        "sources": [{"source": ARXIV_SOURCE, "fields": fields}],
    }
    try:
        paper = Paper.model_validate(data, context={"stem": record_id})
    except ValidationError as exc:
        raise ScaffoldError(
            f"arXiv {meta.arxiv_id} does not make a valid record: {_validation_summary(exc)}"
        ) from None
    path, text = papers_dir / f"{record_id}.yaml", dump_record(paper)
    try:
        check_record_text(text, path)  # what kb validate checks beyond the schema: size, YAML
    except RecordError as exc:
        raise ScaffoldError(
            f"arXiv {meta.arxiv_id} would make a record that kb validate rejects: "
            f"{exc.problems[0].message} (arXiv lists {len(meta.authors)} authors and a title of "
            f"{len(meta.title)} characters); write this record by hand"
        ) from None
    return path, text


def create_record(
    meta: ArxivMeta,
    papers_dir: Path,
    modality: Sequence[Modality | str],
    kind: Kind | str = Kind.METHOD,
    lock_timeout: float = 60.0,
) -> Path:
    """Plan and write the new record for `meta` under the lock on `papers_dir`; its path.

    Planning inside the lock means a concurrent `kb new` (or import) has either written its file
    already, so this one picks the next free id or finds the arXiv id taken, or waits. Raises
    ScaffoldError as `new_record` does, when the lock is not had in `lock_timeout` seconds, and
    with `<path>: cannot write: <reason>` when the file cannot be written (nothing is left
    behind then).
    """
    try:
        with locked(papers_dir, lock_timeout):
            path, text = new_record(meta, papers_dir, modality, kind)
            write_new_record(path, text)
    except LockTimeout as exc:
        raise ScaffoldError(str(exc)) from None
    except OSError as exc:  # the lock itself
        raise ScaffoldError(f"{papers_dir}: cannot write: {_reason(exc)}") from None
    return path


def write_new_record(path: Path, text: str) -> None:
    """Write a new record atomically; never over an existing file. The caller holds the lock."""
    if path.exists():
        raise ScaffoldError(f"{path} already exists; not overwriting it")
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise ScaffoldError(f"{path}: cannot write: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    return " ".join((exc.strerror or str(exc) or type(exc).__name__).split())


# --- kb enrich --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRecord:
    """A record as read from its file: the text, the validated record and field lines."""

    path: Path
    text: str
    paper: Paper
    parsed: ParsedYaml

    def line(self, *loc: str | int) -> int:
        return self.parsed.line(loc)


def load_stored(path: Path) -> StoredRecord:
    """Read and validate one record file; raises RecordError with its problems."""
    text = read_text(path)
    paper, parsed = parse_record(text, str(path), stem=path.stem)
    return StoredRecord(path, text, paper, parsed)


@dataclass(frozen=True)
class Change:
    """Fields filled in one record: the file's text before and after."""

    path: Path
    arxiv_id: str
    fields: tuple[str, ...]
    old_text: str
    new_text: str

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.old_text.splitlines(keepends=True),
                self.new_text.splitlines(keepends=True),
                fromfile=str(self.path),
                tofile=str(self.path),
            )
        )


@dataclass
class EnrichPlan:
    """What enrich would do: the changes, the disagreements, and how many records it asked."""

    asked: int = 0
    changes: list[Change] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def enrich(records: Sequence[StoredRecord], client: MetadataSource) -> EnrichPlan:
    """Plan the fills and report the disagreements for every record with an arXiv id.

    Asks the client once for all ids (it batches); changes nothing on disk (see
    `apply_changes`). Network errors from the client propagate before anything is planned.
    """
    with_ids = [(r, r.paper.arxiv) for r in records if r.paper.arxiv is not None]
    plan = EnrichPlan(asked=len(with_ids))
    if not with_ids:
        return plan
    found = client.fetch_many([arxiv_id for _, arxiv_id in with_ids])
    for record, arxiv_id in with_ids:
        meta = found.get(arxiv_id)
        if meta is None:
            plan.problems.append(
                Problem(
                    str(record.path),
                    record.line("arxiv"),
                    f"arXiv has no paper {arxiv_id}; check the id",
                )
            )
            continue
        plan.problems.extend(disagreements(record, meta))
        change, problem = _fill(record, meta)
        if problem is not None:
            plan.problems.append(problem)
        if change is not None:
            plan.changes.append(change)
    plan.problems.sort()
    return plan


def disagreements(record: StoredRecord, meta: ArxivMeta) -> list[Problem]:
    """Where the record's written values differ from arXiv's; nothing is changed."""
    paper, name, arxiv_id = record.paper, str(record.path), meta.arxiv_id
    problems = []
    known_titles = {title_key(paper.title), *(title_key(a) for a in paper.aliases)}
    if title_key(meta.title) not in known_titles:
        problems.append(
            Problem(
                name,
                record.line("title"),
                f"title differs from arXiv {arxiv_id}'s title {meta.title!r}; if both are "
                "right, add that title to aliases, else correct the title",
            )
        )
    if paper.year != meta.published.year:
        problems.append(
            Problem(
                name,
                record.line("year"),
                f"year {paper.year} but arXiv {arxiv_id} v1 is from "
                f"{meta.published.isoformat()}; year is the first public version: check which "
                "came first",
            )
        )
    if paper.authors and meta.authors:
        mine = [_name_key(a) for a in paper.authors]
        theirs = [_name_key(a) for a in meta.authors]
        if mine != theirs:
            index = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), None
            )
            if index is not None:
                message = (
                    f"author {index + 1} is {paper.authors[index]!r} here but "
                    f"{meta.authors[index]!r} on arXiv {arxiv_id}"
                )
                line = record.line("authors", index)
            else:
                message = f"authors list {len(mine)} names but arXiv {arxiv_id} lists {len(theirs)}"
                line = record.line("authors")
            problems.append(Problem(name, line, f"{message}; check the author list"))
    arxiv_doi = _valid_doi(meta.doi)
    if paper.doi is not None and arxiv_doi is not None and paper.doi.lower() != arxiv_doi.lower():
        problems.append(
            Problem(
                name,
                record.line("doi"),
                f"doi {paper.doi} but arXiv {arxiv_id} gives {arxiv_doi}; check which is "
                "this work's",
            )
        )
    if meta.journal_ref is not None:
        venue = suggest_venue(meta.journal_ref)
        if venue is not None and venue != paper.venue:
            problems.append(
                Problem(
                    name,
                    record.line("venue"),
                    f"venue {paper.venue!r} but arXiv {arxiv_id}'s journal reference "
                    f"{meta.journal_ref!r} reads as {venue!r}; check the venue",
                )
            )
    return problems


def _fill(record: StoredRecord, meta: ArxivMeta) -> tuple[Change | None, Problem | None]:
    """The change that fills the record's empty fields from `meta`, if any."""
    paper, name = record.paper, str(record.path)
    updates: dict[str, Any] = {}
    if not paper.authors and meta.authors:
        updates["authors"] = list(meta.authors)
    doi = _valid_doi(meta.doi)
    if paper.doi is None and doi is not None:
        updates["doi"] = doi
    if paper.paper is None:
        updates["paper"] = meta.abs_url
    if not updates:
        return None, None
    filled = [f for f in FILLABLE if f in updates]
    if dump_record(paper) != record.text:
        return None, Problem(
            name,
            first_difference(record.text, dump_record(paper)),
            f"not in canonical form, so filling {', '.join(filled)} would rewrite more than "
            f"those fields; run 'kb fmt {name}' first",
        )
    data = paper.model_dump(mode="json", exclude_defaults=True)
    data.update(updates)
    sources = data.get("sources", [])
    for source in sources:
        if source["source"] == ARXIV_SOURCE and source.get("line") is None:
            have = source.get("fields", [])
            source["fields"] = have + [f for f in filled if f not in have]
            break
    else:
        sources.append({"source": ARXIV_SOURCE, "fields": filled})
    data["sources"] = sources
    try:
        new_paper = Paper.model_validate(data, context={"stem": record.path.stem})
    except ValidationError as exc:
        return None, Problem(
            name,
            1,
            f"filling {', '.join(filled)} from arXiv {meta.arxiv_id} would make the record "
            f"invalid ({_validation_summary(exc)}); fill them by hand",
        )
    new_text = dump_record(new_paper)
    try:
        check_record_text(new_text, record.path)
    except RecordError as exc:
        return None, Problem(
            name,
            1,
            f"filling {', '.join(filled)} from arXiv {meta.arxiv_id} would make a record that kb "
            f"validate rejects ({exc.problems[0].message}); fill them by hand",
        )
    return Change(record.path, meta.arxiv_id, tuple(filled), record.text, new_text), None


@dataclass
class Applied:
    """What `apply_changes` did: the changes written, the files skipped because they changed
    since they were read, and the error that stopped it (later changes were not tried)."""

    written: list[Change] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    error: str | None = None


def apply_changes(changes: Sequence[Change], lock_timeout: float = 60.0) -> Applied:
    """Write every change atomically, under the lock on each directory written to.

    Inside the lock each file is read again: one that changed since it was planned is skipped
    and reported. A write that fails (a read-only directory, a full disk) stops here with one
    line in `error`; each file is written whole or not at all.
    """
    applied = Applied()
    directories = sorted({change.path.parent for change in changes})
    try:
        with contextlib.ExitStack() as stack:
            for directory in directories:  # in one order, so two writers cannot deadlock
                stack.enter_context(locked(directory, lock_timeout))
            for change in changes:
                if _current_text(change.path) != change.old_text:
                    applied.skipped.append(
                        Problem(
                            str(change.path),
                            1,
                            f"changed since kb enrich read it, so {', '.join(change.fields)} "
                            "were not filled; run kb enrich again",
                        )
                    )
                    continue
                try:
                    write_text_atomic(change.path, change.new_text)
                except OSError as exc:
                    applied.error = f"{change.path}: cannot write: {_reason(exc)}"
                    break
                applied.written.append(change)
    except LockTimeout as exc:
        applied.error = str(exc)
    except OSError as exc:  # a lock
        where = exc.filename if isinstance(exc.filename, str) else directories[0]
        applied.error = f"{where}: cannot write: {_reason(exc)}"
    return applied


def _current_text(path: Path) -> str | None:
    try:
        return read_bytes_bounded(path, MAX_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
