"""Renderers: records in, text out. The awesome lists (committed, in `awesome/`) and the site
sources (generated at build time into `build/docs/`). Nothing here writes files: callers get
`{path: text}` and hand it to `outputs`.

All text that comes from a record is escaped for the format it lands in (`formats.md_escape`,
jinja2 autoescaping for HTML), so a title with `<script>`, `|`, `](` or backticks
shows literally everywhere.
"""

from __future__ import annotations

from typing import Any

import jinja2

from ..formats import md_escape
from ..taxonomy import MEANINGS, Family, Modality


def url(text: str) -> str:
    """A URL safe inside markdown link parentheses (records hold validated https URLs)."""
    return text.replace("(", "%28").replace(")", "%29").replace(" ", "%20").replace("|", "%7C")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tokenkb.renderers", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = md_escape
    env.filters["url"] = url
    return env


def sort_newest_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (-int(r["year"]), r["title"].casefold(), r["id"]))


MODALITY_TITLES = {
    "vision": "Vision (ViTs and image backbones)",
    "video": "Video",
    "language": "Language models",
    "vlm": "Vision-language models",
    "audio": "Audio and speech",
    "diffusion": "Diffusion models",
    "ssm": "State space models",
    "multimodal": "Multimodal",
}
FAMILY_ORDER = [f.value for f in Family]
MODALITY_ORDER = [m.value for m in Modality]


def meaning(kind: type[Any], value: str) -> str:
    return MEANINGS[kind][value]
