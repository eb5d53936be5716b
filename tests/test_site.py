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
    (root / "curation").mkdir()
    shutil.copy(ROOT / "curation" / "sources.yaml", root / "curation")
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


# --- A site readers come back to (issue 17) ---------------------------------------------------

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
FACETS = ["modality", "family", "training-free", "kind", "year", "venue"]
# One page of each type, at both widths: screenshots for the eye, and no horizontal scroll.
PAGE_TYPES = {
    "home": "/",
    "search": "/search/?q=token+merging",
    "browse-family": "/browse/family/",
    "browse-venue": "/browse/venue/",
    "paper": "/papers/tome-2023/",
    "paper-hostile": "/papers/hostile-2024/",
    "impls": "/impls/",
    "impl": "/impls/snapkv/",
    "results-vision": "/results/vision/",
    "results-llm": "/results/llm/",
    "results-vlm": "/results/vlm/",
    "about": "/about/",
}


def _wait_for_results(page: Page) -> None:
    page.wait_for_selector("#tokenkb-search[data-ready]", timeout=15000)
    page.wait_for_function(
        "/works?$/.test(document.getElementById('tokenkb-status').textContent)", timeout=15000
    )
    page.wait_for_timeout(500)


def _facets(page: Page) -> list[str]:
    return [
        str(d.get_attribute("data-facet")) for d in page.query_selector_all("details[data-facet]")
    ]


def test_a_shared_link_shows_every_facet(page: Page, base_url: str) -> None:
    """A query or a filter in the link does not hide the other facets or their values."""
    page.goto(f"{base_url}/search/")
    page.wait_for_selector("#tokenkb-search[data-ready]", timeout=15000)
    everything = {f: page.locator(f'details[data-facet="{f}"] input').count() for f in FACETS}
    for link in ("?q=token+merging", "?modality=vlm&training-free=yes"):
        page.goto(f"{base_url}/search/{link}")
        _wait_for_results(page)
        assert _facets(page) == FACETS, link
        shown = {f: page.locator(f'details[data-facet="{f}"] input').count() for f in FACETS}
        assert shown == everything, link
    assert page.locator('details[data-facet="modality"] input[value="vlm"]').is_checked()
    assert page.locator('details[data-facet="training-free"] input[value="yes"]').is_checked()
    assert page.errors == []  # type: ignore[attr-defined]


def test_header_search_from_a_paper_page(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/papers/tome-2023/")
    page.fill("#tokenkb-header-q", "FastV")
    page.press("#tokenkb-header-q", "Enter")
    page.wait_for_url("**/search/?q=FastV")
    _wait_for_results(page)
    assert page.input_value("#tokenkb-q") == "FastV"
    assert _ids(page)[0] == "fastv-2024"
    assert page.errors == [] and page.outside == []  # type: ignore[attr-defined]


def test_every_page_has_the_header_search(project: Path) -> None:
    pages = sorted((project / "site").rglob("*.html"))
    assert len(pages) > 200
    missing = [str(p) for p in pages if 'id="tokenkb-header-q"' not in p.read_text("utf-8")]
    assert missing == []


def test_phone_first_result_is_above_the_fold(browser: Browser, base_url: str) -> None:
    page = browser.new_page(viewport=PHONE)
    page.goto(f"{base_url}/search/")
    page.wait_for_selector("#tokenkb-search[data-ready]", timeout=15000)
    page.fill("#tokenkb-q", "token merging")
    _wait_for_results(page)
    box = page.locator(".tokenkb-result").first.bounding_box()
    assert box is not None and box["y"] + 40 < PHONE["height"], box
    page.screenshot(path=str(ARTIFACTS / "search-typed-390.png"))
    page.close()


@pytest.mark.parametrize("width", ["390", "1366"])
def test_no_horizontal_scroll_on_any_page_type(browser: Browser, base_url: str, width: str) -> None:
    viewport = PHONE if width == "390" else DESKTOP
    page = browser.new_page(viewport=viewport)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    wide = {}
    for name, path in PAGE_TYPES.items():
        page.goto(base_url + path)
        page.wait_for_load_state("networkidle")
        scroll = page.evaluate("document.documentElement.scrollWidth")
        if scroll > viewport["width"]:
            wide[name] = scroll
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"))
    page.close()
    assert wide == {}


def test_chart_text_is_readable_on_a_phone(browser: Browser, base_url: str) -> None:
    """Chart labels render at 11 px or more at 390 px, and every legend entry is visible."""
    page = browser.new_page(viewport=PHONE)
    for path in ("/", "/results/vision/", "/results/llm/", "/results/vlm/"):
        page.goto(base_url + path)
        sizes = page.evaluate(
            "Array.from(document.querySelectorAll('svg.tokenkb-chart text')).map(t =>"
            " t.getAttribute('font-size') * t.ownerSVGElement.getBoundingClientRect().width"
            " / t.ownerSVGElement.viewBox.baseVal.width)"
        )
        assert sizes and min(sizes) >= 11, (path, min(sizes))
        legend = page.locator(".tokenkb-legend li")
        for i in range(legend.count()):
            box = legend.nth(i).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, path
    page.close()


def test_no_code_in_search_excerpts(page: Page, base_url: str) -> None:
    """A family-level usage snippet that names FastV does not make a work match 'fastv'."""
    ids = _search(page, base_url, "fastv")
    assert ids[0] == "fastv-2024" and len(ids) <= 4, ids
    excerpts = page.locator(".tokenkb-excerpt").all_inner_texts()
    code = [e for e in excerpts if "import" in e or "reference_impls" in e or "config" in e]
    assert code == []


def test_filter_only_results_come_newest_first_and_sort(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/search/?modality=diffusion")
    _wait_for_results(page)
    years = [
        int(str(li.get_attribute("data-year"))) for li in page.query_selector_all(".tokenkb-result")
    ]
    assert len(years) > 3 and years == sorted(years, reverse=True)
    page.goto(f"{base_url}/search/?q=merging&sort=title")
    _wait_for_results(page)
    titles = [t.casefold() for t in page.locator(".tokenkb-result-link").all_inner_texts()]
    assert len(titles) > 3 and titles == sorted(titles)
    page.select_option("#tokenkb-sort", "year")
    page.wait_for_url("**sort=year")
    assert page.errors == []  # type: ignore[attr-defined]


def test_bibtex_of_the_result_set(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/search/?modality=ssm")
    _wait_for_results(page)
    count = int(page.locator("#tokenkb-status").inner_text().split()[0])
    page.click("#tokenkb-bib")
    page.wait_for_selector("#tokenkb-bibtex:not([hidden])")
    text = page.input_value("#tokenkb-bibtex")
    keys = sorted(
        line.split("{", 1)[1].rstrip(",") for line in text.splitlines() if line.startswith("@")
    )
    assert len(keys) == count and keys == sorted(_ids(page))
    assert page.outside == []  # type: ignore[attr-defined]


def test_paper_page_links_its_facts_and_related_works(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/papers/tome-2023/")
    for href in ("../../browse/venue/#iclr-2023", "../../browse/year/#2022",
                 "../../browse/family/#merging", "../../browse/modality/#vision"):  # fmt: skip
        assert page.locator(f'a[href="{href}"]').count() == 1, href
    meta = page.locator(".tokenkb-meta")
    summary = meta.locator("xpath=following-sibling::p[1]")
    assert "ToMe pairs up" in summary.inner_text()  # its own paragraph, after the line
    assert page.locator("#related-works").count() == 1
    assert page.locator('#related-works ~ ul a[href^="../"]').count() >= 3
    tags = [("name", "description"), ("property", "og:title"), ("property", "og:description"),
            ("property", "og:url")]  # fmt: skip
    head = {n: page.locator(f'meta[{a}="{n}"]').get_attribute("content") for a, n in tags}
    assert str(head["description"]).startswith("Inside every transformer block, ToMe")
    assert head["og:title"] == "Token Merging: Your ViT But Faster · tokenkb"
    assert head["og:url"] == "https://tokenkb.github.io/tokenkb/papers/tome-2023/"
    canonical = page.locator('link[rel="canonical"]').get_attribute("href")
    assert canonical == head["og:url"]
    edit = page.locator("a", has_text="Edit this record on GitHub").get_attribute("href")
    assert str(edit).endswith("/edit/main/papers/tome-2023.yaml")


def test_hostile_record_head_tags_are_escaped(project: Path) -> None:
    html = (project / "site" / "papers" / "hostile-2024" / "index.html").read_text("utf-8")
    head = html.split("</head>")[0]
    assert "<script>alert" not in head and "<em>" not in head
    assert '<meta name="description" content="A summary with &lt;em&gt;HTML' in head


def test_dark_mode_toggle(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/papers/tome-2023/")
    assert page.get_attribute("body", "data-md-color-scheme") == "default"
    page.locator('label[title="Switch to dark mode"]').click()
    assert page.get_attribute("body", "data-md-color-scheme") == "slate"
    page.screenshot(path=str(ARTIFACTS / "paper-dark-1366.png"))


def test_home_page_reaches_every_section(page: Page, base_url: str) -> None:
    page.set_viewport_size(DESKTOP)
    page.goto(f"{base_url}/")
    for href in ("search/", "browse/modality/", "browse/family/", "browse/year/",
                 "browse/venue/", "impls/", "results/vision/", "about/"):  # fmt: skip
        link = page.locator(f'article a[href="{href}"]').first
        assert link.is_visible(), href
    assert page.locator(".md-tabs").is_visible()  # the sections, at desktop width
    assert page.locator("h2#newest-works + ul li").count() == 8


def test_feed_is_atom(project: Path) -> None:
    import re
    import xml.etree.ElementTree as ET

    atom = "{http://www.w3.org/2005/Atom}"
    feed = ET.parse(project / "site" / "feed.xml").getroot()
    assert feed.tag == f"{atom}feed"
    for name in ("id", "title", "updated", "author"):
        assert feed.find(atom + name) is not None, name
    entries = feed.findall(atom + "entry")
    assert len(entries) == 30
    date = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
    for e in entries:
        for name in ("id", "title", "updated", "link", "summary"):
            assert e.find(atom + name) is not None, name
        assert date.fullmatch(str(e.findtext(atom + "updated")))
        url = str(e.find(atom + "link").get("href"))  # type: ignore[union-attr]
        page = url.removeprefix("https://tokenkb.github.io/tokenkb/")
        assert (project / "site" / page / "index.html").exists(), url
    updated = [str(e.findtext(atom + "updated")) for e in entries]
    assert updated == sorted(updated, reverse=True)
    assert feed.findtext(atom + "updated") == updated[0]


class _ProjectSite(http.server.SimpleHTTPRequestHandler):
    """GitHub Pages for a project site: the site lives under /tokenkb/, and any missing path
    gets 404.html with status 404."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        if not self.path.startswith("/tokenkb/"):
            self.send_error(404)
            return None
        self.path = self.path.removeprefix("/tokenkb")
        local = Path(self.translate_path(self.path))
        if local.is_dir():
            local = local / "index.html"
        if not local.exists():
            body = (Path(self.directory) / "404.html").read_bytes()
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            import io

            return io.BytesIO(body)
        return super().send_head()


def test_404_page_under_a_project_prefix_loads_its_styles(browser: Browser, project: Path) -> None:
    handler = functools.partial(_ProjectSite, directory=str(project / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page(viewport=DESKTOP)
        failed: list[str] = []
        page.on("response", lambda r: r.status >= 400 and failed.append(r.url))
        page.goto(f"http://127.0.0.1:{server.server_port}/tokenkb/no/such/page/")
        page.wait_for_load_state("networkidle")
        assert [u for u in failed if not u.endswith("/no/such/page/")] == []
        sheets = page.evaluate("document.styleSheets.length")
        assert sheets >= 3
        logo = page.locator(".md-header__button.md-logo img, .md-header__button.md-logo svg").first
        box = logo.bounding_box()
        assert box is not None and box["height"] < 60
        page.screenshot(path=str(ARTIFACTS / "404-1366.png"))
        page.close()
    finally:
        server.shutdown()


def test_sitemap_lists_every_page(project: Path) -> None:
    sitemap = (project / "site" / "sitemap.xml").read_text("utf-8")
    assert sitemap.count("<loc>https://tokenkb.github.io/tokenkb/") > 200
