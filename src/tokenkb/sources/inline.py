"""Inline Markdown and HTML of one list entry, read into spans, links and badges.

markdown-it-py parses the inline syntax (emphasis, links, images, code spans); `html.parser`
reads the HTML tags lists mix in (`<a href>`, `<img>`, `<br>`, `<sub>`, `<b>`, `<i>`). What comes
out says what each piece of text is (bold, italic, inside a link, in a `<sub>` line) and which
links and shields.io badges the entry carries; deciding what is a title or a venue is
`markdown`'s job, not this module's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import unquote

from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark", {"html": True}).enable("table")
_BARE_URL = re.compile(r"https?://[^\s<>\[\]()|\"']+[^\s<>\[\]()|\"'.,;:]")


@dataclass
class Link:
    url: str
    text: str = ""
    bold: bool = False
    images: list[str] = field(default_factory=list)  # image URLs inside the link (badges)
    before: str = ""  # plain text just before the link (to see `[[Nick](url)] Title`)
    after: str = ""


@dataclass
class Span:
    """A run of text with its emphasis."""

    text: str
    bold: bool = False
    italic: bool = False
    sub: bool = False
    in_link: bool = False


@dataclass
class Inline:
    spans: list[Span] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    badges: list[str] = field(default_factory=list)  # shields.io /badge/ paths, decoded
    codes: list[str] = field(default_factory=list)  # `inline code` texts
    arxiv_badge: str | None = None

    def plain(self, *, links: bool = True) -> str:
        return "".join(s.text for s in self.spans if links or not s.in_link)


class _Tag(HTMLParser):
    """One HTML tag's name and attributes (html.parser, so quoting and entities are right)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, bool, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, True, {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, True, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        self.tags.append((tag, False, {}))


def _html_tags(fragment: str) -> list[tuple[str, bool, dict[str, str]]]:
    parser = _Tag()
    parser.feed(fragment)
    parser.close()
    return parser.tags


def read_inline(text: str) -> Inline:
    """Spans, links and badges of one cell or item text."""
    out = Inline()
    tokens = _MD.parseInline(text)[0].children if text.strip() else []
    bold = italic = sub = 0
    link_stack: list[Link] = []
    ends: list[int] = []  # for each closed link, the index of the first span after it

    def add_text(value: str) -> None:
        if not value:
            return
        out.spans.append(Span(value, bold > 0, italic > 0, sub > 0, bool(link_stack)))
        if link_stack:
            link_stack[-1].text += value

    def open_link(url: str) -> None:
        before = "".join(span.text for span in out.spans[-3:])[-3:]
        link = Link(url=_repair_url(url), bold=bold > 0, before=before)
        link_stack.append(link)

    def close_link() -> None:
        if link_stack:
            out.links.append(link_stack.pop())
            ends.append(len(out.spans))

    def image(src: str, alt: str) -> None:
        _read_image(src, alt, out)
        if link_stack:
            link_stack[-1].images.append(src)

    for token in tokens or []:
        kind = token.type
        if kind == "text" and not link_stack and "http" in token.content:
            # a bare URL is a link too (lists write `Title https://arxiv.org/abs/...`)
            last = 0
            for match in _BARE_URL.finditer(token.content):
                add_text(token.content[last : match.start()])
                open_link(match.group())
                add_text(match.group())
                close_link()
                last = match.end()
            add_text(token.content[last:])
        elif kind in ("text", "html_entity"):
            add_text(token.content)
        elif kind in ("softbreak", "hardbreak"):
            add_text("\n")
        elif kind == "code_inline":
            out.codes.append(token.content)
            add_text(token.content)
        elif kind == "strong_open":
            bold += 1
        elif kind == "strong_close":
            bold -= 1
            add_text("\x00")  # a boundary: adjacent runs stay apart
        elif kind == "em_open":
            italic += 1
        elif kind == "em_close":
            italic -= 1
            add_text("\x00")
        elif kind == "link_open":
            open_link(str(token.attrs.get("href", "")))
        elif kind == "link_close":
            close_link()
        elif kind == "image":
            image(str(token.attrs.get("src", "")), token.content)
        elif kind == "html_inline":
            for tag, opening, attrs in _html_tags(token.content):
                if tag == "br":
                    add_text("\n")
                elif tag == "img" and opening:
                    image(attrs.get("src", ""), attrs.get("alt", ""))
                elif tag == "a":
                    if opening and attrs.get("href"):
                        open_link(attrs["href"])
                    elif not opening:
                        close_link()
                elif tag in ("b", "strong"):
                    bold += 1 if opening else -1
                    add_text("\x00")
                elif tag in ("i", "em"):
                    italic += 1 if opening else -1
                    add_text("\x00")
                elif tag == "sub":
                    sub += 1 if opening else -1
                    add_text("\n")
    while link_stack:
        close_link()
    for link, end in zip(out.links, ends, strict=True):
        link.after = _after(out.spans, end)
    return out


_AFTER_CHARS = 1000  # enough for a title or a tag group; bounded, so a huge line stays linear


def _after(spans: list[Span], start: int) -> str:
    """Plain text right after a link (for `[[Nick](url)] Title` and `.[Nick;Venue]` tags)."""
    parts: list[str] = []
    size = 0
    for span in spans[start:]:
        parts.append(span.text)
        size += len(span.text)
        if size >= _AFTER_CHARS:
            break
    return "".join(parts)[:_AFTER_CHARS]


def _repair_url(url: str) -> str:
    """`https://github.com/https://github.com/a/b` -> `https://github.com/a/b`."""
    url = url.strip()
    last = max(url.rfind("https://"), url.rfind("http://"))
    return url[last:] if last > 0 else url


def _read_image(src: str, alt: str, out: Inline) -> None:
    match = re.search(r"img\.shields\.io/badge/([^?#]*)", src)
    if not match:
        return
    path = unquote(match.group(1)).removesuffix(".svg")
    arxiv = re.match(r"arxiv-([0-9]{4}\.[0-9]{4,5})", path, re.I)
    if arxiv:
        out.arxiv_badge = arxiv.group(1)
        return
    # shields.io: label-message-colour; '--' is a dash, '_' a space. Lists also write
    # `TPC-ViT-blue` for the label "TPC-ViT": the text is kept with its dashes, less the colour.
    text = path.replace("--", "\x01").replace("_", " ")
    head, dash, colour = text.rpartition("-")
    if dash and re.fullmatch(r"[a-z]+|[0-9a-f]{6}|[0-9a-f]{3}", colour):
        text = head
    out.badges.append(text.replace("\x01", "-").strip())
