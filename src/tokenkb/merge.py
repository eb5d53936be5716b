"""Turn the entries of one work into a record, or fill an existing record's gaps from them.

Rules:
- a new record takes each field from the entries, preferring sources whose format states it
  cleanly (awesome lists and BibTeX over structured blocks over free-text citations); when the
  entries disagree on a fact (venue, code, an id) the disagreement is reported;
- an existing record is curated: merging only fills fields it leaves empty, and reports every
  entry value that differs from a curated one instead of overwriting it;
- every entry used adds a `sources` item (list, line, the fields it gives), so each fact stays
  traceable; an entry already cited by (source, line) adds nothing (imports are idempotent).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .dedupe import normalize_title, title_words, titles_compatible
from .model import FIELD_NAMES, suggest_slug, venue_year
from .sources.entry import Entry

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
    words = title_words(normalize_title(title))
    candidates.append(" ".join(words[:4]))
    base = suggest_slug(candidates[0]) or "work"
    base = re.sub(r"-(?:19|20)\d\d$", "", base)[:40].strip("-") or "work"
    slug = f"{base}-{year}"
    suffix = iter("bcdefghijklmnopqrstuvwxyz")
    while slug in taken:
        slug = f"{base}-{year}{next(suffix)}"
    return slug


def new_record(
    entries: Sequence[Entry], formats: dict[str, str], taken: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """A record (as a dict in field order) for one work seen in `entries`, and its problems."""
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
    year = min(years) if years else None
    if year is None:
        raise ValueError(f"no year for {title!r}")
    aliases: list[str] = []
    norm_title = normalize_title(title)
    for e in ordered:
        for alias in e.aliases:
            if normalize_title(alias) not in norm_title and alias not in aliases:
                aliases.append(alias)
        if (
            e.title
            and normalize_title(e.title) != norm_title
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
    record: dict[str, Any], entries: Sequence[Entry], formats: dict[str, str]
) -> tuple[dict[str, Any], list[str], list[Entry]]:
    """`record` with its empty fields filled from `entries` (never a curated value overwritten),
    the disagreements found, and the entries that were new (not yet cited in `sources`)."""
    cited = {(s["source"], s.get("line")) for s in record.get("sources", [])}
    fresh = [e for e in entries if (e.source, e.line) not in cited]
    problems: list[str] = []
    merged = dict(record)
    if not fresh:
        return merged, problems, fresh
    draft, _ = (
        new_record(fresh, formats, {record["id"]}) if any(e.title for e in fresh) else ({}, [])
    )
    for e in fresh:
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
    for name in FILLABLE:
        if not merged.get(name) and draft.get(name):
            if name == "venue" and draft[name] == "arXiv" and merged.get("venue"):
                continue
            merged[name] = draft[name]
    if merged.get("arxiv") and not merged.get("paper"):
        merged["paper"] = f"https://arxiv.org/abs/{merged['arxiv']}"
    merged["sources"] = [*record.get("sources", []), *(source_item(e) for e in fresh)]
    return ordered_record(merged), problems, fresh
