"""The site sources: markdown pages, downloads and a chart, generated at build time into
`build/docs/` (mkdocs' docs_dir; never committed) next to the hand-written pages of `docs/`.

Pages: home (counts, links to every section, a works-per-year-by-family chart drawn here as SVG
with an HTML legend, the newest works), browse pages by modality, family, year and venue
(sortable tables, sorted by `docs/js/sortable.js`), one page per work (every field; venue, year,
modality and family as links to the browse pages; related works; BibTeX; the reference
implementation; provenance by list name and line; an "edit this record" link; a meta
description), and the downloads `papers.json`, `papers.bib` and `feed.xml` (Atom, the newest
works). Paper pages carry Pagefind filters (modality, family, training-free, year, venue, kind),
sort keys (year, title) and metadata (year, venue) for the search page; their usage snippets
are not indexed.

Everything here is a pure function of the records (no clock, no git): the feed is dated by
`first_public`, so the same records give the same bytes. `read_sources` is the one reader of a
file, for its caller to pass the source descriptions in.
"""

from __future__ import annotations

import json
import os
import re
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
    html_text,
    sort_newest_first,
)
from .results import nice_ticks

# One word for a work whose modality or family is not known yet, everywhere on the site.
UNCLASSIFIED = "unclassified"
# Where the records live ("edit this record" links to the YAML file there) and where the site is
# published (canonical links, the feed, the sitemap). The publishing workflow sets both from its
# own context (.github/workflows/site.yml); the defaults are for local builds. mkdocs.yml reads
# the same TOKENKB_SITE_URL with the same default (a test checks).
REPO_URL = os.environ.get("TOKENKB_REPO_URL") or "https://github.com/tokenkb/tokenkb"
SITE_URL = os.environ.get("TOKENKB_SITE_URL") or "https://tokenkb.github.io/tokenkb/"
FEED_ENTRIES = 30
_ARXIV_MONTH = re.compile(r"^(\d{2})(\d{2})\.")
CHART_ORDER = [*FAMILY_ORDER, UNCLASSIFIED]

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
    UNCLASSIFIED: "#dddddd",
}


def training_free_label(record: dict[str, Any]) -> str | None:
    if record["kind"] != "method":
        return None
    return {True: "yes", False: "no", None: "unknown"}[record.get("training_free")]


def _year_counts(records: list[dict[str, Any]]) -> dict[int, Counter[str]]:
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for r in records:
        family = (r.get("family") or [UNCLASSIFIED])[0]
        counts[int(r["year"])][family] += 1
    return counts


def chart_svg(records: list[dict[str, Any]]) -> str:
    """Works per year, stacked by family (a work counts once, under its first family). Drawn
    narrow (480 units) with 15-unit text, so that its labels stay readable when a phone shrinks
    it to 360 px; the legend is HTML beside it (`chart_legend`), which wraps at any width."""
    counts = _year_counts(records)
    years = list(range(min(counts), max(counts) + 1)) if counts else []
    top = max((sum(c.values()) for c in counts.values()), default=1)
    ticks = nice_ticks(0, top)
    width, height, left, bottom, bar = 480, 300, 44, 30, 0.8
    step = (width - left - 6) / max(len(years), 1)
    scale = (height - bottom - 10) / ticks[-1]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        'role="img" aria-labelledby="chart-title" class="tokenkb-chart">',
        '<title id="chart-title">Works per year, by family</title>',
    ]
    for tick in ticks:
        y = height - bottom - tick * scale
        parts.append(
            f'<line x1="{left}" x2="{width - 6}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="currentColor" stroke-opacity="0.15"/>'
            f'<text x="{left - 6}" y="{y + 5:.1f}" font-size="15" text-anchor="end" '
            f'fill="currentColor">{tick:g}</text>'
        )
    label_every = 1 if len(years) <= 10 else 2 if len(years) <= 20 else 5
    for index, year in enumerate(years):
        x = left + index * step + step * (1 - bar) / 2
        y = height - bottom
        for family in CHART_ORDER:
            n = counts[year][family]
            if not n:
                continue
            h = n * scale
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * bar:.1f}" height="{h:.1f}" '
                f'fill="{FAMILY_COLOURS[family]}"><title>{year}: {n} {family}</title></rect>'
            )
        if (years[-1] - year) % label_every == 0:
            parts.append(
                f'<text x="{x + step * bar / 2:.1f}" y="{height - bottom + 20}" font-size="15" '
                f'text-anchor="middle" fill="currentColor">{year}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def chart_legend(records: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(family, colour, works) for every family the chart shows, in the chart's stacking order."""
    totals: Counter[str] = Counter()
    for c in _year_counts(records).values():
        totals.update(c)
    return [(f, FAMILY_COLOURS[f], totals[f]) for f in CHART_ORDER if totals[f]]


def related_works(
    records: list[dict[str, Any]], limit: int = 6
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """For each record: `named`, the works whose title or nickname its summary names (its
    lineage: "builds on ToMe"), and `similar`, works of the same first family that share a
    modality, nearest in year first."""
    names: list[tuple[re.Pattern[str], dict[str, Any]]] = []
    for r in records:
        for name in r.get("aliases") or []:
            if len(name) >= 3 and not name.isdigit():
                names.append((re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])"), r))
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("family"):
            by_family[r["family"][0]].append(r)
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        summary = r.get("summary") or ""
        named: dict[str, dict[str, Any]] = {}
        for pattern, other in names:
            if other["id"] != r["id"] and pattern.search(summary):
                named.setdefault(other["id"], other)
        similar = sorted(
            (
                other
                for other in by_family.get((r.get("family") or [""])[0], [])
                if other["id"] != r["id"]
                and other["id"] not in named
                and set(other["modality"]) & set(r["modality"])
            ),
            key=lambda o: (abs(int(o["year"]) - int(r["year"])), -int(o["year"]), o["title"]),
        )
        out[r["id"]] = {
            "named": sorted(named.values(), key=lambda o: o["title"].casefold())[:limit],
            "similar": similar[:limit],
        }
    return out


def read_sources(path: Path) -> dict[str, dict[str, str]]:
    """curation/sources.yaml: source name -> {name, url, path, commit, date}; {} when absent.
    The one function here that reads a file (the renderers below stay pure)."""
    import yaml

    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(k): {str(f): str(v) for f, v in (v or {}).items()} for k, v in data.items()}


def source_link(source: dict[str, Any], sources: dict[str, dict[str, str]]) -> dict[str, Any]:
    """How a record's provenance entry is shown: the list's name, its line, and a link to the
    line on GitHub where the commit is known (else to the list)."""
    described = sources.get(str(source["source"]))
    line = source.get("line")
    if described is None:
        return {"name": str(source["source"]), "line": line, "url": None, "known": False,
                "fields": source.get("fields") or []}  # fmt: skip
    url = described.get("url")
    if url and url.startswith("https://github.com/") and described.get("commit"):
        url = f"{url}/blob/{described['commit']}/{described.get('path', 'README.md')}"
        url += f"#L{line}" if line else ""
    return {"name": described["name"], "line": line, "url": url, "known": True,
            "fields": source.get("fields") or []}  # fmt: skip


def description(record: dict[str, Any]) -> str:
    """A page's meta description: the summary's first sentence, else what the work is."""
    summary = " ".join(str(record.get("summary") or "").split())
    if summary:
        first = re.split(r"(?<=[.!?])\s", summary, maxsplit=1)[0]
        return first if len(first) <= 200 else first[:197].rsplit(" ", 1)[0] + "..."
    venue = record.get("venue") or "unknown venue"
    return f"{record['title']} ({venue}, {record['year']}): a {record['kind']} on token reduction."


def _row(record: dict[str, Any], depth: str) -> dict[str, Any]:
    return {
        "r": record,
        "href": f"{depth}papers/{record['id']}.md",
        "tf": training_free_label(record),
    }


UNKNOWN_VENUE = "unknown venue"


def _browse(records: list[dict[str, Any]], key: str) -> list[tuple[str, list[dict[str, Any]]]]:
    missing = UNKNOWN_VENUE if key == "venue" else UNCLASSIFIED
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        value = r.get(key)
        values = value if isinstance(value, list) else [value]
        for v in values or [None]:
            groups[str(v) if v is not None else missing].append(_row(r, "../"))
    if key == "modality":
        order = [*MODALITY_ORDER, missing]
    elif key == "family":
        order = [*FAMILY_ORDER, missing]
    elif key == "year":
        order = sorted(groups, reverse=True)
    else:
        order = sorted(groups, key=lambda v: (v == missing, v == "arXiv", v.casefold()))
    return [(v, sorted(groups[v], key=lambda x: (-int(x["r"]["year"]), x["r"]["title"])))
            for v in order if v in groups]  # fmt: skip


def first_public(record: dict[str, Any]) -> str:
    """When a work first appeared, as an ISO date from the data alone: the month of its arXiv id
    (2210.09461: October 2022) when that agrees with its year, else 1 January of its year."""
    year = int(record["year"])
    match = _ARXIV_MONTH.match(str(record.get("arxiv") or ""))
    if match and 2000 + int(match[1]) == year and 1 <= int(match[2]) <= 12:
        return f"{year:04d}-{int(match[2]):02d}-01"
    return f"{year:04d}-01-01"


def newest(records: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (first_public(r), r["id"]), reverse=True)[:count]


def added_dates(history: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Record id -> the date it was (last) added to the base, from `render.record_history`."""
    added: dict[str, str] = {}
    for record_id, events in history.items():
        dates = [date for date, kind in events if kind == "added"]
        if dates:
            added[record_id] = dates[-1]
    return added


def recently_added(
    records: list[dict[str, Any]], added: dict[str, str], count: int
) -> list[tuple[str, dict[str, Any]]]:
    """The `count` records added last, as (date added, record), newest first."""
    dated = [(added[r["id"]], r) for r in records if r["id"] in added]
    return sorted(dated, key=lambda pair: (pair[0], pair[1]["id"]), reverse=True)[:count]


def changelog(
    records: list[dict[str, Any]], history: dict[str, list[tuple[str, str]]], days: int = 60
) -> list[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """What changed in the base, by day, newest first (at most `days` days): for each day the
    records added, changed and removed. A removed record is named by its id."""
    by_id = {r["id"]: r for r in records}
    days_seen: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record_id, events in history.items():
        for date, kind in events:
            day = days_seen.setdefault(date, {"added": [], "changed": [], "removed": []})
            entry = by_id.get(record_id, {"id": record_id, "title": record_id, "gone": True})
            if entry not in day[kind]:
                day[kind].append(entry)
    ordered = sorted(days_seen.items(), reverse=True)[:days]
    for _, day in ordered:
        for kind in day:
            day[kind].sort(key=lambda r: str(r["title"]).casefold())
    return ordered


def atom_feed(
    records: list[dict[str, Any]], site_url: str = SITE_URL, added: dict[str, str] | None = None
) -> str:
    """An Atom feed (RFC 4287): with `added` (the dates records were added, from git history),
    the works added last, dated when they were added; without, the newest works, dated by
    `first_public`. Dates come from the data, so the same inputs give the same bytes, whenever
    the site is built."""
    from html import escape

    if added:
        dated = recently_added(records, added, FEED_ENTRIES)
        entries = [r for _, r in dated]
        when_of = {r["id"]: date for date, r in dated}
    else:
        entries = newest(records, FEED_ENTRIES)
        when_of = {r["id"]: first_public(r) for r in entries}
    updated = max(when_of.values(), default="1970-01-01")
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom">',
        f"<title>tokenkb: {'works added' if added else 'newest works'} on token reduction</title>",
        f'<link rel="self" href="{escape(site_url)}feed.xml"/>',
        f'<link rel="alternate" href="{escape(site_url)}"/>',
        f"<id>{escape(site_url)}</id>",
        f"<updated>{updated}T00:00:00Z</updated>",
        "<author><name>tokenkb contributors</name></author>",
    ]
    for r in entries:
        url = f"{site_url}papers/{r['id']}/"
        venue = r.get("venue") or UNKNOWN_VENUE
        when = venue if str(r["year"]) in venue else f"{venue}, {int(r['year'])}"
        summary = " ".join(str(r.get("summary") or description(r)).split())
        lines += [
            "<entry>",
            f"<title>{html_text(r['title'])}</title>",
            f'<link rel="alternate" href="{escape(url)}"/>',
            f"<id>{escape(url)}</id>",
            f"<updated>{when_of[r['id']]}T00:00:00Z</updated>",
            *(f"<author><name>{html_text(a)}</name></author>" for a in r.get("authors") or []),
            f"<summary>{html_text(when)}. {html_text(summary)}</summary>",
            "</entry>",
        ]
    lines.append("</feed>")
    return "\n".join(lines) + "\n"


def json_export(records: list[dict[str, Any]]) -> str:
    rows = [{key: r.get(key) for key in JSON_KEYS} | r for r in records]
    return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"


def site_files(
    out: Path,
    records: list[dict[str, Any]],
    impls: dict[str, Any],
    results: dict[str, Any] | None = None,
    sources: dict[str, dict[str, str]] | None = None,
    history: dict[str, list[tuple[str, str]]] | None = None,
) -> dict[Path, str]:
    """`{path: text}` of every generated site source under `out` (build/docs): the home page,
    browse pages, a page per work, downloads, and (with `impls` and `results`) the pages of the
    reference implementations and the benchmark results. `sources` (`read_sources`) names the
    source lists in each work's provenance. `history` (`render.record_history`: when each record
    was added and changed) gives "recently added" on the home page, the feed's dates and the
    changelog page; without it the home page and feed show the newest works."""
    from .results import results_files

    env = environment()
    records = sort_newest_first(records)
    sources = sources or {}
    added = added_dates(history or {})
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
        newest=newest(records, 8),
        recent=recently_added(records, added, 8),
        legend=chart_legend(records),
        years=f"{min(r['year'] for r in records)}-{max(r['year'] for r in records)}"
        if records
        else "",
    )
    for key, label in (("modality", "Modality"), ("family", "Family"), ("year", "Year"),
                       ("venue", "Venue")):  # fmt: skip
        files[out / "browse" / f"{key}.md"] = env.get_template("site_browse.md").render(
            label=label, key=key, groups=_browse(records, key)
        )
    related = related_works(records)
    for r in records:
        impl = impls.get(r["impl"]) if r.get("impl") else None
        # The usage snippet is code, printed as it is: only for a dotted Python name.
        module = r.get("impl") or ""
        dotted = "." in module and all(part.isidentifier() for part in module.split("."))
        bibtex = entry(r)
        files[out / "papers" / f"{r['id']}.md"] = env.get_template("site_paper.md").render(
            r=r,
            tf=training_free_label(r),
            description=description(r),
            venue=r.get("venue") or UNKNOWN_VENUE,
            related=related[r["id"]],
            repo_url=REPO_URL,
            sources=[source_link(s, sources) for s in r.get("sources") or []],
            bibtex=bibtex,
            bibtex_fence=fence(bibtex),
            impl=impl,
            impl_path=module.replace(".", "/") + ".py" if module else None,
            impl_package=module.rsplit(".", 1)[0] if dotted else None,
            impl_name=module.rsplit(".", 1)[1] if dotted else None,
        )
    files.update(results_files(out, records, impls, results or {}))
    files[out / "feed.xml"] = atom_feed(records, added=added)
    files[out / "changelog.md"] = env.get_template("site_changelog.md").render(
        days=changelog(records, history or {})
    )
    files[out / "papers.json"] = json_export(records)
    files[out / "papers.bib"] = bibliography(records)
    return files
