"""Output formats shared by the CLI commands that print records (`--format ...`).

Pure functions from a list of record dicts to text. No pydantic here: the query path stays light.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

FORMATS = ("table", "json", "yaml", "bibtex", "md")

# The keys every record has in `--format json`, in order (the DESIGN.md contract names them).
JSON_KEYS = (
    "id",
    "title",
    "aliases",
    "authors",
    "year",
    "venue",
    "kind",
    "arxiv",
    "doi",
    "modality",
    "family",
    "training_free",
    "code",
    "impl",
    "impl_level",
    "sources",
)


def to_json(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, ensure_ascii=False, indent=2) + "\n"


def to_yaml(records: list[dict[str, Any]]) -> str:
    import yaml

    compact = [{k: v for k, v in r.items() if v not in (None, [], "")} for r in records]
    if not compact:
        return "[]\n"
    return str(yaml.safe_dump(compact, sort_keys=False, allow_unicode=True, width=100))


def to_bibtex(records: list[dict[str, Any]]) -> str:
    from .bibtex import bibliography

    return bibliography(records)


# Characters Markdown may read as syntax, and how each is written so that Python-Markdown (the
# site, with the extensions of mkdocs.yml) and GitHub (the awesome lists) both show it as itself.
# A backslash escape where both readers know it (Python-Markdown escapes only its own set, plus
# `|` with the tables extension, and shows `\~` as a backslash and a tilde); an HTML entity
# otherwise: `~` (GitHub's strikethrough), `$` (GitHub's math), `<`, `>`, `&` (HTML).
_MD_ESCAPES = {
    **{ch: "\\" + ch for ch in "\\`*_{}[]()#+!|"},
    "~": "&#126;",
    "$": "&#36;",
    "<": "&lt;",
    ">": "&gt;",
    "&": "&amp;",
}
_MD_SPECIAL = re.compile("[" + re.escape("".join(_MD_ESCAPES)) + "]")
# At the start of a line these begin a block (a list, a heading underline, a code fence, a
# thematic break); elsewhere they are plain text and left alone.
_MD_LINE_START = re.compile(r"^(?:[-=]|[0-9]+(?=[.)](?: |$)))")
_MD_START_ESCAPES = {"-": "\\-", "=": "&#61;"}
_MD_BREAKS = re.compile(r"[ \t\n\r\f\v]+")
_MD_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def md_escape(text: str) -> str:
    """Text that Markdown shows literally, also inside a table cell, a heading or link text.

    One line: runs of spaces and line breaks become one space (a line break would start a new
    block); control characters, which no record holds, become U+FFFD. The awesome lists, the site
    pages and `kb query --format md` all use it; tests check that Python-Markdown with the
    site's extensions and a CommonMark reader show exactly `text`.
    """
    text = _MD_BREAKS.sub(" ", _MD_CONTROL.sub("\ufffd", text)).strip(" ")
    text = _MD_SPECIAL.sub(lambda m: _MD_ESCAPES[m.group()], text)
    # Python-Markdown reads `[...]:` as a link reference definition before any escape counts.
    text = text.replace("\\]:", "&#93;:")
    start = _MD_LINE_START.match(text)
    if start is None:
        return text
    if start.group() in _MD_START_ESCAPES:
        return _MD_START_ESCAPES[start.group()] + text[1:]
    # `1.` starts an ordered list (`1)` too, on GitHub, but `)` is escaped already).
    end = start.end()
    return text[:end] + "\\." + text[end + 1 :] if text[end] == "." else text


# What a link target may hold as it is; everything else is percent-encoded, so that no `)`,
# `<`, `>`, quote, space or backslash can end the target in Markdown or an HTML attribute.
_URL_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#@!$&*+,;="
)
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_WEB_SCHEME = re.compile(r"https?://", re.IGNORECASE)


def _percent_encode(text: str, safe: frozenset[str]) -> str:
    out = []
    index = 0
    while index < len(text):
        ch = text[index]
        if ch == "%" and _PERCENT.match(text, index):
            out.append(text[index : index + 3])
            index += 3
            continue
        out.append(
            ch if ch in safe else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "replace"))
        )
        index += 1
    return "".join(out)


def md_url(url: str) -> str:
    """A link target that stays one link target in Markdown and in an HTML attribute.

    Records hold validated https URLs; this holds for any text: characters a link cannot hold
    are percent-encoded (`(` as %28, `<` as %3C, a quote as %27 or %22, a space as %20), and a
    target that is not an http(s) URL (`javascript:`, `data:`) becomes an in-page fragment,
    which goes nowhere.
    """
    if _WEB_SCHEME.match(url):
        return _percent_encode(url, _URL_SAFE)
    return "#" + _percent_encode(url, _URL_SAFE - {":"})


def md_path(path: str) -> str:
    """A relative link target (`../papers/<id>.md`), percent-encoded like `md_url`; a `:` is
    encoded too, so that it can never be read as a scheme."""
    return _percent_encode(path, _URL_SAFE - {":"})


def md_code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds."""
    text = _MD_BREAKS.sub(" ", text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def to_md(records: list[dict[str, Any]]) -> str:
    lines = []
    for r in records:
        parts = [f"- **[{md_escape(r.get('venue') or 'venue unknown')}]**"]
        title = md_escape(r["title"])
        parts.append(f"[{title}]({md_url(r['paper'])})" if r.get("paper") else title)
        if r.get("aliases"):
            parts.append("(" + ", ".join(md_escape(a) for a in r["aliases"]) + ")")
        if r.get("code"):
            parts.append(f"[[code]]({md_url(r['code'])})")
        tags = [*(r.get("modality") or []), *(r.get("family") or [])]
        if r.get("training_free"):
            tags.append("training-free")
        parts.append(" ".join(md_code(str(t)) for t in tags))
        lines.append(" ".join(parts))
    return "\n".join(lines) + ("\n" if lines else "")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _clip(text: str, width: int) -> str:
    if _width(text) <= width:
        return text
    out = ""
    for ch in text:
        if _width(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


# On a narrow terminal, columns are dropped in this order until the title has room.
_DROP_ORDER = ("CODE", "MODALITY", "VENUE", "FAMILY", "TF")
MIN_TITLE = 40


def to_table(records: list[dict[str, Any]], width: int | None = None) -> str:
    """Aligned columns; with a `width` (a terminal) columns are dropped and titles clipped."""
    header = ["ID", "YEAR", "VENUE", "MODALITY", "FAMILY", "TF", "CODE", "TITLE"]
    rows = [
        [
            r["id"],
            str(r["year"]),
            r.get("venue") or "-",
            ",".join(r.get("modality") or []) or "-",
            ",".join(r.get("family") or []) or "-",
            {True: "yes", False: "no", None: "-"}[r.get("training_free")],
            "yes" if r.get("code") else "-",
            r["title"],
        ]
        for r in records
    ]
    widths = [max([_width(h)] + [_width(row[i]) for row in rows]) for i, h in enumerate(header)]
    keep = list(range(len(header)))
    if width:
        for name in _DROP_ORDER:
            fixed = sum(widths[i] + 2 for i in keep[:-1])
            if width - fixed >= MIN_TITLE:
                break
            keep.remove(header.index(name))
    fixed = sum(widths[i] + 2 for i in keep[:-1])
    title_width = max(20, width - fixed) if width else widths[-1]
    lines = []
    for row in [header, *rows]:
        cells = [row[i] + " " * (widths[i] - _width(row[i])) for i in keep[:-1]]
        cells.append(_clip(row[-1], title_width))
        lines.append("  ".join(cells).rstrip())
    lines.append(f"{len(records)} record{'s' if len(records) != 1 else ''}")
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[list[dict[str, Any]]], str]] = {
    "json": to_json,
    "yaml": to_yaml,
    "bibtex": to_bibtex,
    "md": to_md,
}
