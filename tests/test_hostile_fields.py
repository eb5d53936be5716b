"""Hostile and impossible values: the schema refuses them, and every renderer escapes what it
prints even when a record never went through the schema.

Three layers:
- the model: URL and DOI characters, the URL scheme, invisible and bidi-control text, lengths,
  arXiv ids, years and venue years (with today pinned through `model.today`);
- the renderers, fed records built as plain dicts (no validation): the Markdown they produce is
  run through Python-Markdown with the site's extensions (and a CommonMark reader for GitHub's
  side), and no tag, attribute or link target may come from the record;
- `formats.md_escape`, whose output must show exactly the original text, for every ASCII
  punctuation character and for random text (a derandomised property test).
"""

from __future__ import annotations

import datetime as dt
import re
import string
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import markdown
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from tokenkb import model
from tokenkb.formats import md_escape, md_url, to_md
from tokenkb.problems import RecordError
from tokenkb.renderers.awesome import awesome_files
from tokenkb.renderers.site import site_files
from tokenkb.store import parse_record

from .conftest import ROOT

SCHEMA = jsonschema.Draft202012Validator(
    yaml.safe_load((ROOT / "schema" / "paper.schema.json").read_text(encoding="utf-8"))
)
TODAY = dt.date(2026, 6, 15)


@pytest.fixture(autouse=True)
def pinned_today(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every date rule reads today through `model.today`; pin it so messages never drift."""
    monkeypatch.setattr(model, "today", lambda: TODAY)


BASE: dict[str, Any] = {
    "id": "valid-2023",
    "title": "A Valid Title",
    "authors": ["Ada Lovelace"],
    "year": 2023,
    "venue": "ICLR 2023",
    "kind": "method",
    "modality": ["vision"],
    "arxiv": "2301.00001",
}


def problems(**changes: Any) -> list[str]:
    """The messages `kb validate` gives for BASE with `changes` (None removes a field)."""
    data = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    # allow_unicode=False writes every non-ASCII or invisible character as a YAML escape, so
    # the text reaches the schema exactly as given, whatever it holds.
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=1 << 20)
    try:
        parse_record(text, f"{data['id']}.yaml", stem=data["id"])
    except RecordError as exc:
        return [p.message for p in exc.problems]
    return []


def schema_errors(**changes: Any) -> list[str]:
    data = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    return [e.message for e in SCHEMA.iter_errors(data)]


# --- URL fields -------------------------------------------------------------------------------


def _percent_encoded(value: str, safe: str) -> str:
    """`value` with every character outside `safe` (and ASCII letters and digits) encoded."""
    return quote(value, safe=safe)


URL_SAFE = "-._~:/?#[]@!$&()*+,;=%"
DOI_SAFE = "-._~:/@!$&()*+,;=%"


def _bad_char(field: str, value: str, shown: str, encoded: str, safe: str = URL_SAFE) -> str:
    fixed = _percent_encoded(value, safe.replace("[]", ""))
    return (
        f"{field}: {value!r} contains {shown}, which a link cannot hold as it is; "
        f"percent-encode it as {encoded} (write {fixed!r})"
    )


HOSTILE_URLS = [
    ("https://example.com/x)<svg/onload=alert(1)>", "'<'", "%3C"),
    ("https://example.com/a'b", '"\'"', "%27"),
    ('https://example.com/a"b', "'\"'", "%22"),
    ("https://example.com/a`b", "'`'", "%60"),
    ("https://example.com/a b", "a space", "%20"),
    ("https://example.com/a\tb", "U+0009 (a control character)", "%09"),
    ("https://example.com/a\x7fb", "U+007F (a control character)", "%7F"),
    ("https://example.com/a\\b", "'\\\\'", "%5C"),
    ("https://example.com/{x}", "'{'", "%7B"),
    ("https://example.com/a|b", "'|'", "%7C"),
    ("https://example.com/a^b", "'^'", "%5E"),
    ("https://example.com/a[0]", "'['", "%5B"),
    ("https://example.com/a>b", "'>'", "%3E"),
    ("https://example.com/a\u00a0b", "U+00A0 (NO-BREAK SPACE)", "%C2%A0"),
    ("https://example.com/a\u202eb", "U+202E (RIGHT-TO-LEFT OVERRIDE)", "%E2%80%AE"),
    ("https://example.com/a\u200bb", "U+200B (ZERO WIDTH SPACE)", "%E2%80%8B"),
    ("https://example.com/\u2024x", "U+2024 (ONE DOT LEADER)", "%E2%80%A4"),
]


@pytest.mark.parametrize("field", ["paper", "code", "project"])
@pytest.mark.parametrize(("value", "shown", "encoded"), HOSTILE_URLS)
def test_url_fields_refuse_characters_a_link_cannot_hold(
    field: str, value: str, shown: str, encoded: str
) -> None:
    """Each character is named, with its percent-encoding, in every URL field."""
    assert problems(**{field: value}) == [_bad_char(field, value, shown, encoded)]
    assert schema_errors(**{field: value}), "the JSON Schema lets an editor accept it"


def test_github_tree_path_cannot_smuggle_a_quote() -> None:
    value = "https://github.com/owner/repo/tree/main/x'onmouseover=alert(1)"
    assert problems(code=value) == [_bad_char("code", value, '"\'"', "%27")]
    assert schema_errors(code=value)


def test_a_bad_percent_escape_is_refused() -> None:
    value = "https://example.com/100%-sure"
    assert problems(project=value) == [
        f"project: {value!r} has '%' not followed by two hex digits; write a literal '%' as %25"
    ]
    assert schema_errors(project=value)


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com/caf%C3%A9",
        "https://de.wikipedia.org/wiki/Café",
        "https://ja.wikipedia.org/wiki/東京",
        "https://example.com/a_(b)",
        "https://example.com/?a=1&b=2;c=3#frag",
        "https://example.com/~user/!$*+,=:@",
        "https://hi.wikipedia.org/wiki/हिन्दी",
    ],
)
def test_legitimate_urls_and_iris_pass(value: str) -> None:
    assert problems(project=value) == []
    assert schema_errors(project=value) == []


@pytest.mark.parametrize(
    "value",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox",
        "https:javascript:alert(1)",
        "//example.com/x",
        "https://javascript:alert(1)",
    ],
)
@pytest.mark.parametrize("field", ["paper", "code", "project"])
def test_only_https_links_exist(field: str, value: str) -> None:
    found = problems(**{field: value})
    assert len(found) == 1 and found[0].startswith(f"{field}: "), found
    assert schema_errors(**{field: value})


@pytest.mark.parametrize(
    "value",
    ["https://a..example.com/x", "https://-evil.example.com/", "https://.example.com/",
     "https://example-.com/", "https://example.c0m/"],
)  # fmt: skip
def test_host_names_are_dot_separated_labels(value: str) -> None:
    assert problems(project=value) == [
        f"project: {value!r} is not an https URL such as 'https://arxiv.org/abs/2210.09461'"
    ]
    assert schema_errors(project=value)


def test_an_overlong_id_is_refused_without_echoing_it() -> None:
    """A file name over 255 bytes cannot be written at all."""
    value = "a" * 300 + "-2023"
    assert problems(id=value) == [
        "id: is 305 characters; keep an id to 100 or fewer (a short name and the year, e.g. "
        "'tome-2023')"
    ]
    assert schema_errors(id=value)


def test_an_overlong_url_is_refused_without_echoing_it() -> None:
    value = "https://example.com/" + "a" * 3000
    assert problems(paper=value) == [
        "paper: is 3020 characters; keep it to 2000 or fewer (a link that long is not a paper's)"
    ]
    assert schema_errors(paper=value)


# --- DOIs -------------------------------------------------------------------------------------

SICI = "10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0"


def test_a_doi_with_angle_brackets_is_written_percent_encoded() -> None:
    """Such DOIs exist; the DOI Handbook allows the percent-encoded form, which is safe."""
    assert problems(doi=SICI) == [
        f"doi: {SICI!r} contains '<', which a link cannot hold as it is; percent-encode it as "
        "%3C (write '10.1002/(SICI)1097-4571(199806)49:8%3C693::AID-ASI4%3E3.0.CO;2-0')"
    ]
    assert problems(doi="10.1002/(SICI)1097-4571(199806)49:8%3C693::AID-ASI4%3E3.0.CO;2-0") == []
    assert schema_errors(doi=SICI)


@pytest.mark.parametrize(
    ("value", "shown", "encoded"),
    [
        ('10.1000/a"b', "'\"'", "%22"),
        ("10.1000/a'b", '"\'"', "%27"),
        ("10.1000/a b", "a space", "%20"),
        ("10.1000/a`b", "'`'", "%60"),
        ("10.1000/a#b", "'#'", "%23"),
        ("10.1000/a?b", "'?'", "%3F"),
        ("10.1000/a[b", "'['", "%5B"),
        ("10.1000/a\u202eb", "U+202E (RIGHT-TO-LEFT OVERRIDE)", "%E2%80%AE"),
    ],
)
def test_doi_characters(value: str, shown: str, encoded: str) -> None:
    """`#` and `?` would end the path of https://doi.org/<doi>, so they are encoded too."""
    assert problems(doi=value) == [_bad_char("doi", value, shown, encoded, DOI_SAFE)]
    assert schema_errors(doi=value)


def test_legitimate_dois_pass() -> None:
    for value in ("10.1109/CVPR52729.2023.00123", "10.1007/978-3-031-41731-3_7",
                  "10.18653/v1/2022.acl-long.1", "10.1000/Ünïcode.x"):  # fmt: skip
        assert problems(doi=value) == [], value
        assert schema_errors(doi=value) == [], value


# --- text -------------------------------------------------------------------------------------

INVISIBLE = {
    "\u200b": "U+200B (ZERO WIDTH SPACE)",
    "\u2800": "U+2800 (BRAILLE PATTERN BLANK)",
    "\ufeff": "U+FEFF (ZERO WIDTH NO-BREAK SPACE)",
    "\u00ad": "U+00AD (SOFT HYPHEN)",
    "\u3164": "U+3164 (HANGUL FILLER)",
    "\u2060": "U+2060 (WORD JOINER)",
}


@pytest.mark.parametrize("char", sorted(INVISIBLE))
@pytest.mark.parametrize(
    ("field", "label"),
    [("title", "title"), ("aliases", "aliases[0]"), ("authors", "authors[0]"),
     ("summary", "summary"), ("results", "results[0]")],
)  # fmt: skip
def test_text_made_only_of_invisible_characters_is_refused(
    char: str, field: str, label: str
) -> None:
    value = char * 3
    given_value: Any = [value] if field in ("aliases", "authors", "results") else value
    assert problems(**{field: given_value}) == [
        f"{label}: has no letter or digit, only invisible characters such as {INVISIBLE[char]}; "
        "write the text itself"
    ]


@pytest.mark.parametrize("char", ["\u200b", "\ufeff", "\u2800", "\u00ad"])
def test_text_cannot_start_or_end_with_an_invisible_character(char: str) -> None:
    for value in (f"{char}Token Merging", f"Token Merging{char}"):
        assert problems(title=value) == [
            f"title: starts or ends with the invisible character {INVISIBLE[char]}; remove it"
        ]


BIDI = {
    "\u202a": "U+202A (LEFT-TO-RIGHT EMBEDDING)",
    "\u202b": "U+202B (RIGHT-TO-LEFT EMBEDDING)",
    "\u202c": "U+202C (POP DIRECTIONAL FORMATTING)",
    "\u202d": "U+202D (LEFT-TO-RIGHT OVERRIDE)",
    "\u202e": "U+202E (RIGHT-TO-LEFT OVERRIDE)",
    "\u2066": "U+2066 (LEFT-TO-RIGHT ISOLATE)",
    "\u2067": "U+2067 (RIGHT-TO-LEFT ISOLATE)",
    "\u2068": "U+2068 (FIRST STRONG ISOLATE)",
    "\u2069": "U+2069 (POP DIRECTIONAL ISOLATE)",
}


@pytest.mark.parametrize("char", sorted(BIDI))
@pytest.mark.parametrize(
    ("field", "label"), [("title", "title"), ("authors", "authors[0]"), ("summary", "summary")]
)
def test_bidi_controls_are_refused_anywhere_in_text(char: str, field: str, label: str) -> None:
    """Trojan-Source spoofing: the text would display differently from what it is."""
    value = f"Token {char}Merging"
    given_value: Any = [value] if field == "authors" else value
    assert problems(**{field: given_value}) == [
        f"{label}: contains {BIDI[char]}, a bidirectional control that makes text display "
        "differently from what it is; remove it"
    ]
    assert schema_errors(**{field: given_value})


@pytest.mark.parametrize(
    "value",
    [
        "Token Merging: Your ViT But Faster",
        "ToMe²",
        "Λ-ViT",
        "自适应令牌剪枝",
        "नमस्ते दुनिया",
        "مرحبا بالعالم",
        "Token\u200dMerging",  # a joiner inside a word is part of some scripts
        "2x",
    ],
)
def test_ordinary_text_in_any_script_passes(value: str) -> None:
    assert problems(title=value, aliases=[value + " (alias)"], authors=[value]) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("title", "T" * 501, "title: is 501 characters; keep it to 500 or fewer"),
        ("aliases", ["A" * 501], "aliases[0]: is 501 characters; keep it to 500 or fewer"),
        ("authors", ["N" * 201], "authors[0]: is 201 characters; keep it to 200 or fewer"),
        ("results", ["R" * 501], "results[0]: is 501 characters; keep it to 500 or fewer"),
        (
            "authors",
            [f"Author {i}" for i in range(2001)],
            "authors: lists 2001 entries; keep it to 2000 or fewer",
        ),
        (
            "aliases",
            [f"Alias {i}" for i in range(21)],
            "aliases: lists 21 entries; keep it to 20 or fewer",
        ),
        (
            "results",
            [f"Result {i}" for i in range(21)],
            "results: lists 21 entries; keep it to 20 or fewer",
        ),
    ],
)
def test_lengths_have_a_sane_maximum(field: str, value: Any, message: str) -> None:
    assert problems(**{field: value}) == [message]
    assert schema_errors(**{field: value})


def test_lengths_at_the_limit_pass() -> None:
    assert problems(title="T" * 500, authors=["N" * 200]) == []
    assert problems(authors=[f"Author {i}" for i in range(2000)]) == []


# --- arXiv ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "9912.12345",
            "'9912.12345' is not an arXiv id yet: it would be from December 2099, after this "
            "month (June 2026); a paper from 1999 has an id such as 'hep-th/9912001' "
            "(archive/YYMMNNN)",
        ),
        (
            "0703.0001",
            "'0703.0001' is not an arXiv id: YYMM.NNNN ids begin in April 2007 (0704); an "
            "earlier paper has an id such as 'hep-th/0703001' (archive/YYMMNNN)",
        ),
        (
            "2301.00001x",
            "'2301.00001x' is not a bare arXiv id such as '2210.09461' (no URL, 'arXiv:' "
            "prefix, version or '.pdf'); did you mean '2301.00001'?",
        ),
        (
            "2313.00001",
            "'2313.00001' is not an arXiv id: month 13 is not a month (01 to 12)",
        ),
        (
            "2300.00001",
            "'2300.00001' is not an arXiv id: month 00 is not a month (01 to 12)",
        ),
        (
            "2607.00001",
            "'2607.00001' is not an arXiv id yet: it would be from July 2026, after this month "
            "(June 2026)",
        ),
        (
            "5001.00001",
            "'5001.00001' is not an arXiv id yet: it would be from January 2050, after this "
            "month (June 2026)",
        ),
        (
            "1412.00001",
            "'1412.00001' is not an arXiv id: ids before 2015 have 4 digits after the dot, "
            "from 2015 on 5",
        ),
        (
            "2301.0001",
            "'2301.0001' is not an arXiv id: ids from 2015 on have 5 digits after the dot, "
            "earlier ones 4",
        ),
        (
            "cs/9107001",
            "'cs/9107001' is not an arXiv id: archive/YYMMNNN ids run from August 1991 (9108) "
            "to March 2007 (0703); for 9107 check the id",
        ),
        (
            "cs/0801001",
            "'cs/0801001' is not an arXiv id: archive/YYMMNNN ids run from August 1991 (9108) "
            "to March 2007 (0703); from April 2007 ids are YYMM.NNNN such as '0801.0001'",
        ),
        (
            "cs/2301001",
            "'cs/2301001' is not an arXiv id: archive/YYMMNNN ids run from August 1991 (9108) "
            "to March 2007 (0703); from April 2007 ids are YYMM.NNNNN such as '2301.00001'",
        ),
        (
            "cs/0113001",
            "'cs/0113001' is not an arXiv id: month 13 is not a month (01 to 12)",
        ),
    ],
)
def test_impossible_arxiv_ids(value: str, message: str) -> None:
    assert problems(arxiv=value)[0] == f"arxiv: {message}"


@pytest.mark.parametrize(
    "value", ["0704.0001", "1412.9999", "1501.00001", "2606.12345", "hep-th/9108001",
              "cs/0703999", "math.GT/0309136", "cs/0112017"]
)  # fmt: skip
def test_possible_arxiv_ids(value: str) -> None:
    # The year rules compare year with the id's year; keep them out of the way here.
    year = 2007 if "/" in value else 2000 + int(value[:2])
    assert problems(arxiv=value, year=year, venue=None, id=f"valid-{year}") == []


def test_json_schema_knows_the_arxiv_id_ranges() -> None:
    for value in ("0703.0001", "2313.00001", "1412.00001", "2301.0001", "cs/0801001"):
        assert schema_errors(arxiv=value), value
    assert schema_errors(arxiv="0704.0001") == []


def test_normalize_arxiv_finds_only_possible_ids() -> None:
    assert model.normalize_arxiv("https://arxiv.org/abs/9912.12345") is None
    assert model.normalize_arxiv("https://arxiv.org/abs/2606.12345v2") == "2606.12345"
    assert model.normalize_arxiv("https://arxiv.org/abs/2607.12345") is None


# --- years ------------------------------------------------------------------------------------


def test_year_is_not_after_this_year() -> None:
    assert problems(year=2027, id="valid-2027", venue=None, arxiv=None) == [
        "year: 2027 is not a plausible year (1950 to 2026)"
    ]
    assert problems(year=2026, id="valid-2026", venue=None, arxiv=None) == []


def test_venue_year_is_at_most_next_year() -> None:
    """Venues are announced a year ahead; further is a typo (`kb new` made token-merging-2099)."""
    assert problems(year=2026, id="valid-2027", venue="ICLR 2027", arxiv=None) == []
    assert problems(year=2026, id="token-merging-2099", venue="ICLR 2099", arxiv=None) == [
        "venue: 'ICLR 2099' is after next year; a venue year is 2027 or earlier"
    ]


def test_no_venue_is_suggested_beyond_next_year() -> None:
    """Importers and `kb new` read venues through `suggest_venue`: 'Neurips 2099' gives none."""
    assert model.suggest_venue("Neurips 2099") is None
    assert model.suggest_venue("NeurIPS'99") is None
    assert model.suggest_venue("Neurips 2027") == "NeurIPS 2027"
    assert problems(year=2023, venue="Neurips 2099") == [
        "venue: 'Neurips 2099' is after next year; a venue year is 2027 or earlier"
    ]


def test_the_id_year_follows_the_year_rules() -> None:
    """An id may end in the venue year, so the furthest id year is next year's too."""
    assert problems(year=2026, id="valid-2028", venue="ICLR 2027", arxiv=None) == [
        "id year 2028 matches neither year (2026) nor the venue year; use 'valid-2026' or "
        "'valid-2027'"
    ]


def test_today_is_read_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "today", lambda: dt.date(2031, 1, 1))
    assert problems(year=2031, id="valid-2032", venue="ICLR 2032", arxiv="3101.00001") == []


# --- renderers: nothing from a record becomes markup ------------------------------------------


class _MkdocsLoader(yaml.SafeLoader):
    """mkdocs.yml's `!ENV [NAME, default]` tags read as their default."""


_MkdocsLoader.add_constructor(
    "!ENV",
    lambda loader, node: loader.construct_sequence(node)[-1],  # type: ignore[arg-type]
)
SITE_CONFIG = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_MkdocsLoader)


def _site_markdown() -> markdown.Markdown:
    """Python-Markdown with exactly the extensions (and options) of mkdocs.yml."""
    names: list[str] = []
    configs: dict[str, Any] = {}
    for item in SITE_CONFIG["markdown_extensions"]:
        if isinstance(item, dict):
            ((name, options),) = item.items()
            names.append(name)
            configs[name] = options or {}
        else:
            names.append(item)
    return markdown.Markdown(extensions=names, extension_configs=configs)


SITE_MD = _site_markdown()
# A CommonMark reader with GitHub's tables and strikethrough (how GitHub shows awesome/).
GFM = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def site_html(text: str) -> str:
    SITE_MD.reset()
    return SITE_MD.convert(text)


def gfm_html(text: str) -> str:
    return GFM.render(text)


class _Tree(HTMLParser):
    """Tags, attributes and visible text of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(name, value or "") for name, value in attrs]

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def tree(html: str) -> _Tree:
    parsed = _Tree()
    parsed.feed(html)
    parsed.close()
    return parsed


EVIL_URL = "https://example.com/x)<svg/onload=alert(1)>"
QUOTE_URL = "https://github.com/owner/repo/tree/x'onmouseover=alert(1)//\"y"
SPACE_URL = 'https://example.com/a b "title" [x](javascript:alert(1))'
SCRIPT_URL = "javascript:alert(1)"

HOSTILE_RECORD: dict[str, Any] = {
    "id": "evil-2024",
    "title": "Evil <img src=x onerror=alert(1)> ~tilde~ | pipe",
    "aliases": ["A)<svg onload=alert(1)>"],
    "authors": ["Eve <script>alert(1)</script>"],
    "year": 2024,
    "venue": "ICLR 2024",
    "kind": "method",
    "modality": ["vision"],
    "family": ["pruning"],
    "training_free": True,
    "arxiv": "2401.00001",
    "doi": "10.1000/x)<svg onload=alert(1)>",
    "openreview": None,
    "acl": None,
    "ieee": None,
    "paper": EVIL_URL,
    "code": QUOTE_URL,
    "project": SPACE_URL,
    "summary": "- a <b>list</b>\n# heading",
    "results": ["1. first", "> quote"],
    "impl": None,
    "impl_level": None,
    "sources": [{"source": "manual", "line": None, "fields": []}],
}

ALLOWED_TAGS = {
    "p", "ul", "ol", "li", "a", "strong", "em", "code", "pre", "h1", "h2", "h3", "table",
    "thead", "tbody", "tr", "th", "td", "div", "span", "small", "hr", "br", "del", "s",
}  # fmt: skip
ALLOWED_ATTRS = {"href", "id", "class", "title", "hidden", "markdown", "align", "style"}


def assert_inert(html: str, hrefs: set[str] | None = None) -> _Tree:
    """No tag or attribute the record could have made, and every link goes where it says."""
    parsed = tree(html)
    assert set(parsed.tags) <= ALLOWED_TAGS, set(parsed.tags) - ALLOWED_TAGS
    names = {name for name, _ in parsed.attrs if not name.startswith("data-pagefind")}
    assert names <= ALLOWED_ATTRS, names - ALLOWED_ATTRS
    assert "<svg" not in html and "<script" not in html and "<img" not in html
    links = {value for name, value in parsed.attrs if name == "href"}
    for link in links:
        assert not re.match(r"(?i)\s*(javascript|data|vbscript):", link), link
        assert not re.search(r"[\s<>\"'`]", link), link
    if hrefs is not None:
        assert hrefs <= links, hrefs - links
    return parsed


ENCODED_EVIL = "https://example.com/x%29%3Csvg/onload=alert%281%29%3E"
ENCODED_QUOTE = "https://github.com/owner/repo/tree/x%27onmouseover=alert%281%29//%22y"
ENCODED_SPACE = "https://example.com/a%20b%20%22title%22%20%5Bx%5D%28javascript:alert%281%29%29"


def test_md_url_percent_encodes_what_could_end_a_link() -> None:
    assert md_url(EVIL_URL) == ENCODED_EVIL
    assert md_url(QUOTE_URL) == ENCODED_QUOTE
    assert md_url(SPACE_URL) == ENCODED_SPACE
    assert md_url("https://de.wikipedia.org/wiki/Café") == "https://de.wikipedia.org/wiki/Caf%C3%A9"
    assert md_url("https://example.com/100%-sure") == "https://example.com/100%25-sure"
    assert md_url("https://example.com/caf%C3%A9?a=1&b=2#x") == (
        "https://example.com/caf%C3%A9?a=1&b=2#x"
    )
    # A scheme other than http(s) becomes an inert in-page fragment.
    assert md_url(SCRIPT_URL) == "#javascript%3Aalert%281%29"
    assert md_url(" JavaScript:alert(1)") == "#%20JavaScript%3Aalert%281%29"


@given(tail=st.text(max_size=40), web=st.booleans())
@example(tail=")<svg/onload=alert(1)>", web=True)
@example(tail="x' onmouseover='alert(1)", web=True)
@example(tail='x "title"', web=True)
@example(tail="javascript:alert(1)", web=False)
@example(tail="HTTP://example.com/x", web=False)  # found by a longer run
def test_md_url_never_leaves_its_link(tail: str, web: bool) -> None:
    """Whatever a URL holds, it stays one link target: the link has its own text and nothing
    follows it."""
    url = ("https://example.com/" if web else "") + tail
    for render in (site_html, gfm_html):
        parsed = tree(render(f"[link]({md_url(url)}) end"))
        assert parsed.tags == ["p", "a"], (url, md_url(url))
        assert [name for name, _ in parsed.attrs] == ["href"]
        assert "".join(parsed.text).strip() == "link end"
        (href,) = [value for _, value in parsed.attrs]
        assert re.match(r"(?i)https?://" if re.match(r"(?i)https?://", url) else "#", href)


def test_kb_query_md_output_is_inert() -> None:
    text = to_md([HOSTILE_RECORD, {**HOSTILE_RECORD, "paper": SCRIPT_URL, "code": SPACE_URL}])
    assert len(text.splitlines()) == 2
    for html in (site_html(text), gfm_html(text)):
        parsed = assert_inert(html, {ENCODED_EVIL, ENCODED_QUOTE, ENCODED_SPACE})
        assert "#javascript%3Aalert%281%29" in {v for n, v in parsed.attrs if n == "href"}
        shown = "".join(parsed.text)
        assert HOSTILE_RECORD["title"] in shown and "A)<svg onload=alert(1)>" in shown


def test_awesome_lists_are_inert() -> None:
    files = awesome_files(Path("/x"), [HOSTILE_RECORD])
    text = files[Path("/x/awesome/vision.md")]
    for html in (site_html(text), gfm_html(text)):
        parsed = assert_inert(html, {ENCODED_EVIL, ENCODED_QUOTE})
        assert HOSTILE_RECORD["title"] in "".join(parsed.text)


def _page(files: dict[Path, str], name: str) -> str:
    text = files[Path("/x/docs") / name]
    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[1]  # front matter is mkdocs', not Markdown
    return text


def test_site_pages_are_inert() -> None:
    files = site_files(Path("/x/docs"), [HOSTILE_RECORD], {})
    paper = assert_inert(
        site_html(_page(files, "papers/evil-2024.md")),
        {ENCODED_EVIL, ENCODED_QUOTE, ENCODED_SPACE,
         "https://doi.org/10.1000/x%29%3Csvg%20onload=alert%281%29%3E"},
    )  # fmt: skip
    shown = " ".join("".join(paper.text).split())
    for value in (
        HOSTILE_RECORD["title"],
        "Eve <script>alert(1)</script>",
        "- a <b>list</b> # heading",
        "1. first",
        "> quote",
        EVIL_URL,
    ):
        assert value in shown, value
    for page in ("browse/modality.md", "browse/venue.md", "browse/family.md"):
        assert_inert(site_html(_page(files, page)))
    browse = site_html(_page(files, "browse/modality.md"))
    assert f'href="{ENCODED_QUOTE}"' in browse


def test_site_page_with_a_script_scheme_links_nowhere() -> None:
    record = {**HOSTILE_RECORD, "paper": SCRIPT_URL, "code": "data:text/html,x", "doi": None}
    files = site_files(Path("/x/docs"), [record], {})
    for page in ("papers/evil-2024.md", "browse/modality.md"):
        assert_inert(site_html(_page(files, page)))


# --- md_escape shows exactly the text ---------------------------------------------------------

# Where record text lands in our Markdown: the template, and the text shown around it.
CONTEXTS = {
    "paragraph": ("{}", "", ""),
    "list item": ("- **[ICLR 2024]** {} · [code](https://example.com)", "[ICLR 2024] ", " · code"),
    "link text": ("- [{}](https://example.com)", "", ""),
    "heading": ("# {}", "", ""),
    "table cell": ("| field | value |\n|---|---|\n| title | {} |", "field value title ", ""),
}


def shown_text(html: str) -> str:
    return " ".join("".join(tree(html).text).split())


def _round_trip(context: str, text: str, render: Any) -> tuple[str, str]:
    """(what the reader shows, what it should show) for `text` escaped into `context`."""
    template, before, after = CONTEXTS[context]
    shown = shown_text(render(template.format(md_escape(text))))
    return shown, " ".join((before + text + after).split())


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("char", list(string.punctuation))
def test_every_ascii_punctuation_character_shows_as_itself(char: str, context: str) -> None:
    for text in (
        f"a{char}b",
        f"{char}a",
        f"a{char}",
        char * 3,
        f"{char}{char} x {char}{char}",
        f"{char} x",
        f"1{char} x",
    ):
        for name, render in (("site", site_html), ("GitHub", gfm_html)):
            shown, expected = _round_trip(context, text, render)
            assert shown == expected, (name, context, text, md_escape(text))


@pytest.mark.parametrize(
    "text",
    [
        "~ tilde ~",
        "Token Merging: Your ViT But Faster",
        "A-ViT: Adaptive Tokens for Efficient Vision Transformer",
        "H$_2$O: Heavy-Hitter Oracle",
        "LLaVA-PruMerge: Adaptive Token Reduction for Efficient LMMs",
        "1. Better ~ 2) Faster",
        "<script>alert('x')</script> & &amp; &#126;",
        "[TOC]",
        "***",
        "a\\*b\\",
        "Über_ünïcødé *stars* #hash {: .x} {#id}",
        "https://example.com/x_y_z",
        "~~~ fenced?",
        "``` fenced?",
        "x | y | z",
        "=== heading?",
    ],
)
def test_typical_and_tricky_titles_show_as_themselves(text: str) -> None:
    for context in CONTEXTS:
        for render in (site_html, gfm_html):
            shown, expected = _round_trip(context, text, render)
            assert shown == expected, (context, text, md_escape(text))


_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.punctuation + "  aZ09"),
        st.characters(blacklist_categories=("Cs", "Cc", "Co", "Cn")),
    ),
    max_size=40,
)


@given(text=_TEXT)
@example(text="~")
@example(text="1. x")
@example(text="- x")
@example(text="\\")
@example(text="&#126;")
@example(text="]:")  # a link reference definition, in link text
def test_md_escape_round_trips_through_python_markdown(text: str) -> None:
    for context in CONTEXTS:
        shown, expected = _round_trip(context, text, site_html)
        assert shown == expected, (context, md_escape(text))


@given(text=_TEXT)
@example(text="~~x~~")
@example(text="1) x")
def test_md_escape_round_trips_through_commonmark(text: str) -> None:
    for context in CONTEXTS:
        shown, expected = _round_trip(context, text, gfm_html)
        assert shown == expected, (context, md_escape(text))
