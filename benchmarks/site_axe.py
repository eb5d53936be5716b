"""axe-core on the built site: every violation of impact serious or critical, per page and width.

    npm install axe-core@4   (anywhere; not a project dependency)
    python benchmarks/site_axe.py path/to/axe.min.js [SITE_DIR] -> JSON on stdout

Injects axe into each page (served from SITE_DIR on 127.0.0.1, Debian's Chromium through
Playwright) at 1366x900 and 390x844, in the light and the dark scheme.
"""

from __future__ import annotations

import functools
import http.server
import json
import sys
import threading
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

PAGES = {
    "home": "/",
    "search": "/search/?q=token+merging",
    "paper": "/papers/tome-2023/",
    "browse": "/browse/family/",
    "impl": "/impls/snapkv/",
    "results": "/results/llm/",
}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def audit(axe: Path, site: Path) -> dict[str, Any]:
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    script = axe.read_text(encoding="utf-8")
    found: dict[str, Any] = {}
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        for width, height in ((1366, 900), (390, 844)):
            for scheme in ("light", "dark"):
                context = browser.new_context(
                    viewport={"width": width, "height": height}, color_scheme=scheme
                )
                page = context.new_page()
                for name, path in PAGES.items():
                    page.goto(base + path)
                    page.wait_for_load_state("networkidle")
                    page.add_script_tag(content=script)
                    result = page.evaluate("axe.run(document).then(r => r.violations)")
                    serious = [
                        {
                            "id": v["id"],
                            "impact": v["impact"],
                            "nodes": len(v["nodes"]),
                            "example": v["nodes"][0]["target"],
                        }
                        for v in result
                        if v["impact"] in ("serious", "critical")
                    ]
                    others = sorted({v["id"] for v in result} - {v["id"] for v in serious})
                    found[f"{name} {width} {scheme}"] = {"serious": serious, "minor": others}
                context.close()
        browser.close()
    server.shutdown()
    return found


if __name__ == "__main__":
    site = Path(sys.argv[2] if len(sys.argv) > 2 else "site")
    print(json.dumps(audit(Path(sys.argv[1]), site), indent=1))
