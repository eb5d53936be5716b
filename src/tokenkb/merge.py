"""Turn the entries of one work into a record, or fill an existing record's gaps from them.

Rules:
- a new record takes each field from the entries, preferring sources whose format states it
  cleanly (awesome lists and BibTeX over structured blocks over free-text citations); when the
  entries disagree on a fact (venue, code, an id) the disagreement is reported;
- an existing record is curated: merging only fills fields it leaves empty, and reports every
  entry value that differs from a curated one instead of overwriting it;
- every entry used adds a `sources` item (list, line, the fields it gives), so each fact stays
  traceable; the importer decides which entries a record already cites (see `importer`), so
  imports are idempotent;
- an entry that matches a record by title alone (no shared identifier) is cited but copies
  nothing into it: what it would have given is reported for a curator to check.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .dedupe import title_words, titles_compatible
from .model import FIELD_NAMES, suggest_slug, venue_year
from .sources.entry import Entry
from .titles import title_key

FORMAT_RANK = {"awesome": 0, "bibtex": 0, "arxiv": 0, "structured": 1, "citations": 2}
ID_FIELDS = ("arxiv", "doi", "ieee", "openreview", "acl")
_VLM = r"vision[- ]language|multimodal llm|\bmllms?\b|\blvlms?\b|\bvlms?\b|llava"
_LANGUAGE = r"\bllms?\b|language model|\bbert\b|\bprompt|kv cache|\bcontext\b"
_MODALITY_WORDS = (
    (re.compile(_VLM, re.I), "vlm"),
    (re.compile(r"\bvideo", re.I), "video"),
    (re.compile(r"diffusion", re.I), "diffusion"),
    (re.compile(r"state space|\bmamba\b|\bssms?\b", re.I), "ssm"),
    (re.compile(r"\bspeech\b|\baudio\b", re.I), "audio"),
    (re.compile(r"vision transformer|\bvits?\b|\bimage\b|segmentation|detection", re.I), "vision"),
    (re.compile(_LANGUAGE, re.I), "language"),
)


def _rank(entry: Entry, formats: dict[str, str]) -> int:
    return FORMAT_RANK.get(formats.get(entry.source, "citations"), 2)


def _well_cased(title: str) -> bool:
    words = [w for w in title.split()[1:] if w[:1].isalpha()]
    return any(w[:1].isupper() for w in words) or len(words) < 3


def pick_title(entries: Sequence[Entry], formats: dict[str, str]) -> str | None:
    titled = [e for e in entries if e.title]
    if not titled:
        return None
    return min(
        titled,
        key=lambda e: (not _well_cased(e.title or ""), _rank(e, formats), e.source, e.line),
    ).title


def _majority(values: Iterable[str]) -> tuple[str | None, list[str]]:
    counts = Counter(values)
    if not counts:
        return None, []
    ordered = [v for v, _ in counts.most_common()]
    return ordered[0], ordered


def guess_modality(title: str) -> list[str]:
    for pattern, modality in _MODALITY_WORDS:
        if pattern.search(title):
            return [modality]
    return []


def suggest_id(title: str, aliases: Sequence[str], year: int, taken: set[str]) -> str:
    """`<shortname>-<year>`: a nickname, the title's part before ':' when short, or its first
    significant words; a letter is appended when the id is taken."""
    candidates = [a for a in aliases if len(a) <= 24]
    head = title.split(":", 1)[0] if ":" in title else ""
    if head and len(head.split()) <= 3:
        candidates.append(head)
    words = title_words(title_key(title))
    candidates.append(" ".join(words[:4]))
    base = suggest_slug(candidates[0]) or "work"
    base = re.sub(r"-(?:19|20)\d\d$", "", base)[:40].strip("-") or "work"
    # `<base>-<year>`, then `b`..`z` after the year; a list with more works of one name and year
    # than that (a fuzzed or hostile list) gets a number in the base: `<base>-2-<year>`.
    for number in itertools.count(1):
        stem = base if number == 1 else f"{base}-{number}"
        for letter in ["", *"bcdefghijklmnopqrstuvwxyz"]:
            slug = f"{stem}-{year}{letter}"
            if slug not in taken:
                return slug
    raise AssertionError("unreachable")  # itertools.count never ends


def new_record(
    entries: Sequence[Entry],
    formats: dict[str, str],
    taken: set[str],
    default_year: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A record (as a dict in field order) for one work seen in `entries`, and its problems.
    Without a year in the entries, `default_year` (a record being filled has one) is used; with
    neither, ValueError."""
    problems: list[str] = []
    ordered = sorted(entries, key=lambda e: (_rank(e, formats), e.source, e.line))
    title = pick_title(ordered, formats)
    assert title is not None, "a new work needs a titled entry"
    record: dict[str, Any] = {"title": title}
    ids: dict[str, str] = {}
    for name in ID_FIELDS:
        value, values = _majority(getattr(e, name) for e in ordered if getattr(e, name))
        if len(values) > 1:
            problems.append(f"the lists give different {name} ids: {', '.join(values)}")
        if value:
            ids[name] = value
    years = [e.year for e in ordered if e.year]
    if "arxiv" in ids and "." in ids["arxiv"]:
        years.append(2000 + int(ids["arxiv"][:2]))
    venues = [e.venue for e in ordered if e.venue and e.venue != "arXiv"]
    venue, all_venues = _majority(venues)
    if len(all_venues) > 1:
        problems.append(f"the lists give different venues: {', '.join(all_venues)}")
    if venue is None and "arxiv" in ids:
        venue = "arXiv"
    if venue_year(venue):
        years.append(venue_year(venue) or 0)
    year = min(years) if years else default_year
    if year is None:
        raise ValueError(f"no year for {title!r}")
    aliases: list[str] = []
    norm_title = title_key(title)
    for e in ordered:
        for alias in e.aliases:
            if title_key(alias) not in norm_title and alias not in aliases:
                aliases.append(alias)
        if (
            e.title
            and title_key(e.title) != norm_title
            and not titles_compatible(e.title, title)
            and e.title not in aliases
        ):
            aliases.append(e.title)
    authors = max((e.authors for e in ordered), key=len, default=[])  # first of the longest
    kinds = [e.kind for e in ordered if e.kind]
    kind = kinds[0] if kinds else "method"
    modality: list[str] = []
    family: list[str] = []
    for e in ordered:
        modality += [m for m in e.modality if m not in modality]
        family += [f for f in e.family if f not in family]
    if not modality:
        modality = guess_modality(" ".join([title, *aliases]))
    free = {e.training_free for e in ordered if e.training_free is not None}
    if len(free) > 1:
        problems.append("the lists disagree on training_free; left out")
    code, codes = _majority(e.code for e in ordered if e.code)
    if len(codes) > 1:
        problems.append(f"the lists give different code links: {', '.join(codes)}")
    # Links are kept only as https: rewriting a scheme would be guessing.
    project = next((e.project for e in ordered if (e.project or "").startswith("https://")), None)
    paper = f"https://arxiv.org/abs/{ids['arxiv']}" if "arxiv" in ids else None
    paper = paper or next(
        (e.paper for e in ordered if (e.paper or "").startswith("https://")), None
    )
    if code and not code.startswith("https://"):
        problems.append(f"the code link {code} is not https; left out")
        code = None
    record.update(
        aliases=aliases,
        authors=list(authors),
        year=year,
        venue=venue,
        kind=kind,
        modality=modality,
        family=family if kind == "method" else [],
        training_free=(free.pop() if len(free) == 1 and kind == "method" else None),
        **ids,
        paper=paper,
        code=code,
        project=project,
    )
    record["id"] = suggest_id(title, aliases, year, taken)
    record["sources"] = [source_item(e) for e in ordered]
    return ordered_record(record), problems


def source_item(entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {"source": entry.source, "line": entry.line}
    fields = entry.fields_given()
    if entry.modality:
        fields.append("modality")
    if entry.family:
        fields.append("family")
    if entry.training_free is not None:
        fields.append("training_free")
    if fields:
        item["fields"] = fields
    return item


def ordered_record(record: dict[str, Any]) -> dict[str, Any]:
    """Fields in model order, empty values left out."""
    return {
        name: record[name]
        for name in FIELD_NAMES
        if name in record and record[name] not in (None, [], "")
    }


FILLABLE = ("authors", "year", "venue", "arxiv", "doi", "ieee", "openreview", "acl", "paper",
            "code", "project")  # fmt: skip


def merge_into(
    record: dict[str, Any],
    entries: Sequence[Entry],
    formats: dict[str, str],
    title_only: Sequence[Entry] = (),
    moved: Sequence[tuple[int, Entry]] = (),
) -> tuple[dict[str, Any], list[str]]:
    """`record` with its empty fields filled from `entries` (never a curated value overwritten)
    and the disagreements found. `entries` are new to the record (the importer has already set
    aside those it cites). `title_only` entries matched the record by title alone: they are cited
    (the title is theirs) but give nothing else, since a title match is not proof enough to copy
    another work's identifiers, venue or code; what they would have given is reported. `moved`
    pairs a cited line with the entry now found elsewhere in the same list: the citation follows
    the entry."""
    problems: list[str] = []
    merged = dict(record)
    sources = [dict(s) for s in record.get("sources", [])]
    for old_line, e in moved:
        for source in sources:
            if source["source"] == e.source and source.get("line") == old_line:
                source["line"] = e.line
                break
    draft, _ = (
        new_record(entries, formats, {record["id"]}, record.get("year"))
        if any(e.title for e in entries)
        else ({}, [])
    )
    for e in entries:
        for name in ("arxiv", "doi", "ieee", "openreview", "acl", "code"):
            value = getattr(e, name)
            if value and merged.get(name) and value.lower() != str(merged[name]).lower():
                problems.append(
                    f"{e.source}:{e.line} gives {name} {value}, the record has {merged[name]}; "
                    "kept the record's"
                )
        if e.venue and e.venue != "arXiv" and merged.get("venue") not in (None, e.venue):
            problems.append(
                f"{e.source}:{e.line} gives venue {e.venue}, the record has {merged['venue']}; "
                "kept the record's"
            )
    for e in title_only:
        given = [
            f"{name} {getattr(e, name)}"
            for name in (*ID_FIELDS, "paper", "code", "project")
            if getattr(e, name)
        ]
        if e.venue and e.venue != "arXiv":
            given.append(f"venue {e.venue}")
        if given:
            problems.append(
                f"{e.source}:{e.line} matches {record['id']} by title only, so its "
                f"{'; '.join(given)} were not copied: check that they belong to this work and "
                "add them by hand"
            )
    for name in FILLABLE:
        if not merged.get(name) and draft.get(name):
            if name == "venue" and draft[name] == "arXiv" and merged.get("venue"):
                continue
            merged[name] = draft[name]
    if merged.get("arxiv") and not merged.get("paper"):
        merged["paper"] = f"https://arxiv.org/abs/{merged['arxiv']}"
    sources += [source_item(e) for e in entries]
    sources += [{"source": e.source, "line": e.line, "fields": ["title"]} for e in title_only]
    merged["sources"] = sources
    return ordered_record(merged), problems
