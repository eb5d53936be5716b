"""Awesome-list markdown: the bullet dialects of the source lists.

Three dialects are read, detected per bullet:

- `venue-first`: `* [ECCV 2024] Title [[Paper](url)][[Code](url)]`;
- `link-title`: `- <arXiv shield> [Title](url) .[Nick;Venue;[GitHub](url)]` (the title may
  wrap onto the next line);
- `numbered-bold`: `- **[N] Title**, Venue Year.` then an italic author line, a
  `[[Paper](url)]` link and shields.io tag badges, over several lines.

Headings give section hints (modality, family). A bullet that matches no dialect is reported as
unparsed with its line; one that has no link to a paper is reported as not a work.
"""

from __future__ import annotations

import re

from .entry import Entry, ParseResult, Unparsed
from .hints import read_tag, read_venue
from .links import author_name, clean_title, read_link, repair

_BULLET = re.compile(r"^\s{0,3}[*\-+]\s+")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# A markdown link whose text may hold one level of brackets ("[CLS] Attention is ...").
_LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(https?://[^)\s]+)\s*\)")
_SHIELD_ARXIV = re.compile(r"img\.shields\.io/badge/arXiv-([0-9]{4}\.[0-9]{4,5})", re.I)
_BADGE = re.compile(r"!\[[^\]]*\]\(https://img\.shields\.io/badge/([^)]*?)(?:-[a-z]+)?\)")
_IMG = re.compile(r"<img\b[^>]*>", re.I)
_HTML = re.compile(r"</?[a-z][^>]*>", re.I)
_ORGS = {"apple", "deepmind", "google", "meta", "nvidia", "microsoft", "openai", "amazon"}
_NOT_NICKNAMES = {"video", "image", "github", "code", "paper"}


def looks_like_awesome(text: str) -> bool:
    bullets = [line for line in text.splitlines() if _BULLET.match(line)]
    linked = [line for line in bullets if _LINK.search(line) or "**[" in line]
    return len(bullets) >= 1 and len(linked) >= len(bullets) / 3


def parse(text: str, source: str) -> ParseResult:
    result = ParseResult(source=source, format="awesome")
    lines = text.splitlines()
    sections: dict[int, str] = {}
    item: list[tuple[int, str]] = []

    def flush() -> None:
        if item:
            _read_item(item, dict(sections), result)
            item.clear()

    for number, raw in enumerate(lines, start=1):
        line = repair(raw)
        heading = _HEADING.match(line)
        if heading:
            flush()
            level = len(heading.group(1))
            sections = {k: v for k, v in sections.items() if k < level}
            sections[level] = _HTML.sub("", heading.group(2)).strip()
            continue
        if _BULLET.match(line):
            flush()
            item.append((number, line))
        elif item:
            if line.strip() and not line.startswith((" ", "\t")) and not _continues(item, line):
                flush()  # prose after a list ends the bullet; prose is not a work
                continue
            item.append((number, line))
    flush()
    return result


def _continues(item: list[tuple[int, str]], line: str) -> bool:
    """A non-indented line continues a bullet whose link text is still open (a wrapped title)."""
    text = " ".join(part for _, part in item)
    return text.count("[") > text.count("]") or bool(_LINK.search(line))


def _read_item(item: list[tuple[int, str]], sections: dict[int, str], result: ParseResult) -> None:
    first = item[0][0]
    raw = " ".join(part.strip() for _, part in item if part.strip())
    body = _BULLET.sub("", raw, count=1)
    entry = Entry(source=result.source, line=first, text=raw)
    for heading in sections.values():
        modality, family, _ = read_tag(heading)
        if modality and modality not in entry.modality:
            entry.modality.append(modality)
        if family and family not in entry.family:
            entry.family.append(family)
    entry.section = " / ".join(sections.values()) or None
    if body.startswith("**["):
        ok = _numbered_bold(body, entry)
    elif re.match(r"^\[[^\]]*\]\s*[^(\[]", body):
        ok = _venue_first(body, entry)
    elif _LINK.search(body):
        ok = _link_title(body, entry)
    else:
        ok = False
    if not ok:
        if _LINK.search(body) or "http" in body:
            result.unparsed.append(Unparsed(first, raw, "no title could be read from this bullet"))
        else:
            result.skipped.append(Unparsed(first, raw, "a bullet without a link: not a work"))
        return
    result.entries.append(entry)


def _apply_link(entry: Entry, url: str, role: str) -> None:
    link = read_link(url)
    if role == "code":
        if link.code:
            entry.code = link.code
        else:
            entry.project = link.project or link.paper or url
            entry.problems.append(
                f"the code link {url} is not a code repository (a project page?); kept as project"
            )
        return
    for name in ("arxiv", "doi", "ieee", "openreview", "acl"):
        value = getattr(link, name)
        if value and getattr(entry, name) is None:
            setattr(entry, name, value)
    if link.code and role == "paper":
        entry.problems.append(f"the paper link {url} points at a code repository")
        entry.code = entry.code or link.code
    elif link.paper and entry.paper is None:
        entry.paper = link.paper
    elif link.project and entry.project is None:
        entry.project = link.project


def _venue_first(body: str, entry: Entry) -> bool:
    match = re.match(r"^\[(?P<venue>[^\]]*)\]\s*(?P<rest>.*)$", body)
    if not match:
        return False
    entry.venue_text = match.group("venue").strip()
    entry.venue = read_venue(entry.venue_text)
    heading_year = _heading_year(entry.section)
    if entry.venue is None and heading_year and not re.search(r"\d{4}", entry.venue_text):
        entry.venue = read_venue(f"{entry.venue_text} {heading_year}")
    _venue_year_hint(entry)
    if entry.venue_text and entry.venue is None:
        entry.problems.append(f"venue {entry.venue_text!r} is not one tokenkb knows")
    rest = match.group("rest")
    cut = rest.find("[[")
    title = rest if cut < 0 else rest[:cut]
    for label, url in re.findall(r"\[\[([^\]]+)\]\((https?://[^)\s]+)\)\]", rest):
        _apply_link(entry, url, "code" if label.strip().lower() == "code" else "paper")
    if re.match(r"^\s*https?://", title):
        entry.problems.append(
            f"the title is a URL ({title.strip()}), not a title; the entry is matched by its "
            "identifiers only and its code link is not trusted"
        )
        return entry.fields_given() != []
    entry.title = clean_title(title) or None
    return entry.title is not None


def _heading_year(section: str | None) -> int | None:
    years = re.findall(r"\b((?:19|20)\d\d)\b", section or "")
    return int(years[-1]) if years else None


def _venue_year_hint(entry: Entry) -> None:
    """'arXiv 2024' says the work was public in 2024."""
    if entry.venue == "arXiv" and entry.venue_text:
        year = re.search(r"(?:19|20)\d\d", entry.venue_text)
        if year:
            entry.year = int(year.group())


def _link_title(body: str, entry: Entry) -> bool:
    shield = _SHIELD_ARXIV.search(body)
    body = _IMG.sub(" ", body)
    match = _LINK.search(body)
    if not match:
        return False
    entry.title = clean_title(_HTML.sub("", match.group(1)))
    _apply_link(entry, match.group(2), "paper")
    if shield:
        if entry.arxiv and entry.arxiv != shield.group(1):
            entry.problems.append(
                f"the arXiv badge says {shield.group(1)} but the link says {entry.arxiv}"
            )
        entry.arxiv = entry.arxiv or shield.group(1)
    tail = body[match.end() :]
    for label, url in _LINK.findall(tail):
        if label.strip().lower() in ("github", "code"):
            _apply_link(entry, url, "code")
    tail = _LINK.sub(" ", tail)
    tail = _HTML.sub("", tail)
    tokens = [t.strip(" .[]") for t in re.split(r"[;\[\]]|:\s", tail)]
    for position, token in enumerate(t for t in tokens if t):
        venue = read_venue(token) if re.search(r"(?:19|20)\d\d", token) else None
        modality, _family, _ = read_tag(token)
        if venue:
            entry.venue = entry.venue or venue
            entry.venue_text = token
        elif modality:
            if modality not in entry.modality:
                entry.modality.append(modality)
        elif token.lower() in _ORGS or token.lower() in _NOT_NICKNAMES:
            continue
        elif _is_nickname(token, entry.title, first=position == 0):
            if token not in entry.aliases:
                entry.aliases.append(token)
        else:
            entry.problems.append(f"tag {token!r} was not read (not a nickname, venue or modality)")
    return bool(entry.title)


def _is_nickname(token: str, title: str | None, *, first: bool) -> bool:
    """A short name with capitals inside (`FastV`, `LLaVA-PruMerge`, `M3`), or the title's own
    prefix before its colon."""
    if len(token) > 40 or token.count(" ") > 2:
        return False
    if title and title.lower().startswith(token.lower() + ":"):
        return True
    compact = token.replace(" ", "")
    return bool(re.search(r"[A-Z0-9]", compact[1:])) and (first or " " not in token)


def _numbered_bold(body: str, entry: Entry) -> bool:
    match = re.match(r"^\*\*\[(?P<n>\d+)\]\s*(?P<title>.+?)\*\*\s*,?\s*(?P<venue>[^*\[]*)", body)
    if not match:
        return False
    entry.title = clean_title(match.group("title"))
    venue_text = match.group("venue").strip(" .")
    if venue_text:
        entry.venue_text = venue_text
        entry.venue = read_venue(venue_text)
        if entry.venue is None:
            entry.problems.append(f"venue {venue_text!r} is not one tokenkb knows")
        _venue_year_hint(entry)
    authors = re.search(r"(?<!\*)\*(?!\*)([^*]+?)\.?\*(?!\*)", body[match.end() :])
    if authors:
        entry.authors = [author_name(a) for a in re.split(r"\s+and\s+", authors.group(1))]
        entry.authors = [a for a in entry.authors if a and a.lower() != "others"]
    for label, url in re.findall(r"\[\[([^\]]+)\]\((https?://[^)\s]+)\)\]", body):
        _apply_link(entry, url, "code" if label.strip().lower() == "code" else "paper")
    for badge in _BADGE.findall(body):
        tag = badge.replace("_", " ")
        modality, family, training_free = read_tag(tag)
        if modality and modality not in entry.modality:
            entry.modality.append(modality)
        if family and family not in entry.family:
            entry.family.append(family)
        if training_free is not None:
            entry.training_free = training_free
        if (
            not (modality or family or training_free is not None)
            and entry.title.lower().startswith(tag.lower() + ":")
            and tag not in entry.aliases
        ):
            entry.aliases.append(tag)
    return bool(entry.title)
