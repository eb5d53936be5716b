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

from . import merge
from .dedupe import ID_KINDS, Conflict, Item, find_duplicates, normalize_title
from .model import Paper
from .problems import Problem, RecordError
from .sources import bib, citations, markdown, structured
from .sources.entry import Entry, ParseResult, Unparsed
from .sources.links import repair
from .store import dump_record, load_record, parse_record, read_text, record_paths

READERS = {
    "awesome": markdown,
    "structured": structured,
    "citations": citations,
    "bibtex": bib,
}
FORMATS = tuple(READERS)


class ImportError_(Exception):
    """A source that cannot be imported at all (unreadable, unknown format)."""


def detect_format(text: str, path: Path) -> str:
    if path.suffix.lower() == ".bib" or bib.looks_like_bibtex(text):
        return "bibtex"
    if structured.looks_like_structured(text):
        return "structured"
    if markdown.looks_like_awesome(text):
        return "awesome"
    if citations.looks_like_citations(text):
        return "citations"
    raise ImportError_(
        f"{path}: cannot tell the format (awesome-list markdown, numbered blocks, citation list "
        "or BibTeX); name it with --as"
    )


def read_source(path: Path, as_format: str | None = None) -> ParseResult:
    """Entries and unparsed lines of one source file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        text = raw.decode("cp1252", errors="replace")
    text = repair(text)
    kind = as_format or detect_format(text, path)
    return READERS[kind].parse(text, path.stem)  # type: ignore[no-any-return]


@dataclass
class Excluded:
    """Works a curator decided are not token-reduction works (or not works at all)."""

    by_arxiv: dict[str, str] = field(default_factory=dict)
    by_title: dict[str, str] = field(default_factory=dict)
    by_place: dict[tuple[str, int], str] = field(default_factory=dict)

    def reason(self, entry: Entry) -> str | None:
        if entry.arxiv and entry.arxiv in self.by_arxiv:
            return self.by_arxiv[entry.arxiv]
        if entry.title and normalize_title(entry.title) in self.by_title:
            return self.by_title[normalize_title(entry.title)]
        return self.by_place.get((entry.source, entry.line))


def load_excluded(path: Path) -> Excluded:
    excluded = Excluded()
    if not path.exists():
        return excluded
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    for item in data:
        reason = str(item.get("reason", "excluded by a curator"))
        if item.get("arxiv"):
            excluded.by_arxiv[str(item["arxiv"])] = reason
        if item.get("title"):
            excluded.by_title[normalize_title(str(item["title"]))] = reason
        for place in item.get("places", []):
            source, _, line = str(place).rpartition(":")
            excluded.by_place[(source, int(line))] = reason
    return excluded


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
    for path in record_paths(papers):
        try:
            paper = load_record(path)
        except RecordError as exc:
            plan.invalid.extend(exc.problems)
            continue
        records.append(paper.model_dump(mode="json", exclude_defaults=True))
        paths[paper.id] = path
    if plan.invalid:
        return plan  # papers/ must be valid before anything is merged into it
    cited = {(s["source"], s.get("line")): r["id"] for r in records for s in r.get("sources", [])}
    entries: list[Entry] = []
    for result in results:
        plan.unparsed += [(result.source, u) for u in result.unparsed]
        plan.skipped += [(result.source, u) for u in result.skipped]
        for entry in result.entries:
            reason = excluded.reason(entry)
            owner = cited.get((entry.source, entry.line))
            if owner is not None:  # a curator may have retitled it beyond recognition
                plan.planned.append(Planned(entry, "skip", owner, ["already imported"]))
            elif reason:
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
            _plan_merge(group_records[0], group_entries, paths, formats, plan)
        elif any(e.title for e in group_entries):
            _plan_new(group_entries, papers, formats, taken, plan)
        else:
            for e in group_entries:
                plan.planned.append(
                    Planned(e, "skip", None, ["no title, and no other entry or record names it"])
                )
    plan.planned.sort(key=lambda p: (p.entry.source, p.entry.line))
    return plan


def _plan_merge(
    record: dict[str, Any],
    entries: list[Entry],
    paths: dict[str, Path],
    formats: dict[str, str],
    plan: Plan,
) -> None:
    path = paths[record["id"]]
    merged, problems, fresh = merge.merge_into(record, entries, formats)
    fresh_keys = {(e.source, e.line) for e in fresh}
    for e in entries:
        if (e.source, e.line) in fresh_keys:
            plan.planned.append(Planned(e, "merge", record["id"], list(problems)))
        else:
            plan.planned.append(Planned(e, "skip", record["id"], ["already imported"]))
    if merged != merge.ordered_record(record):
        text = read_text(path)
        current = dump_record(Paper.model_validate(record))
        if text != current:
            for p in plan.planned[-len(entries) :]:
                p.problems.append(f"{path.name} is not in canonical form (kb fmt); merge by hand")
                p.action = "skip"
            return
        _stage(path, merged, plan)


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
        parse_record(text, str(path), stem=path.stem)
    except RecordError as exc:
        plan.invalid.extend(exc.problems)
        return
    except Exception as exc:  # a pydantic ValidationError: the plan made a bad record
        where = ", ".join(f"{s['source']}:{s.get('line')}" for s in record.get("sources", []))
        message = " ".join(str(exc).split())
        plan.invalid.append(Problem(str(path), 1, f"from {where}: {message}"))
        return
    plan.files[path] = text
