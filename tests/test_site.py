"""The built site in a real browser: Playwright drives Debian's Chromium against the site that
`kb build` makes, served on 127.0.0.1. The site is built once per session from the real records
plus one hostile record. A screenshot of the home page is saved to build/test-artifacts/.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tokenkb.cli import main
from tokenkb.render import build_site, load_records

from .conftest import PAPERS, ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "build" / "test-artifacts"
HOSTILE = Path(__file__).parent / "data" / "render" / "papers" / "hostile-2024.yaml"


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(PAPERS, root / "papers")
    shutil.copy(HOSTILE, root / "papers")
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(ROOT / "reference_impls", root / "reference_impls",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(ROOT / "benchmarks" / "results", root / "benchmarks" / "results")
    build_site(root, load_records(root), lambda message: None)
    return root


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def base_url(project: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(project / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "install Debian's chromium (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors = []  # type: ignore[attr-defined]
    page.outside = []  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]
    page.on(
        "request",
        lambda r: r.url.startswith(base_url) or page.outside.append(r.url),  # type: ignore[attr-defined]
    )
    yield page
    page.close()


def _query_ids(project: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    import json

    capsys.readouterr()
    assert main(["--papers", str(project / "papers"), "query", *args, "--format", "json"]) == 0
    return sorted(r["id"] for r in json.loads(capsys.readouterr().out))


def _ids(page: Page) -> list[str]:
    links = page.query_selector_all(".tokenkb-result-link")
    return [str(link.get_attribute("href")).strip("/").split("/")[-1] for link in links]


def _search(page: Page, base_url: str, text: str) -> list[str]:
    """Type `text` into the search box the way a reader does, and read the result list."""
    page.goto(f"{base_url}/search/")
    page.wait_for_selector("#tokenkb-search[data-ready]", timeout=15000)
    page.fill("#tokenkb-q", text)
    page.wait_for_function(
        "document.getElementById('tokenkb-status').textContent.endsWith('works')"
        " || document.getElementById('tokenkb-status').textContent.endsWith('work')",
        timeout=15000,
    )
    page.wait_for_timeout(700)  # the debounce (200 ms) and the re-ranking
    return _ids(page)


def test_home_page_renders_without_console_errors_or_network(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/")
    assert "tokenkb" in page.title()
    assert page.locator("svg.tokenkb-chart rect").count() > 10
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
    page.goto(f"{base_url}/browse/modality/")
    assert page.locator("table.sortable").count() >= 5
    assert page.errors == [] and page.outside == []  # type: ignore[attr-defined]


def test_search_finds_titles_nicknames_and_authors(page: Page, base_url: str) -> None:
    assert "tome-2023" in _search(page, base_url, "token merging")[:3]
    assert _search(page, base_url, "ToMe")[0] == "tome-2023"
    assert _search(page, base_url, "Token Merging: Your ViT But Faster")[0] == "tome-2023"
    assert "fastv-2024" in _search(page, base_url, "FastV")[:2]
    assert "h2o-2023" in _search(page, base_url, "H2O")[:2]
    assert "tome-2023" in _search(page, base_url, "Bolya")[:3]
    page.screenshot(path=str(ARTIFACTS / "search.png"))
    assert page.errors == [] and page.outside == []  # type: ignore[attr-defined]


def test_filters_match_kb_query(
    page: Page, base_url: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ticking modality vlm and training-free yes shows exactly what kb query returns."""
    expected = _query_ids(project, "--modality", "vlm", "--training-free", capsys=capsys)
    page.goto(f"{base_url}/search/")
    page.wait_for_selector("#tokenkb-search[data-ready]", timeout=15000)
    for facet, value in (("modality", "vlm"), ("training-free", "yes")):
        page.locator(f'details[data-facet="{facet}"] input[value="{value}"]').check()
        page.wait_for_timeout(400)
    page.wait_for_function(
        f"document.getElementById('tokenkb-status').textContent === '{len(expected)} works'",
        timeout=15000,
    )
    while page.locator("#tokenkb-more").is_visible():
        page.locator("#tokenkb-more").click()
        page.wait_for_timeout(300)
    page.wait_for_timeout(500)
    assert sorted(_ids(page)) == expected and len(expected) > 5
    assert "modality=vlm" in page.url and "training-free=yes" in page.url  # shareable link
    page.screenshot(path=str(ARTIFACTS / "filters.png"))
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_search_link_restores_query_and_filters(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/search/?q=merging&modality=diffusion")
    page.wait_for_selector("#tokenkb-search[data-ready]", timeout=15000)
    assert page.input_value("#tokenkb-q") == "merging"
    assert page.locator('details[data-facet="modality"] input[value="diffusion"]').is_checked()
    assert "tome-sd-2023" in _ids(page)


def test_paper_page_shows_its_bibtex_and_implementation(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/papers/tome-2023/")
    code = page.locator("code", has_text="@inproceedings{tome-2023")
    assert code.count() == 1
    assert "booktitle = {ICLR}" in code.inner_text()
    assert page.locator("text=reference_impls.vision.tome").count() >= 1
    assert page.locator('a[href="https://arxiv.org/abs/2210.09461"]').count() >= 1
    assert page.errors == []  # type: ignore[attr-defined]


def test_hostile_record_is_shown_literally(page: Page, base_url: str, project: Path) -> None:
    html = (project / "site" / "papers" / "hostile-2024" / "index.html").read_text("utf-8")
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>Bold" not in html
    page.goto(f"{base_url}/papers/hostile-2024/")
    heading = page.locator("h1").inner_text()
    assert heading.startswith('<script>alert("x")</script> | Pipes ](https://evil.example)')
    assert "`ticks`" in heading and "Über_ünïcødé" in heading
    assert page.errors == []  # type: ignore[attr-defined]


def test_downloads_are_valid(project: Path) -> None:
    import json

    import bibtexparser

    rows = json.loads((project / "site" / "papers.json").read_text("utf-8"))
    assert {r["id"] for r in rows} == {p.stem for p in (project / "papers").glob("*.yaml")}
    library = bibtexparser.parse_string((project / "site" / "papers.bib").read_text("utf-8"))
    assert not library.failed_blocks and len(library.entries) == len(rows)


def test_implementation_and_results_pages_render(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/impls/")
    assert page.locator("table.sortable tbody tr").count() > 40
    page.goto(f"{base_url}/impls/snapkv/")
    assert page.locator("text=reference_impls.kv.snapkv").count() >= 1
    page.goto(f"{base_url}/results/llm/")
    assert page.locator("svg.tokenkb-chart polyline").count() >= 5
    page.screenshot(path=str(ARTIFACTS / "results-llm.png"))
    assert page.errors == [] and page.outside == []  # type: ignore[attr-defined]
