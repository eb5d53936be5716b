"""Build speed and search weight.

    python benchmarks/build.py [--sizes 1000 10000] [--no-browser]

1. Render time of everything `kb build` generates from records (the awesome lists and the site
   sources, without mkdocs) for synthetic bases of each size; target under 10 s at 10k.
2. The full `kb build` (validate, render, mkdocs --strict, Pagefind) on the real `papers/`, as
   a subprocess, median of three; target under 60 s on 2 cores.
3. The bytes a browser downloads for its first search on the built site: Chromium (Debian's,
   through Playwright) opens /search/, types "token merging" and waits for the results; every
   response is counted, split into Pagefind's files (the search itself) and the rest (the page,
   theme CSS/JS); target under 300 KB for the search.

Prints JSON.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tokenkb.renderers.awesome import awesome_files  # noqa: E402
from tokenkb.renderers.site import site_files  # noqa: E402
from tokenkb.taxonomy import Family, Modality  # noqa: E402


def synthetic(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = [f"word{i}" for i in range(3000)]
    records = []
    for index in range(n):
        year = rng.randint(2019, 2025)
        records.append(
            {
                "id": f"work{index}-{year}",
                "title": " ".join(rng.choice(words).capitalize() for _ in range(8)),
                "aliases": [f"W{index}"],
                "authors": [f"Author {rng.randint(0, 999)}" for _ in range(4)],
                "year": year,
                "venue": rng.choice(["ICLR", "CVPR", "NeurIPS", "EMNLP"]) + f" {year}",
                "kind": "method",
                "modality": [rng.choice(list(Modality)).value],
                "family": [rng.choice(list(Family)).value],
                "training_free": rng.choice([True, False, None]),
                "arxiv": f"{year % 100:02d}{rng.randint(1, 12):02d}.{index % 100000:05d}",
                "doi": None,
                "openreview": None,
                "acl": None,
                "ieee": None,
                "paper": f"https://arxiv.org/abs/{year % 100:02d}01.{index % 100000:05d}",
                "code": "https://github.com/example/repo" if index % 2 else None,
                "project": None,
                "summary": "A synthetic summary of a synthetic method.",
                "results": [],
                "impl": None,
                "impl_level": None,
                "sources": [{"source": "manual", "line": None, "fields": ["title"]}],
            }
        )
    return records


def render_time(n: int) -> dict[str, Any]:
    records = synthetic(n)
    start = time.perf_counter()
    files = awesome_files(Path("/tmp/x"), records)
    files.update(site_files(Path("/tmp/x/docs"), records, {}))
    seconds = time.perf_counter() - start
    return {
        "records": n,
        "render_seconds": round(seconds, 2),
        "files": len(files),
        "megabytes": round(sum(len(t) for t in files.values()) / 1e6, 1),
    }


def full_build() -> dict[str, Any]:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tokenkb.cli", "build"], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - start)
    return {
        "seconds_median": round(statistics.median(times), 2),
        "seconds": [round(t, 2) for t in times],
    }


def first_search_bytes(site: Path, query: str = "token merging") -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    sizes: dict[str, int] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()

        def count(response: Any) -> None:
            try:
                sizes[response.url] = len(response.body())
            except Exception:  # a redirect has no body
                sizes[response.url] = 0

        page.on("response", count)
        page.goto(f"{base}/search/")
        page.wait_for_selector("#tokenkb-search[data-ready]", timeout=15000)
        page.fill("#tokenkb-q", query)
        page.wait_for_function(
            "document.getElementById('tokenkb-status').textContent.endsWith('works')"
        )
        page.wait_for_timeout(1500)
        browser.close()
    server.shutdown()
    search = {u: b for u, b in sizes.items() if "/pagefind/" in u}
    return {
        "query": query,
        "search_kilobytes": round(sum(search.values()) / 1024, 1),
        "search_files": len(search),
        "page_and_theme_kilobytes": round(
            sum(b for u, b in sizes.items() if u not in search) / 1024, 1
        ),
        "largest_search_files": sorted(
            ((u.split("/pagefind/")[1].split("?")[0], b) for u, b in search.items()),
            key=lambda x: -x[1],
        )[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "build"}
    report["render"] = [render_time(n) for n in args.sizes]
    report["kb_build_real_data"] = full_build()
    if not args.no_browser:
        report["first_search"] = first_search_bytes(ROOT / "site")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
