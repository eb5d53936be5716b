"""Text repair and link normalisation shared by the importers.

`repair` undoes encoding damage (UTF-8 read as cp1252 or Mac Roman). `read_link` turns one URL
into the identifiers it carries (arXiv, DOI, IEEE, OpenReview, ACL Anthology), a canonical paper
URL, a code repository, or a project page. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import ftfy

from ..model import normalize_arxiv, normalize_github

_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]{2,}")


def _undo_mac_roman(match: re.Match[str]) -> str:
    run = match.group()
    try:
        fixed = run.encode("mac_roman").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return run
    return fixed


def repair(text: str) -> str:
    """`text` with mojibake undone; curly quotes and everything else are left as written.

    ftfy handles UTF-8 read as cp1252/latin-1 (`Donâ€™t` -> `Don't`, curly apostrophe kept);
    runs of non-ASCII
    characters that are UTF-8 read as Mac Roman (`üî•` -> `🔥`) are decoded here, since ftfy
    leaves those that also read as plausible text.
    """
    fixed = ftfy.fix_text(text, uncurl_quotes=False, normalization="NFC")
    return _NON_ASCII_RUN.sub(_undo_mac_roman, fixed)


def clean_title(title: str) -> str:
    """One line, single spaces, no trailing full stop or comma."""
    title = " ".join(title.split())
    title = re.sub(r"\s+([:;,])", r"\1", title)
    title = re.sub(r":(?=\S)", ": ", title)
    return title.strip(" ,.;")


@dataclass
class Link:
    """What one URL tells about a work."""

    url: str
    arxiv: str | None = None
    doi: str | None = None
    ieee: str | None = None
    openreview: str | None = None
    acl: str | None = None
    paper: str | None = None  # a landing page or PDF of the paper that is not arXiv
    code: str | None = None
    project: str | None = None  # a page that is neither the paper nor a repository


_CODE_HOSTS = ("github.com", "gitlab.com", "bitbucket.org", "huggingface.co", "gitee.com")
_PAPER_HOSTS = (
    "openaccess.thecvf.com",
    "ecva.net",
    "www.ecva.net",
    "link.springer.com",
    "dl.acm.org",
    "proceedings.neurips.cc",
    "papers.nips.cc",
    "proceedings.mlr.press",
    "ojs.aaai.org",
    "www.ijcai.org",
    "ieeexplore.ieee.org",
    "openreview.net",
    "aclanthology.org",
    "www.researchgate.net",
    "ui.adsabs.harvard.edu",
    "doi.org",
    "dx.doi.org",
)


def read_link(url: str) -> Link:
    """Identifiers and role of one URL (an arXiv pdf with `.pdf` or `v2`, a DOI resolver link,
    an IEEE `arnumber=` or `/document/`, an OpenReview forum or pdf, an ACL Anthology page)."""
    url = url.strip().rstrip(".,;)")
    link = Link(url=url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return link
    host = parts.netloc.lower()
    path = unquote(parts.path)
    query = parse_qs(parts.query)
    if host.endswith("arxiv.org"):
        link.arxiv = normalize_arxiv(path)
        if link.arxiv is None:
            link.paper = url
        return link
    if host in ("doi.org", "dx.doi.org"):
        doi = path.lstrip("/")
        arxiv = re.match(r"10\.48550/arxiv\.(.+)$", doi, re.I)
        if arxiv:
            link.arxiv = normalize_arxiv(arxiv.group(1))
        else:
            link.doi = doi
        return link
    if host == "ieeexplore.ieee.org":
        number = query.get("arnumber", [None])[0] or _search(r"/document/([0-9]{5,10})", path)
        link.ieee = number
        link.paper = f"https://ieeexplore.ieee.org/document/{number}" if number else url
        return link
    if host == "openreview.net":
        forum = query.get("id", [None])[0]
        link.openreview = forum
        link.paper = f"https://openreview.net/forum?id={forum}" if forum else url
        return link
    if host == "aclanthology.org":
        acl = _search(r"^/([^/]+?)(?:\.pdf)?/?$", path)
        link.acl = acl
        link.paper = f"https://aclanthology.org/{acl}" if acl else url
        return link
    if host == "dl.acm.org":
        link.doi = _search(r"/doi/(?:abs/|pdf/|full/)?(10\.[0-9]{4,9}/[^\s?#]+)", path)
        link.paper = url
        return link
    if host == "link.springer.com":
        link.doi = _search(r"/(?:chapter|article)/(10\.[0-9]{4,9}/[^\s?#]+)", path)
        link.paper = url
        return link
    if host in ("github.com", "www.github.com"):
        link.code = normalize_github(url) or url
        return link
    if host.endswith("github.io"):
        if path.lower().endswith(".pdf"):
            link.paper = url  # a PDF on a personal page is the paper
        else:
            link.project = url
        return link
    if any(host == code or host.endswith("." + code) for code in _CODE_HOSTS):
        link.code = url
        return link
    if (
        host in _PAPER_HOSTS
        or host.endswith(".thecvf.com")
        or host.startswith("proceedings.")
        or path.lower().endswith(".pdf")
    ):
        link.paper = url
        return link
    link.project = url
    return link


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None


URL = re.compile(r"https?:/{1,2}[^\s\)\]\}>\"'<,]+(?:,[^\s\)\]\}>\"'<,]+)*")


def find_urls(text: str) -> list[str]:
    """URLs in free text, with trailing punctuation removed (`https:/x` typos kept as written)."""
    return [url.rstrip(".,;:") for url in URL.findall(text)]


_PARTICLES = {"van", "von", "de", "der", "den", "del", "da", "di", "le", "la", "du"}


def author_name(name: str) -> str:
    """'Bolya, Daniel' -> 'Daniel Bolya'; other forms are kept, whitespace collapsed."""
    name = " ".join(name.replace("\u00a0", " ").split()).strip(" ,.;*")
    if name.count(",") == 1:
        last, first = (part.strip() for part in name.split(","))
        if first and last and not re.search(r"\d", name):
            return f"{first} {last}"
    return name
