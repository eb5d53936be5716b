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


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~<>])")


def md_escape(text: str) -> str:
    """Text that Markdown shows literally, also inside a table cell: specials backslash-escaped,
    `<` and `>` (and so HTML) as entities. The awesome lists and site pages use it too."""
    text = text.replace("&", "&amp;")
    return _MD_SPECIAL.sub(
        lambda m: {"<": "&lt;", ">": "&gt;"}.get(m.group(1), "\\" + m.group(1)), text
    )


def to_md(records: list[dict[str, Any]]) -> str:
    lines = []
    for r in records:
        parts = [f"- **[{md_escape(r.get('venue') or 'venue unknown')}]**"]
        title = md_escape(r["title"])
        parts.append(f"[{title}]({r['paper']})" if r.get("paper") else title)
        if r.get("aliases"):
            parts.append("(" + ", ".join(md_escape(a) for a in r["aliases"]) + ")")
        if r.get("code"):
            parts.append(f"[[code]]({r['code']})")
        tags = [*(r.get("modality") or []), *(r.get("family") or [])]
        if r.get("training_free"):
            tags.append("training-free")
        parts.append(" ".join(f"`{t}`" for t in tags))
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
