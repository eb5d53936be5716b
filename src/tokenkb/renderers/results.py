"""Implementation pages and results pages of the site, with charts drawn here as SVG from the
benchmark JSON committed in `benchmarks/results/` (each page names the command that made it).

Pages: `impls/index.md` (every reference implementation, its family, level and the works it
serves), `impls/<name>.md` (what it does, its docstring, usage, what is simplified, its tests,
its measured figures), `results/vision.md` (accuracy against keep rate on the small ViT, one
small panel per method),
`results/llm.md` (passkey accuracy and perplexity against KV budget on SmolLM2, a sortable
table of every method and budget),
`results/vlm.md` (FLOPs per method on the LLaVA-1.5-7B configuration).
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

from . import environment

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]  # fmt: skip


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round axis ticks covering [low, high]: steps of 1, 2, 2.5 or 5 times a power of ten,
    about `count` of them, the first at or below `low` and the last at or above `high`."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw - 1e-12)
    first = math.floor(low / step + 1e-9) * step
    ticks = [first]
    while ticks[-1] < high - 1e-9:
        ticks.append(ticks[-1] + step)
    # Print 0.30000000000000004 as 0.3.
    return [round(t, 10) for t in ticks]


def legend_html(names: list[str]) -> str:
    """A legend in HTML under a chart: it wraps at any width and its text stays at body size."""
    items = "".join(
        f'<li><span class="tokenkb-swatch" style="background:{PALETTE[i % len(PALETTE)]}">'
        f"</span>{escape(name)}</li>"
        for i, name in enumerate(names)
    )
    return f'<ul class="tokenkb-legend">{items}</ul>'


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    x_label: str,
    y_label: str,
    *,
    y_log: bool = False,
    width: int = 560,
    height: int = 340,
    highlight: str | None = None,
) -> str:
    """An SVG line chart on round ticks (decades when `y_log`), with its legend in HTML below.
    Drawn 560 units wide with 18-unit text, so a phone's 358 px keeps the labels above 11 px.
    With `highlight`, one panel of a small multiple: that series in colour over the others in
    grey, titled with its name, no legend."""
    left, right, top, bottom = 70, 16, 12 if highlight is None else 36, 60
    points = [p for values in series.values() for p in values]
    if not points:
        return ""

    def fy(v: float) -> float:
        return math.log10(max(v, 1e-9)) if y_log else v

    xs = [p[0] for p in points]
    ys = [fy(p[1]) for p in points]
    if y_log:
        ticks = [float(t) for t in range(math.floor(min(ys)), math.ceil(max(ys)) + 1)]
        ticks = ticks if len(ticks) > 1 else [ticks[0], ticks[0] + 1]
    else:
        ticks = nice_ticks(min(ys), max(ys))
    x_ticks = nice_ticks(min(xs), max(xs))
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = ticks[0], ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (fy(y) - y0) / (y1 - y0) * plot_h

    text = 'font-size="18" fill="currentColor"'
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'class="tokenkb-chart" role="img"><title>{escape(y_label)} against {escape(x_label)}'
        "</title>",
    ]
    for tick in ticks:
        label = f"{10**tick:g}" if y_log else f"{tick:g}"
        y = top + plot_h - (tick - y0) / (y1 - y0) * plot_h
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="currentColor" stroke-opacity="0.15"/>'
            f'<text x="{left - 6}" y="{y + 6:.1f}" {text} text-anchor="end">{label}</text>'
        )
    for xv in x_ticks:
        out.append(
            f'<text x="{sx(xv):.1f}" y="{top + plot_h + 24}" {text} '
            f'text-anchor="middle">{xv:g}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" {text} '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="18" y="{top + plot_h / 2:.1f}" {text} text-anchor="middle" '
        f'transform="rotate(-90 18 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    # The highlighted series is drawn last, on top of the others.
    order = sorted(series.items(), key=lambda item: item[0] == highlight)
    for name, values in order:
        colour = PALETTE[list(series).index(name) % len(PALETTE)]
        if highlight is not None and name != highlight:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(values))
            out.append(
                f'<polyline points="{path}" fill="none" stroke="currentColor" '
                f'stroke-opacity="0.2" stroke-width="1.5"><title>{escape(name)}</title></polyline>'
            )
            continue
        ordered = sorted(values)
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ordered)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
        for x, y in ordered:
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}">'
                f"<title>{escape(name)}: {x:g} → {y:.4g}</title></circle>"
            )
    if highlight is not None:
        out.append(f'<text x="{left}" y="22" {text} font-weight="bold">'
                   f"{escape(highlight)}</text></svg>")  # fmt: skip
        return "\n".join(out)
    out.append("</svg>")
    return "\n".join(out) + "\n" + legend_html(list(series))


def small_multiples(
    series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str
) -> list[tuple[str, str]]:
    """One small chart per series, each over the others in grey: (name, svg) in series order.
    Nine methods on one chart overlap; one panel each answers "how does this one do?"."""
    return [
        (name, line_chart(series, x_label, y_label, width=340, height=280, highlight=name))
        for name in series
    ]


def bar_chart(items: list[tuple[str, float]], x_label: str, *, width: int = 520) -> str:
    """Horizontal bars, one per item, values as labels; 17-unit text on a 520-unit width stays
    above 11 px on a phone."""
    row, left = 28, 150
    height = 40 + row * len(items)
    top = max((v for _, v in items), default=1.0) or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'class="tokenkb-chart" role="img"><title>{escape(x_label)}</title>'
    ]
    for index, (label, value) in enumerate(items):
        y = 10 + index * row
        w = (width - left - 70) * value / top
        out.append(
            f'<text x="{left - 6}" y="{y + 19}" font-size="17" text-anchor="end" '
            f'fill="currentColor">{escape(label)}</text>'
            f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
            f'fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{left + w + 4:.1f}" y="{y + 19}" font-size="17" '
            f'fill="currentColor">{value:.3g}</text>'
        )
    out.append(
        f'<text x="6" y="{height - 4}" font-size="17" fill="currentColor">{escape(x_label)}</text>'
        "</svg>"
    )
    return "\n".join(out)


def _command(result: dict[str, Any], name: str) -> str:
    return str(result.get("command") or f"python benchmarks/{name}.py")


def vision_figures(result: dict[str, Any]) -> dict[str, Any]:
    methods = result.get("accuracy", {}).get("methods", {})
    series = {
        name: [(p["keep_rate"], p["accuracy"]) for p in data.get("curve", [])]
        for name, data in sorted(methods.items())
    }
    return {"series": series, "panels": small_multiples(series, "keep rate", "top-1 accuracy")}


def llm_figures(result: dict[str, Any]) -> dict[str, Any]:
    methods = result.get("kv", {}).get("methods", {})
    full = result.get("kv", {}).get("full_cache", {})
    passkey = {
        name: [(float(b), v["passkey"]) for b, v in data["budgets"].items()]
        + [(1.0, full.get("passkey", 1.0))]
        for name, data in sorted(methods.items())
    }
    ppl = {
        name: [(float(b), v["perplexity"]) for b, v in data["budgets"].items()]
        + [(1.0, full.get("perplexity", 1.0))]
        for name, data in sorted(methods.items())
    }
    return {
        "passkey_chart": line_chart(passkey, "KV budget (share of the prompt)", "passkey accuracy"),
        "ppl_chart": line_chart(
            ppl, "KV budget (share of the prompt)", "perplexity (log)", y_log=True
        ),
        "methods": methods,
        "full": full,
    }


def vlm_figures(result: dict[str, Any]) -> dict[str, Any]:
    analytic = result.get("analytic", {}).get("methods", {})
    items = sorted(
        ((name, 100.0 * float(v["flops_reduction"])) for name, v in analytic.items()),
        key=lambda kv: kv[1],
    )
    return {
        "chart": bar_chart(items, "prefill FLOPs saved, % (LLaVA-1.5-7B configuration)"),
        "analytic": analytic,
        "model": result.get("analytic", {}).get("model", {}),
        "formula": result.get("analytic", {}).get("formula", ""),
        "wall": result.get("wall_time", {}).get("methods", {}),
    }


def figures_for(name: str, results: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of measured figures for one implementation, from whichever benchmark measured it."""
    rows: list[dict[str, str]] = []

    def add(benchmark: str, setting: str, figure: str) -> None:
        rows.append({"benchmark": benchmark, "setting": setting, "figure": figure})

    vision = results.get("vision", {}).get("accuracy", {}).get("methods", {}).get(name)
    for p in (vision or {}).get("curve", []):
        left = p.get("patch_fraction_left", 0)
        add("vision", f"keep rate {p['keep_rate']:g}",
            f"accuracy {p['accuracy']:.3f}, patches left {left:.2f}")  # fmt: skip
    llm = results.get("llm", {}).get("kv", {}).get("methods", {}).get(name)
    for budget, v in (llm or {}).get("budgets", {}).items():
        add("llm", f"KV budget {budget}",
            f"passkey {v['passkey']:.2f}, needle {v['needle']:.2f}, perplexity "
            f"{v['perplexity']:.1f}, KV bytes {v['kv_ratio']:.2f} of full")  # fmt: skip
    prompt = results.get("llm", {}).get("prompt", {}).get("methods", {}).get(name)
    for setting, v in sorted((prompt or {}).items()):
        if isinstance(v, dict) and "accuracy" in v:
            add("llm (prompts)", f"target keep {setting}",
                f"kept {v.get('kept_ratio', 0):.2f} of the tokens, answer accuracy "
                f"{v['accuracy']:.2f}")  # fmt: skip
    vlm = results.get("vlm", {}).get("analytic", {}).get("methods", {}).get(name)
    if vlm:
        add("vlm", str(vlm.get("setting", "")),
            f"{100 * float(vlm['flops_reduction']):.1f}% prefill FLOPs saved, "
            f"{vlm['mean_visual_tokens']:g} visual tokens per layer on average")  # fmt: skip
    return rows


def results_files(
    out: Path, records: list[dict[str, Any]], impls: dict[str, Any], results: dict[str, Any]
) -> dict[Path, str]:
    env = environment()
    files: dict[Path, str] = {}
    by_impl: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("impl"):
            by_impl.setdefault(r["impl"], []).append(r)
    rows = []
    for module, info in sorted(impls.items(), key=lambda kv: kv[1]["name"]):
        linked = sorted(by_impl.get(module, []), key=lambda r: r["id"])
        page = {
            "module": module,
            "info": info,
            "paper_level": [r for r in linked if r.get("impl_level") == "paper"],
            "family_level": [r for r in linked if r.get("impl_level") == "family"],
            "figures": figures_for(info["name"], results),
        }
        rows.append(page)
        files[out / "impls" / f"{info['name']}.md"] = env.get_template("site_impl.md").render(
            **page
        )
    files[out / "impls" / "index.md"] = env.get_template("site_impls.md").render(rows=rows)
    figures = {"vision": vision_figures, "llm": llm_figures, "vlm": vlm_figures}
    for bench, make in figures.items():
        if bench in results:
            # Focused runs of the same benchmark (llm_snapkv_long.json, ...) are listed after it.
            extra = {
                name: data
                for name, data in sorted(results.items())
                if name.startswith(bench + "_") and isinstance(data, dict)
            }
            template = env.get_template(f"site_results_{bench}.md")
            files[out / "results" / f"{bench}.md"] = template.render(
                r=results[bench],
                fig=make(results[bench]),
                command=_command(results[bench], bench),
                extra=extra,
            )
    return files
