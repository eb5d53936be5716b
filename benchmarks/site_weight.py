"""Page weights of a built site, as a reader's browser fetches them: bytes per page load
(each response gzipped at level 6, as a static host serves it; already compressed files such
as Pagefind's chunks count as they are) and the bytes the first search fetches.

    python benchmarks/site_weight.py [SITE_DIR]   (default: site/) -> JSON on stdout

Drives Debian's Chromium through Playwright against the directory served on 127.0.0.1, with a
cold cache for each page.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import sys
import threading
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, Response, sync_playwright

PAGES = {
    "home": "/",
    "search": "/search/",
    "paper": "/papers/tome-2023/",
    "browse": "/browse/family/",
}
QUERY = "token merging"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _size(response: Response) -> int:
    try:
        body = response.body()
    except Exception:  # a redirect or an aborted request has no body
        return 0
    return min(len(body), len(gzip.compress(body, compresslevel=6, mtime=0)))


def _load(page: Page, url: str) -> list[Response]:
    seen: list[Response] = []
    page.on("response", lambda response: seen.append(response))
    page.goto(url)
    page.wait_for_load_state("networkidle")
    return seen


def measure(site: Path) -> dict[str, Any]:
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    out: dict[str, Any] = {"site": str(site), "pages": {}}
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        for name, path in PAGES.items():
            context = browser.new_context()
            page = context.new_page()
            responses = _load(page, base + path)
            out["pages"][name] = {
                "requests": len(responses),
                "gzip_bytes": sum(_size(r) for r in responses),
            }
            if name == "search":
                before = len(responses)
                page.fill("input[type=search]#tokenkb-q", QUERY)
                page.wait_for_function(
                    "/works?$/.test(document.getElementById('tokenkb-status').textContent)"
                )
                page.wait_for_load_state("networkidle")
                first = responses[before:]
                out["first_search"] = {
                    "query": QUERY,
                    "requests": len(first),
                    "bytes": sum(_size(r) for r in first),
                }
            context.close()
        browser.close()
    server.shutdown()
    return out


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1] if len(sys.argv) > 1 else "site")), indent=1))
