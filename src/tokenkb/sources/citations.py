"""Free-text citation lists: `- Authors, date, Title, URL, Code: URL (comment)` in many styles.

A bullet is read by taking its links out, dropping the trailing `(comment)`, and splitting the
rest into segments at `, `, `. ` and `; `. Each segment is classed as names, a date, venue text
or other; the title is the first run of "other" segments after the leading names and date (in
the `Title, Authors, date` style it is the leading run). A quoted `"Title"` wins over all of
that. Lines that are not bullets are headings and prose: a heading gives the section hint.
Bullets with no link and no date are not works (taxonomy items, navigation) and are reported as
skipped; a bullet whose title cannot be found is reported as unparsed.
"""

from __future__ import annotations

import re

from .entry import Entry, ParseResult, Unparsed
from .hints import date_year, read_tag, read_venue
from .links import author_name, clean_title, find_urls, read_link, repair

_BULLET = re.compile(r"^\s{0,3}[-*•]\s+")
_QUOTED = re.compile(r"[\"“]([^\"”]{8,}?)[,.]?[\"”]")
_LABEL = re.compile(r"\b(?:Code|PDF|Paper|Project|GitHub|DOI)\s*:\s*", re.I)
# Venue text: strong words mark a segment anywhere; weak ones only a short segment.
_VENUE_STRONG = re.compile(
    r"\b(?:arxiv|preprint|proceedings|conference|journal|transactions|symposium|"
    r"advances in neural|lncs|association for computational|findings of|towards data science|"
    r"ph\.?d\.? thesis|master.s thesis|pages \d|pp\b|vol\b|volume \d)",
    re.I,
)
_VENUE_WEAK = re.compile(
    r"^(?:in\s+)?(?:ieee|acm|springer|neurips|nips|icml|iclr|cvpr|iccv|eccv|emnlp|acl|naacl|"
    r"aaai|ijcai|wacv|medium|blog|university|school of|\d+\s*\(\d{4}\))",
    re.I,
)
_NAME = re.compile(
    r"^(?:and\s+|&\s*)?(?:[A-Z][\w'\u2019\-\.]*\.?|[A-Z]{1,3}|[a-z]{1,3}|[A-Z]\.(?:-?[A-Z]\.)*)"
    r"(?:\s+(?:[A-Z][\w'\u2019\-\.]*\.?|[A-Z]{1,3}|"
    r"van|von|de|der|den|del|da|di|le|la|du|bin|et al\.?))"
    r"{0,4}(?:\s+et al\.?)?$"
)
_KINDS = (
    ("survey", re.compile(r"\bsurvey\b|\breview\b", re.I)),
    ("thesis", re.compile(r"\bph\.?d\.? thesis\b|\bmaster'?s thesis\b|\bthesis\b", re.I)),
)
_BLOG_HOSTS = ("medium.com", "towardsdatascience.com", "techcrunch.com", "amazon.com", "blog")
_FUNCTION_WORDS = {
    "for", "of", "the", "a", "an", "via", "with", "in", "on", "to", "and", "by", "from", "is",
    "are", "what", "how", "towards", "through", "using", "without", "all", "you", "your",
}  # fmt: skip


def looks_like_citations(text: str) -> bool:
    bullets = [line for line in text.splitlines() if _BULLET.match(line)]
    dated = [b for b in bullets if re.search(r"(?:19|20)\d\d", b) and "http" in b]
    return len(bullets) >= 1 and len(dated) >= len(bullets) / 3


def parse(text: str, source: str) -> ParseResult:
    result = ParseResult(source=source, format="citations")
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = repair(raw).strip()
        if not line:
            continue
        if not _BULLET.match(line):
            if len(line) <= 60 and not line.endswith(".") and not line.startswith("—"):
                section = line  # a heading: short, no full stop
            continue
        body = _BULLET.sub("", line, count=1)
        entry = _read(body, source, number, section)
        if isinstance(entry, Unparsed):
            if entry.reason.startswith("not a work"):
                result.skipped.append(entry)
            else:
                result.unparsed.append(entry)
        else:
            result.entries.append(entry)
    return result


def _read(body: str, source: str, number: int, section: str | None) -> Entry | Unparsed:
    urls = find_urls(body)
    if not urls and not re.search(r"(?:19|20)\d\d", body):
        return Unparsed(number, body, "not a work: a bullet with no link and no date")
    entry = Entry(source=source, line=number, text=body, section=section)
    if section:
        modality, family, _ = read_tag(section)
        if modality:
            entry.modality.append(modality)
        if family:
            entry.family.append(family)
    code_urls = {
        m.group(1).rstrip(".,;")
        for m in re.finditer(r"\bCode\s*:\s*(https?:/{1,2}\S+)", body, re.I)
    }
    for url in urls:
        link = read_link(url)
        for name in ("arxiv", "doi", "ieee", "openreview", "acl"):
            if getattr(link, name) and getattr(entry, name) is None:
                setattr(entry, name, getattr(link, name))
        if link.code:
            entry.code = entry.code or link.code
        elif url in code_urls:
            entry.project = entry.project or url
            entry.problems.append(f"the code link {url} is not a code repository; kept as project")
        elif link.paper and entry.paper is None:
            entry.paper = link.paper
        elif link.project and entry.project is None and not link.arxiv:
            entry.project = link.project
    # Text without links, labels and the trailing comment.
    text = _LABEL.sub(" ", body)
    for url in sorted(urls, key=len, reverse=True):
        text = text.replace(url, " ")
    text = re.sub(r"https?:/{1,2}\S*", " ", text)
    text = re.sub(r"\s*\((?:[^()]|\([^()]*\))*\)\s*$", "", text.strip(" ,."))
    text = re.sub(r"\barXiv:\s*\d{4}\.\d{4,5}(?:v\d+)?", "arXiv", text)
    text = re.sub(r"\bdoi:\s*\S+", " ", text, flags=re.I)
    quoted = _QUOTED.search(text)
    title, authors, year, venue_text = _split(text)
    if quoted:
        title = quoted.group(1)
    if not title:
        return Unparsed(number, body, "no title could be told apart from authors, date and venue")
    entry.title = clean_title(title)
    if authors and all(" " in a for a in authors):
        entry.authors = authors
    elif authors:
        entry.problems.append("the author list could not be read as full names; not used")
    entry.year = year
    if venue_text:
        venue = read_venue(venue_text)
        if venue and venue != "arXiv":
            entry.venue, entry.venue_text = venue, venue_text
    lowered = body.lower()
    for kind, pattern in _KINDS:
        if pattern.search(entry.title) or (kind == "thesis" and pattern.search(lowered)):
            entry.kind = kind
    if any(host in lowered for host in _BLOG_HOSTS) and not (entry.arxiv or entry.doi):
        entry.kind = "blog"
    if not (entry.arxiv or entry.doi or entry.ieee or entry.openreview or entry.acl):
        entry.problems.append("no paper identifier (arXiv, DOI, IEEE, OpenReview, ACL) given")
    return entry


_MONTH_DAY_YEAR = re.compile(
    r"\b([A-Z][a-z]{2,8})\.?\s+(\d{1,2}(?:-\d{1,2})?)(?:st|nd|rd|th)?\s*,\s*((?:19|20)\d\d)\b"
)


def _segments(text: str) -> list[str]:
    text = _MONTH_DAY_YEAR.sub(r"\2 \1 \3", text)  # "September 11, 2024" -> one segment
    text = re.sub(r"(?:^|(?<=, ))((?:19|20)\d\d)\s+(?=[A-Z])", r"\1, ", text)  # "2023 Title"
    parts = re.split(r",\s+|(?<![ .][A-Z])\.\s+(?=[A-Z0-9“\"]|arXiv|In\b)|;\s+|\s+-\s+", text)
    return [p.strip(" ,.") for p in parts if p.strip(" ,.")]


def _is_name(segment: str) -> bool:
    if len(segment) > 40 or ":" in segment:
        return False
    words = segment.replace("et al.", "").split()
    if any(w in _FUNCTION_WORDS - {"and"} for w in words):  # names are capitalised
        return False
    return bool(_NAME.match(segment))


def _split(text: str) -> tuple[str | None, list[str], int | None, str | None]:
    """(title, authors, year, venue text) of a citation without its links."""
    segments = _segments(text)
    kinds: list[str] = []
    for segment in segments:
        if date_year(segment) is not None:
            kinds.append("date")
        elif _VENUE_STRONG.search(segment) or (
            _VENUE_WEAK.search(segment) and len(segment.split()) <= 8
        ):
            kinds.append("venue")
        elif _is_name(segment):
            kinds.append("name")
        else:
            kinds.append("other")
    year = next((date_year(s) for s, k in zip(segments, kinds, strict=True) if k == "date"), None)
    venue_text = next((s for s, k in zip(segments, kinds, strict=True) if k == "venue"), None)
    # Leading names (authors), then the title run.
    index = 0
    while index < len(kinds) and kinds[index] == "name":
        index += 1
    authors = [author_name(s.removeprefix("and ").removeprefix("& ")) for s in segments[:index]]
    authors = [a for a in authors if a and "et al" not in a]
    if index == 0 and kinds and kinds[0] == "other":
        start = 0  # "Title, Authors, date" style
    else:
        start = index
        while start < len(kinds) and kinds[start] in ("date", "venue"):
            start += 1
    end = start
    while end < len(kinds) and kinds[end] in ("other", "name"):
        end += 1
        if index == 0 and start == 0 and end < len(kinds) and kinds[end] == "name":
            break  # the title is followed by its authors
    if start >= len(segments):
        return None, authors, year, venue_text
    title = ", ".join(segments[start:end]) if end > start else None
    if title and not _title_like(title):
        return None, authors, year, venue_text
    return title, authors, year, venue_text


def _title_like(text: str) -> bool:
    words = text.split()
    return len(words) >= 2 and (
        ":" in text or any(w.lower() in _FUNCTION_WORDS for w in words) or len(words) >= 3
    )
