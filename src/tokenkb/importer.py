"""`kb import`: read source lists, match every entry against papers/, plan, then write.

The plan is computed in full before anything is written: every new or changed record is
validated first, and if any would be invalid nothing is written (all or nothing). Entries are
matched by `dedupe.find_duplicates` against the records and each other; `merge` builds new
records and fills gaps in existing ones without overwriting curated fields. Works a curator has
excluded (off-topic, not a work) are listed in `curation/excluded.yaml` and skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from . import merge
from .dedupe import ID_KINDS, Conflict, Item, find_duplicates, titles_compatible
from .files import FileTooLarge, read_bytes_bounded
from .model import Paper
from .problems import Problem, RecordError
from .sources import bib, citations, markdown, structured
from .sources.entry import Entry, ParseResult, Unparsed
from .sources.links import repair
from .store import check_record_text, dump_record, load_record, read_text, record_paths
from .titles import matchable, title_key

READERS = {
    "awesome": markdown,
    "structured": structured,
    "citations": citations,
    "bibtex": bib,
}
FORMATS = tuple(READERS)
MAX_SOURCE_BYTES = 32 * 1024 * 1024  # the largest list we know is under 1 MiB


class ImportError_(Exception):
    """A source that cannot be imported at all (unreadable, unknown format)."""


def detect_format(text: str, path: Path) -> str:
    """The reader for `text`. Markdown that links papers is an awesome list (BibTeX fenced in it
    is read there too); BibTeX outside Markdown, numbered blocks and free-text citations go to
    their own readers; a Markdown file none of them takes is still read as Markdown, never
    refused."""
    if path.suffix.lower() == ".bib":
        return "bibtex"
    if structured.looks_like_structured(text):
        return "structured"
    if markdown.looks_like_awesome(text):
        return "awesome"
    if bib.looks_like_bibtex(text):
        return "bibtex"
    if citations.looks_like_citations(text):
        return "citations"
    if path.suffix.lower() in (".md", ".markdown") or markdown.looks_like_markdown(text):
        return "awesome"  # Markdown is read for what it holds; what it cannot read is reported
    raise ImportError_(
        f"{path}: cannot tell the format (awesome-list markdown, numbered blocks, citation list "
        "or BibTeX); name it with --as"
    )


def read_source(path: Path, as_format: str | None = None) -> ParseResult:
    """Entries and unparsed lines of one source file."""
    try:
        raw = read_bytes_bounded(path, MAX_SOURCE_BYTES)
    except FileTooLarge:
        raise ImportError_(
            f"{path}: is over {MAX_SOURCE_BYTES // (1024 * 1024)} MiB; a paper list is far "
            "smaller: split it, or check that this is the file you meant"
        ) from None
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read: {_reason(exc)}") from None
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        text = raw.decode("cp1252", errors="replace")
    text = repair(text)
    kind = as_format or detect_format(text, path)
    return READERS[kind].parse(text, path.stem)  # type: ignore[no-any-return]


@dataclass
class Excluded:
    """Works a curator decided are not token-reduction works (or not works at all).

    An entry is excluded by an identifier (arxiv, doi, ieee, openreview, acl) or its title
    (`titles.title_key`), or when it sits at one of the exclusion's `places` and its title is
    compatible with the excluded one (lists garble titles: "Long short-term memory, Neural
    computation, 9(8)"). A place alone never decides: a line number names another entry as soon
    as the list is edited above it."""

    by_id: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, value) -> reason
    by_title: dict[str, str] = field(default_factory=dict)
    by_place: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)

    def reason(self, entry: Entry) -> str | None:
        for kind in ID_KINDS:
            value = getattr(entry, kind)
            if value and (kind, value.lower()) in self.by_id:
                return self.by_id[(kind, value.lower())]
        key = title_key(entry.title) if entry.title else ""
        if matchable(key) and key in self.by_title:
            return self.by_title[key]
        place = self.by_place.get((entry.source, entry.line))
        if place is not None and entry.title and titles_compatible(entry.title, place[0]):
            return place[1]  # a title the list garbled, at the place the curator saw it
        return None


def load_excluded(path: Path) -> Excluded:
    """The exclusion list, or ImportError_ with `path:line: message` for what is malformed."""
    excluded = Excluded()
    try:
        text = read_bytes_bounded(path, MAX_SOURCE_BYTES).decode("utf-8")
    except FileNotFoundError:
        return excluded
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportError_(f"{path}:1: cannot read the exclusion list: {_reason(exc)}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ImportError_(f"{path}:{line}: invalid YAML: {problem}") from None
    if root is None:
        return excluded
    if not isinstance(root, yaml.SequenceNode):
        raise ImportError_(f"{path}:1: the exclusion list is a YAML list of works ('- title: ...')")
    for node in root.value:
        line = node.start_mark.line + 1
        try:
            item = yaml.safe_load(yaml.serialize(node))
        except (yaml.YAMLError, ValueError) as exc:
            raise ImportError_(f"{path}:{line}: cannot read this item: {exc}") from None
        if not isinstance(item, dict):
            raise ImportError_(f"{path}:{line}: each item is a mapping with title, arxiv, reason")
        title, reason = item.get("title"), item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ImportError_(f"{path}:{line}: give the reason for excluding this work")
        ids = {kind: str(item[kind]) for kind in ID_KINDS if item.get(kind)}
        if not title and not ids:
            raise ImportError_(f"{path}:{line}: name the work by its title or an identifier")
        for kind, value in ids.items():
            excluded.by_id[(kind, value.lower())] = reason
        if title:
            key = title_key(str(title))
            if not matchable(key):
                raise ImportError_(
                    f"{path}:{line}: title {title!r} is too short to match entries on; give "
                    "the full title or the arxiv id"
                )
            excluded.by_title[key] = reason
        places = item.get("places") or []
        if not isinstance(places, list):
            raise ImportError_(f"{path}:{line}: places is a list of 'source:line'")
        for place in places:
            source, _, number = str(place).rpartition(":")
            if not source or not number.isdigit():
                raise ImportError_(
                    f"{path}:{line}: place {place!r} is not 'source:line' (e.g. '003_8b63:141')"
                )
            if title:
                excluded.by_place[(source, int(number))] = (str(title), reason)
    return excluded


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


@dataclass
class Planned:
    """What happens to one entry."""

    entry: Entry
    action: str  # "new", "merge" or "skip"
    target: str | None
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.entry.source,
            "line": self.entry.line,
            "title": self.entry.title,
            "arxiv": self.entry.arxiv,
            "code": self.entry.code,
            "action": self.action,
            "target": self.target,
            "problems": [*self.entry.problems, *self.problems],
        }


@dataclass
class Plan:
    planned: list[Planned] = field(default_factory=list)
    unparsed: list[tuple[str, Unparsed]] = field(default_factory=list)
    skipped: list[tuple[str, Unparsed]] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)  # path -> new text
    conflicts: list[Conflict] = field(default_factory=list)
    invalid: list[Problem] = field(default_factory=list)  # records the plan would make invalid

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for p in self.planned:
            counts[p.action] += 1
        return dict(counts)


def _item(key: str, title: str | None, ids: dict[str, str | None], titles: Sequence[str]) -> Item:
    return Item(key, title, {k: v for k, v in ids.items() if v}, list(titles))


def plan_import(
    results: Sequence[ParseResult], papers: Path, excluded: Excluded | None = None
) -> Plan:
    """Decide, for every entry of `results`, whether it makes a new record, merges into an
    existing one or is skipped; compute the new file texts; write nothing."""
    plan = Plan()
    excluded = excluded or Excluded()
    formats = {r.source: r.format for r in results}
    records: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}
    try:
        listed = record_paths(papers)
    except RecordError as exc:  # papers/ cannot be listed: say so, plan nothing
        plan.invalid.extend(exc.problems)
        return plan
    for path in listed:
        try:
            paper = load_record(path)
        except RecordError as exc:
            plan.invalid.extend(exc.problems)
            continue
        records.append(paper.model_dump(mode="json", exclude_defaults=True))
        paths[paper.id] = path
    if plan.invalid:
        return plan  # papers/ must be valid before anything is merged into it
    entries: list[Entry] = []
    for result in results:
        plan.unparsed += [(result.source, u) for u in result.unparsed]
        plan.skipped += [(result.source, u) for u in result.skipped]
        for entry in result.entries:
            reason = excluded.reason(entry)
            if reason:
                plan.planned.append(Planned(entry, "skip", None, [f"excluded: {reason}"]))
            else:
                entries.append(entry)
    items = [
        _item(r["id"], r["title"], {k: r.get(k) for k in ID_KINDS}, r.get("aliases", []))
        for r in records
    ] + [
        _item(f"{e.source}:{e.line}", e.title, {k: getattr(e, k) for k in ID_KINDS}, [])
        for e in entries
    ]
    groups = find_duplicates(items)
    plan.conflicts = groups.conflicts
    conflicted = {key for c in groups.conflicts for key in c.keys}
    taken = set(paths)
    code_groups: dict[str, set[int]] = defaultdict(set)
    for number, group in enumerate(groups.groups):
        for index in group:
            if index >= len(records) and entries[index - len(records)].code:
                code_groups[entries[index - len(records)].code or ""].add(number)
    shared = {code for code, owners in code_groups.items() if len(owners) > 1}
    vacated: set[tuple[str, int]] = set()  # cited lines whose entry moved elsewhere in its list
    pending: list[list[Entry]] = []  # groups of entries that match no record
    for group in groups.groups:
        group_records = [records[i] for i in group if i < len(records)]
        group_entries = [entries[i - len(records)] for i in group if i >= len(records)]
        if not group_entries:
            continue
        for e in group_entries:
            if e.code in shared:
                e.problems.append(
                    f"the code link {e.code} is given for unrelated works too; not used"
                )
                e.code = None
        clashing = [e for e in group_entries if f"{e.source}:{e.line}" in conflicted]
        if clashing:
            for e in group_entries:
                plan.planned.append(
                    Planned(e, "skip", None, ["in a conflict (see conflicts): resolve it by hand"])
                )
            continue
        if len(group_records) > 1:
            ids = ", ".join(r["id"] for r in group_records)
            for e in group_entries:
                plan.planned.append(
                    Planned(e, "skip", None, [f"matches several records ({ids}): run kb dedupe"])
                )
            continue
        if group_records:
            vacated |= _plan_merge(group_records[0], group_entries, paths, formats, plan)
            continue
        pending.append(group_entries)
    # Entries that match no record by identifier or title, but sit where a record cites this
    # list: a curator may have retitled the record beyond recognition. The citation counts only
    # when the entry agrees with that record (compatible title, no contradicting id) and the
    # line was not just vacated by an entry that moved: a line number alone names whatever entry
    # sits there today.
    cited_at = {(s["source"], s.get("line")): r for r in records for s in r.get("sources", [])}
    for group_entries in pending:
        owned = []
        for e in group_entries:
            owner = cited_at.get((e.source, e.line))
            if owner is not None and (e.source, e.line) not in vacated and _agrees(e, owner):
                plan.planned.append(Planned(e, "skip", owner["id"], ["already imported"]))
                owned.append(e)
        group_entries = [e for e in group_entries if e not in owned]
        if not group_entries:
            continue
        if any(e.title for e in group_entries):
            _plan_new(group_entries, papers, formats, taken, plan)
        else:
            for e in group_entries:
                plan.planned.append(
                    Planned(e, "skip", None, ["no title, and no other entry or record names it"])
                )
    plan.planned.sort(key=lambda p: (p.entry.source, p.entry.line))
    return plan


def _cited_state(
    record: dict[str, Any], entries: list[Entry]
) -> tuple[list[Entry], list[Entry], list[tuple[int, Entry]]]:
    """Which of a record's matching entries it already cites, which are new to it, and which
    moved: provenance is keyed by (list, work), not by line alone, so that a list edited above an
    entry (a line inserted, a section moved) re-imports as the same entries. An entry is already
    cited when the record cites its list at its line; otherwise, when the record cites the same
    list at a line no matching entry occupies any more, the entry moved there from that line."""
    cited: dict[str, list[int]] = defaultdict(list)
    for source in record.get("sources", []):
        if source.get("line") is not None:
            cited[source["source"]].append(int(source["line"]))
    already: list[Entry] = []
    fresh: list[Entry] = []
    moved: list[tuple[int, Entry]] = []
    by_source: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_source[e.source].append(e)
    for source, group in by_source.items():
        lines = set(cited.get(source, []))
        here = {e.line for e in group}
        free = sorted(lines - here)  # cited lines whose entry is no longer there
        for e in sorted(group, key=lambda e: e.line):
            if e.line in lines:
                already.append(e)
            elif free:
                moved.append((free.pop(0), e))
            else:
                fresh.append(e)
    return already, fresh, moved


def _agrees(entry: Entry, record: dict[str, Any]) -> bool:
    """Could `entry` be a mention of `record`: no identifier of the same kind differs, and its
    title is compatible with the record's title or one of its aliases."""
    for kind in ID_KINDS:
        value = getattr(entry, kind)
        if value and record.get(kind) and str(record[kind]).lower() != value.lower():
            return False
    if not entry.title:
        return False
    return any(
        titles_compatible(entry.title, name)
        for name in [record["title"], *record.get("aliases", [])]
    )


def _shares_id(entry: Entry, record: dict[str, Any]) -> bool:
    return any(
        getattr(entry, kind) and str(record.get(kind) or "").lower() == getattr(entry, kind).lower()
        for kind in ID_KINDS
    )


def _plan_merge(
    record: dict[str, Any],
    entries: list[Entry],
    paths: dict[str, Path],
    formats: dict[str, str],
    plan: Plan,
) -> set[tuple[str, int]]:
    """Plan the entries that match `record`; returns the cited lines their entries moved from."""
    path = paths[record["id"]]
    already, fresh, moved = _cited_state(record, entries)
    vacated = {(e.source, line) for line, e in moved}
    by_id = [e for e in fresh if _shares_id(e, record)]
    title_only = [e for e in fresh if not _shares_id(e, record)]
    merged, problems = merge.merge_into(record, by_id, formats, title_only, moved)
    for e in already:
        plan.planned.append(Planned(e, "skip", record["id"], ["already imported"]))
    for old_line, e in moved:
        note = f"already imported from line {old_line}; its citation now says line {e.line}"
        plan.planned.append(Planned(e, "merge", record["id"], [note]))
    for e in fresh:
        prefix = f"{e.source}:{e.line} "  # the report names the entry already
        mine = [p.removeprefix(prefix) for p in problems if p.startswith(prefix)]
        plan.planned.append(Planned(e, "merge", record["id"], mine))
    if merged != merge.ordered_record(record):
        text = read_text(path)
        current = dump_record(Paper.model_validate(record))
        if text != current:
            for p in plan.planned[-len(entries) :]:
                if p.action == "skip":
                    continue
                p.problems.append(f"{path.name} is not in canonical form (kb fmt); merge by hand")
                p.action = "skip"
            return set()
        _stage(path, merged, plan)
    return vacated


def _plan_new(
    entries: list[Entry], papers: Path, formats: dict[str, str], taken: set[str], plan: Plan
) -> None:
    try:
        record, problems = merge.new_record(entries, formats, taken)
    except ValueError as exc:
        for e in entries:
            plan.planned.append(Planned(e, "skip", None, [str(exc)]))
        return
    taken.add(record["id"])
    for e in entries:
        plan.planned.append(Planned(e, "new", record["id"], list(problems)))
    _stage(papers / f"{record['id']}.yaml", record, plan)


def _stage(path: Path, record: dict[str, Any], plan: Plan) -> None:
    try:
        paper = Paper.model_validate(record, context={"stem": path.stem})
        text = dump_record(paper)
        check_record_text(text, path)  # what kb validate will say of the written file
    except RecordError as exc:
        plan.invalid.extend(exc.problems)
        return
    except ValidationError as exc:  # the plan made a bad record: say which field, from where
        where = ", ".join(f"{s['source']}:{s.get('line')}" for s in record.get("sources", []))
        for error in exc.errors(include_url=False):
            found = (
                error["ctx"]["problems"]
                if error["type"] == "record_rules"
                else [(error["loc"], error["msg"])]
            )
            for loc, text in found:
                field_name = ".".join(str(part) for part in loc) or "record"
                message = " ".join(str(text).split())
                plan.invalid.append(Problem(str(path), 1, f"from {where}: {field_name}: {message}"))
        return
    plan.files[path] = text
