"""Structured lists: numbered blocks `N. Title` followed by `Field: value` lines.

The fields read are `Authors`, `Venue`, `Model type` and `ArXiv`; prose fields (`Core method`,
`Key innovation`, `Benchmarks`) are kept out of records (they are the list's own sentences) but
are counted to find broken blocks. A field that repeats inside a block means a header line is
missing and a second work's fields run into the first: the block is split at the repeat, and the
headless part is reported with its line and any arXiv id it carries, never merged into the first.
`Category N: ...` lines give a section hint.
"""

from __future__ import annotations

import re

from .entry import Entry, ParseResult, Unparsed
from .hints import read_tag, read_venue
from .links import author_name, clean_title, repair

_HEADER = re.compile(r"^\s*(\d{1,4})\.\s+(\S.*)$")
_FIELD = re.compile(r"^\s*([A-Z][A-Za-z ]{1,30}?)\s*:\s*(.*)$")
_CATEGORY = re.compile(r"^\s*Category\s+\d+\s*:\s*(.+)$", re.I)
KNOWN_FIELDS = {
    "authors",
    "venue",
    "model type",
    "core method",
    "key innovation",
    "benchmarks",
    "arxiv",
}
# Model types and categories that imply a modality. Categories are not read as families: a
# "KV Cache Compression/Pruning" category holds eviction, quantization and merging alike.
_MODEL_TYPES = (
    ("vision-language", "vlm"),
    ("vision language", "vlm"),
    ("vlm", "vlm"),
    ("llava", "vlm"),
    ("video", "video"),
    ("diffusion", "diffusion"),
    ("ssm", "ssm"),
    ("state space", "ssm"),
    ("mamba", "ssm"),
    ("vit", "vision"),
    ("vision", "vision"),
    ("llm", "language"),
    ("bert", "language"),
    ("language", "language"),
    ("nlp", "language"),
)
_CATEGORY_FAMILIES = (("prompt compression", "prompt-compression"),)


def looks_like_structured(text: str) -> bool:
    lines = text.splitlines()
    headers = sum(1 for line in lines if _HEADER.match(line))
    fields = sum(
        1
        for line in lines
        if (m := _FIELD.match(line)) and m.group(1).strip().lower() in KNOWN_FIELDS
    )
    return headers >= 2 and fields >= 2 * headers


def parse(text: str, source: str) -> ParseResult:
    result = ParseResult(source=source, format="structured")
    category: str | None = None
    block: list[tuple[int, str, str]] = []  # (line, field, value); field "" for the header
    for number, raw in enumerate(text.splitlines(), start=1):
        line = repair(raw)
        if not line.strip():
            continue
        cat = _CATEGORY.match(line)
        header = _HEADER.match(line)
        field = _FIELD.match(line)
        if cat:
            _flush(block, category, result)
            block = []
            category = cat.group(1).strip()
        elif header and not (field and field.group(1).strip().lower() in KNOWN_FIELDS):
            _flush(block, category, result)
            block = [(number, "", header.group(2))]
        elif field and field.group(1).strip().lower() in KNOWN_FIELDS:
            block.append((number, field.group(1).strip().lower(), field.group(2).strip()))
        else:
            _flush(block, category, result)
            block = []
            result.unparsed.append(
                Unparsed(
                    number, line, "neither a numbered title, a 'Field: value' line nor a category"
                )
            )
    _flush(block, category, result)
    return result


def _flush(block: list[tuple[int, str, str]], category: str | None, result: ParseResult) -> None:
    if not block:
        return
    parts: list[list[tuple[int, str, str]]] = [[]]
    seen: set[str] = set()
    for item in block:
        _, name, _ = item
        if name and name in seen:
            parts.append([])
            seen = set()
        seen.add(name)
        parts[-1].append(item)
    for index, part in enumerate(parts):
        if part[0][1] != "":
            arxiv = next((value for _, name, value in part if name == "arxiv"), None)
            repeated = part[0][1]
            result.unparsed.append(
                Unparsed(
                    part[0][0],
                    " | ".join(f"{name}: {value}" for _, name, value in part),
                    (
                        f"field {repeated!r} repeats inside the block above (line {block[0][0]}): "
                        "a header line is missing, so these fields belong to another, unnamed "
                        f"work{f' (arXiv {arxiv})' if arxiv else ''}; they were not merged"
                    ),
                )
            )
            continue
        entry = _entry(part, category, result.source)
        if len(parts) > 1 and index == 0:
            entry.problems.append(
                "the block's fields repeat: a missing header ran another work into it; only the "
                "fields before the repeat were read"
            )
        result.entries.append(entry)


def _entry(part: list[tuple[int, str, str]], category: str | None, source: str) -> Entry:
    line, _, header = part[0]
    entry = Entry(source=source, line=line, text=header, section=category)
    title = header
    nick = re.search(r"\s*\(([^()]{2,30})\)", title)
    if nick and not re.search(r"\s", nick.group(1).strip()):
        entry.aliases.append(nick.group(1).strip())
        title = title[: nick.start()] + title[nick.end() :]
    entry.title = clean_title(title)
    for _, name, value in part[1:]:
        if name == "authors":
            if re.search(r"\bet al\b|\(various\)|^various", value, re.I):
                entry.problems.append(f"authors {value!r} is not a full author list; not used")
            else:
                value = re.sub(r"\s*\([^)]*\)\s*$", "", value)
                entry.authors = [author_name(a) for a in re.split(r",\s*|\s+and\s+", value) if a]
        elif name == "venue":
            entry.venue_text = value
            entry.venue = read_venue(value)
            if entry.venue is None:
                entry.problems.append(f"venue {value!r} is not one tokenkb knows")
        elif name == "model type":
            lowered = value.lower()
            for word, modality in _MODEL_TYPES:
                if word in lowered and modality not in entry.modality:
                    entry.modality.append(modality)
                    break
        elif name == "arxiv":
            entry.arxiv = _arxiv(value, entry)
    for word, family in _CATEGORY_FAMILIES:
        if category and word in category.lower() and family not in entry.family:
            entry.family.append(family)
    if category:
        hint = read_tag(category)[0]
        for word, hinted in _MODEL_TYPES:
            if word in category.lower():
                hint = hint or hinted
                break
        if hint and not entry.modality:
            entry.modality.append(hint)
    return entry


def _arxiv(value: str, entry: Entry) -> str | None:
    from ..model import normalize_arxiv

    found = normalize_arxiv(value)
    if found is None:
        entry.problems.append(f"ArXiv {value!r} is not an arXiv id")
    return found
