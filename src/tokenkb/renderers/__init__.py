"""Renderers: records in, text out. The awesome lists (committed, in `awesome/`) and the site
sources (generated at build time into `build/docs/`). Nothing here writes files: callers get
`{path: text}` and hand it to `outputs`.

Every value that comes from a record is escaped for the place it lands in, even though records
are validated first: text with the `md` filter (`formats.md_escape`), link targets with `url`
(`formats.md_url`: percent-encoded, http(s) only), code spans with `code`, heading anchors with
`anchor`, HTML with `e` (or `html` in Python). So a title with `<script>`, `|`, `](` or
backticks shows literally everywhere, and no URL can end its link or carry a script.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

import jinja2

from ..formats import md_code, md_escape, md_path, md_url
from ..taxonomy import MEANINGS, Family, Modality

_LINE_BREAKS = re.compile(r"[\r\n\f\v\x85\u2028\u2029]+")


def html_text(value: object) -> str:
    """`value` escaped for HTML text or a quoted attribute, on one line: a blank line inside a
    raw HTML block would end the block and let Markdown read the rest."""
    return escape(_LINE_BREAKS.sub(" ", str(value)), quote=True)


def fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so `text` cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def anchor(text: object) -> str:
    """A heading id (`{ #id }`) and the `#id` that links to it: lowercase letters, digits and
    hyphens only, so that it cannot close the attribute list it is written in."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "-"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tokenkb.renderers", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = lambda value: md_escape(str(value))
    env.filters["url"] = md_url
    env.filters["path"] = md_path
    env.filters["html"] = html_text
    env.filters["code"] = lambda value: md_code(str(value))
    env.filters["anchor"] = anchor
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
