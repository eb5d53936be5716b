"""The site sources: markdown pages, downloads and a chart, generated at build time into
`build/docs/` (mkdocs' docs_dir; never committed) next to the hand-written pages of `docs/`.

Pages: home (counts, a works-per-year-by-family chart drawn here as SVG), browse pages by
modality, family, year and venue (sortable tables, sorted by `docs/js/sortable.js`), one page
per work (every field, links, BibTeX, the reference implementation, provenance), and the
downloads `papers.json` and `papers.bib`. Paper pages carry Pagefind filters (modality, family,
training-free, year, venue, kind) so the search page can facet them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..bibtex import bibliography, entry
from ..formats import JSON_KEYS
from . import (
    FAMILY_ORDER,
    MODALITY_ORDER,
    MODALITY_TITLES,
    environment,
    fence,
    sort_newest_first,
)

FAMILY_COLOURS = {
    "pruning": "#1f77b4",
    "merging": "#ff7f0e",
    "prune-merge": "#2ca02c",
    "clustering": "#d62728",
    "learned-compression": "#9467bd",
    "kv-eviction": "#8c564b",
    "kv-quantization": "#e377c2",
    "kv-merging": "#7f7f7f",
    "prompt-compression": "#bcbd22",
    "token-skipping": "#17becf",
    "hardware": "#393b79",
    "other": "#aaaaaa",
    "unclassified": "#dddddd",
}


def training_free_label(record: dict[str, Any]) -> str | None:
    if record["kind"] != "method":
        return None
    return {True: "yes", False: "no", None: "unknown"}[record.get("training_free")]


def chart_svg(records: list[dict[str, Any]]) -> str:
    """Works per year, stacked by family (a work counts once, under its first family)."""
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for r in records:
        family = (r.get("family") or ["unclassified"])[0]
        counts[int(r["year"])][family] += 1
    years = list(range(min(counts), max(counts) + 1)) if counts else []
    top = max((sum(c.values()) for c in counts.values()), default=1)
    width, height, left, bottom, bar = 720, 300, 40, 30, 0.8
    step = (width - left - 10) / max(len(years), 1)
    scale = (height - bottom - 20) / top
    order = [*FAMILY_ORDER, "unclassified"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 60}" '
        'role="img" aria-labelledby="chart-title" class="tokenkb-chart">',
        '<title id="chart-title">Works per year, by family</title>',
    ]
    for tick in range(0, top + 1, max(1, top // 5)):
        y = height - bottom - tick * scale
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{tick}</text>'
        )
    for index, year in enumerate(years):
        x = left + index * step + step * (1 - bar) / 2
        y = height - bottom
        for family in order:
            n = counts[year][family]
            if not n:
                continue
            h = n * scale
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * bar:.1f}" height="{h:.1f}" '
                f'fill="{FAMILY_COLOURS[family]}"><title>{year}: {n} {family}</title></rect>'
            )
        if len(years) <= 20 or index % 2 == 0:
            parts.append(
                f'<text x="{x + step * bar / 2:.1f}" y="{height - bottom + 16}" font-size="11" '
                f'text-anchor="middle">{year}</text>'
            )
    used = [f for f in order if any(c[f] for c in counts.values())]
    for index, family in enumerate(used):
        x = left + (index % 4) * 170
        y = height + 5 + (index // 4) * 18
        parts.append(
            f'<rect x="{x}" y="{y}" width="12" height="12" fill="{FAMILY_COLOURS[family]}"/>'
            f'<text x="{x + 16}" y="{y + 10}" font-size="12">{family}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _row(record: dict[str, Any], depth: str) -> dict[str, Any]:
    return {
        "r": record,
        "href": f"{depth}papers/{record['id']}.md",
        "tf": training_free_label(record),
    }


def _browse(records: list[dict[str, Any]], key: str) -> list[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        value = r.get(key)
        values = value if isinstance(value, list) else [value]
        for v in values or [None]:
            groups[str(v) if v is not None else "unknown"].append(_row(r, "../"))
    if key == "modality":
        order = [*MODALITY_ORDER, "unknown"]
    elif key == "family":
        order = [*FAMILY_ORDER, "unknown"]
    elif key == "year":
        order = sorted(groups, reverse=True)
    else:
        order = sorted(groups, key=lambda v: (v == "unknown", v == "arXiv", v.casefold()))
    return [(v, sorted(groups[v], key=lambda x: (-int(x["r"]["year"]), x["r"]["title"])))
            for v in order if v in groups]  # fmt: skip


def json_export(records: list[dict[str, Any]]) -> str:
    rows = [{key: r.get(key) for key in JSON_KEYS} | r for r in records]
    return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"


def site_files(
    out: Path,
    records: list[dict[str, Any]],
    impls: dict[str, Any],
    results: dict[str, Any] | None = None,
) -> dict[Path, str]:
    """`{path: text}` of every generated site source under `out` (build/docs): the home page,
    browse pages, a page per work, downloads, and (with `impls` and `results`) the pages of the
    reference implementations and the benchmark results."""
    from .results import results_files

    env = environment()
    records = sort_newest_first(records)
    methods = [r for r in records if r["kind"] == "method"]
    files: dict[Path, str] = {}
    files[out / "index.md"] = env.get_template("site_home.md").render(
        total=len(records),
        methods=len(methods),
        training_free=sum(1 for r in methods if r.get("training_free")),
        with_impl=sum(1 for r in methods if r.get("impl_level") == "paper"),
        with_family_impl=sum(1 for r in methods if r.get("impl_level") == "family"),
        with_code=sum(1 for r in records if r.get("code")),
        modalities=[
            (m, MODALITY_TITLES[m], sum(1 for r in records if m in r["modality"]))
            for m in MODALITY_ORDER
        ],
        chart=chart_svg(records),
        years=f"{min(r['year'] for r in records)}-{max(r['year'] for r in records)}"
        if records
        else "",
    )
    for key, label in (("modality", "Modality"), ("family", "Family"), ("year", "Year"),
                       ("venue", "Venue")):  # fmt: skip
        files[out / "browse" / f"{key}.md"] = env.get_template("site_browse.md").render(
            label=label, key=key, groups=_browse(records, key)
        )
    for r in records:
        impl = impls.get(r["impl"]) if r.get("impl") else None
        # The usage snippet is code, printed as it is: only for a dotted Python name.
        module = r.get("impl") or ""
        dotted = "." in module and all(part.isidentifier() for part in module.split("."))
        bibtex = entry(r)
        files[out / "papers" / f"{r['id']}.md"] = env.get_template("site_paper.md").render(
            r=r,
            tf=training_free_label(r),
            bibtex=bibtex,
            bibtex_fence=fence(bibtex),
            impl=impl,
            impl_path=module.replace(".", "/") + ".py" if module else None,
            impl_package=module.rsplit(".", 1)[0] if dotted else None,
            impl_name=module.rsplit(".", 1)[1] if dotted else None,
        )
    files.update(results_files(out, records, impls, results or {}))
    files[out / "papers.json"] = json_export(records)
    files[out / "papers.bib"] = bibliography(records)
    return files
