"""The paper record: one strict pydantic model and the reusable field types it is built from.

Everything a record may contain is defined here, and nowhere else: the field types (`ArxivId`,
`Doi`, `Slug`, `Year`, `CodeUrl`, ...) check one value each and say what would be right; the
rules that span several fields live in `Paper._check_record`. This module knows nothing about
files or YAML (see `store`) and never does I/O.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from collections.abc import Iterator
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .taxonomy import (
    ARXIV_VENUE,
    MEANINGS,
    VENUE_SPELLINGS,
    VENUE_SUFFIXES,
    VENUES,
    Family,
    ImplLevel,
    Kind,
    Modality,
)

SCHEMA_VERSION = 1
MAX_SUMMARY_CHARS = 700
FIRST_YEAR = 1950
# Sane maxima, far above what real records hold (papers/ at the time of writing: titles up to
# 141 characters, aliases 121, author names 28, 27 authors, 3 aliases, 3 results, URLs 164).
MAX_TITLE_CHARS = 500  # also aliases and results
MAX_NAME_CHARS = 200  # one author
MAX_AUTHORS = 2000  # the largest author lists (e.g. the Gemini reports) have about 1,300
MAX_LIST_ITEMS = 20  # aliases, results
MAX_URL_CHARS = 2000
MAX_ID_CHARS = 100  # ids up to 45 characters; the file name must stay far below 255 bytes


def today() -> _dt.date:
    """Today's date: the one place the date rules (year, venue year, arXiv id) read the clock,
    so that tests can pin it."""
    return _dt.date.today()


def _error(kind: str, message: str) -> PydanticCustomError:
    # Messages are complete sentences meant for a contributor. With no context pydantic fills no
    # template fields, so braces (in a quoted value) are kept as they are.
    return PydanticCustomError(kind, message)


def _string_schema(
    pattern: str | list[str], description: str, examples: list[str], **extra: Any
) -> WithJsonSchema:
    """The JSON Schema of a checked string type, for editors (which cannot run Python).

    The Python check gives the precise message; the pattern (or any of several) approximates it.
    """
    schema: dict[str, Any] = {"type": "string", "description": description, "examples": examples}
    if isinstance(pattern, str):
        schema["pattern"] = pattern
    else:
        schema["anyOf"] = [{"pattern": p} for p in pattern]
    return WithJsonSchema(schema | extra)


def _char_name(ch: str) -> str:
    """How a message names one character: quoted when it can be read, else its code point."""
    if ch == " ":
        return "a space"
    if ch.isascii() and ch.isprintable():
        return repr(ch)
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'a control character')})"


# --- text -------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Bidirectional embeddings, overrides and isolates make text display differently from what it
# is (Trojan Source, CVE-2021-42574): refused anywhere in text.
_BIDI_CONTROL = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
# Characters that show nothing although Unicode calls them letters or symbols.
_BLANK_LOOKING = frozenset("\u115f\u1160\u2800\u3164\uffa0")
# For the JSON Schema: no control character, line break or bidi control; no leading, trailing
# or double space. (The Python check also asks for a letter or digit.)
_TEXT_CHAR = r"[^\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
TEXT_PATTERN = rf"^(?! )(?!.*  )(?!.* $){_TEXT_CHAR}+$"


def _invisible(ch: str) -> bool:
    return ch in _BLANK_LOOKING or unicodedata.category(ch) in ("Cf", "Zs", "Zl", "Zp")


def _visible(ch: str) -> bool:
    """A letter or digit that shows something."""
    return unicodedata.category(ch)[0] in "LN" and ch not in _BLANK_LOOKING


def text_problem(value: str, limit: int | None = None) -> str | None:
    """What is wrong with `value` as one line of record text (None when nothing is): the
    check of every text field, for writers that want to know before they build a record."""
    if limit is not None and len(value) > limit:
        return f"is {len(value)} characters; keep it to {limit} or fewer"
    if not value.strip():
        return "is empty; give a value or remove the field"
    if value != value.strip():
        return f"has leading or trailing spaces; write {value.strip()!r}"
    bad = _CONTROL.search(value)
    if bad:
        what = (
            "a line break"
            if bad.group() in "\r\n\x85\u2028\u2029"
            else f"control character {bad.group()!r}"
        )
        return f"contains {what}; write it on one line"
    bidi = _BIDI_CONTROL.search(value)
    if bidi:
        return (
            f"contains {_char_name(bidi.group())}, a bidirectional control that makes text "
            "display differently from what it is; remove it"
        )
    if not any(_visible(ch) for ch in value):
        hidden = next((ch for ch in value if _invisible(ch)), None)
        such = f", only invisible characters such as {_char_name(hidden)}" if hidden else ""
        return f"has no letter or digit{such}; write the text itself"
    for end in (value[0], value[-1]):
        if _invisible(end):
            return f"starts or ends with the invisible character {_char_name(end)}; remove it"
    if "  " in value:
        return f"contains a double space; write {' '.join(value.split())!r}"
    return None


def _check_text(value: str, limit: int | None = None) -> str:
    problem = text_problem(value, limit)
    if problem is not None:
        raise _error("text", problem)
    return value


def _text_check(limit: int) -> AfterValidator:
    return AfterValidator(lambda value: _check_text(value, limit))


def _text_schema(limit: int) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": limit, "pattern": TEXT_PATTERN}
    )


# One-line text fields, each with a length limit.
Title = Annotated[StrictStr, _text_check(MAX_TITLE_CHARS), _text_schema(MAX_TITLE_CHARS)]
Name = Annotated[StrictStr, _text_check(MAX_NAME_CHARS), _text_schema(MAX_NAME_CHARS)]
# The summary's limit is pydantic's own check, whose message (worded in `store`) says what a
# summary is.
Summary = Annotated[
    StrictStr,
    Field(max_length=MAX_SUMMARY_CHARS),
    AfterValidator(_check_text),
    _text_schema(MAX_SUMMARY_CHARS),
]


def _at_most(limit: int) -> AfterValidator:
    def check(values: list[Any]) -> list[Any]:
        if len(values) > limit:
            raise _error("too_many", f"lists {len(values)} entries; keep it to {limit} or fewer")
        return values

    return AfterValidator(check)


# --- identifiers ------------------------------------------------------------------------------

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*-(?:19|20)[0-9]{2}[a-z]?$"
_SLUG = re.compile(SLUG_PATTERN)


def suggest_slug(value: str) -> str:
    """The slug closest to `value`: lowercase, runs of other characters become one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")


def _check_slug(value: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise _error(
            "slug",
            f"is {len(value)} characters; keep an id to {MAX_ID_CHARS} or fewer (a short name "
            "and the year, e.g. 'tome-2023')",
        )
    if _SLUG.match(value):
        return value
    hint = suggest_slug(value)
    tail = f"; did you mean {hint!r}?" if hint != value and _SLUG.match(hint) else ""
    raise _error(
        "slug",
        f"{value!r} is not an id of the form <shortname>-<year> in lowercase letters, digits "
        f"and hyphens (e.g. 'tome-2023'){tail}",
    )


Slug = Annotated[
    StrictStr,
    AfterValidator(_check_slug),
    _string_schema(
        SLUG_PATTERN,
        "Readable id <shortname>-<year>; equals the file name without .yaml.",
        ["tome-2023", "fastv-2024"],
        maxLength=MAX_ID_CHARS,
    ),
]

# New-style ids: YYMM.NNNN from April 2007 to December 2014, YYMM.NNNNN from January 2015 on;
# old-style ids: archive(.SUBJECT)/YYMMNNN from August 1991 to March 2007. (The JSON Schema cannot
# know today's month; the Python check also refuses ids after it.)
_MONTH = r"(?:0[1-9]|1[0-2])"
ARXIV_PATTERN = (
    r"^(?:(?:07(?:0[4-9]|1[0-2])|(?:0[89]|1[0-4])" + _MONTH + r")\.[0-9]{4}"
    r"|(?:1[5-9]|[2-9][0-9])" + _MONTH + r"\.[0-9]{5}"
    r"|[a-z-]+(?:\.[A-Z]{2})?/(?:9(?:1(?:0[89]|1[0-2])|[2-9]" + _MONTH + r")"
    r"|0(?:[0-6]" + _MONTH + r"|70[1-3]))[0-9]{3})$"
)
# The shape of an id, before its date and number are checked.
_ARXIV = re.compile(
    r"^(?:(?P<yymm>[0-9]{4})\.(?P<number>[0-9]{4,5})"
    r"|(?P<archive>[a-z-]+(?:\.[A-Z]{2})?)/(?P<old_yymm>[0-9]{4})(?P<old_number>[0-9]{3}))$"
)
_ARXIV_IN_TEXT = re.compile(
    r"(?:arxiv\.org/(?:abs|pdf|html)/|arxiv:\s*)?"
    r"([0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})(?:v[0-9]+)?(?:\.pdf)?",
    re.IGNORECASE,
)
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


def _arxiv_problem(value: str) -> str | None:
    """Why `value` is not an arXiv id (None when it is one); `value` has the shape of one."""
    match = _ARXIV.match(value)
    if match is None:
        return f"{value!r} is not a bare arXiv id"
    old = match.group("archive") is not None
    yymm = match.group("old_yymm" if old else "yymm")
    number = match.group("old_number" if old else "number")
    yy, mm = int(yymm[:2]), int(yymm[2:])
    if not 1 <= mm <= 12:
        return f"{value!r} is not an arXiv id: month {yymm[2:]} is not a month (01 to 12)"
    if old:
        if yymm >= "9108" or yymm <= "0703":
            return None
        span = (
            f"{value!r} is not an arXiv id: archive/YYMMNNN ids run from August 1991 (9108) to "
            "March 2007 (0703)"
        )
        if yy < 91:  # April 2007 or later
            digits = 5 if yymm >= "1501" else 4
            return (
                f"{span}; from April 2007 ids are YYMM.{'N' * digits} such as "
                f"'{yymm}.{'0' * (digits - 1)}1'"
            )
        return f"{span}; for {yymm} check the id"
    if yymm < "0704":
        return (
            f"{value!r} is not an arXiv id: YYMM.NNNN ids begin in April 2007 (0704); an earlier "
            f"paper has an id such as 'hep-th/{yymm}001' (archive/YYMMNNN)"
        )
    now = today()
    if (2000 + yy, mm) > (now.year, now.month):
        hint = (
            f"; a paper from 19{yymm[:2]} has an id such as 'hep-th/{yymm}001' (archive/YYMMNNN)"
            if yy >= 91
            else ""
        )
        return (
            f"{value!r} is not an arXiv id yet: it would be from {_MONTH_NAMES[mm - 1]} "
            f"{2000 + yy}, after this month ({_MONTH_NAMES[now.month - 1]} {now.year}){hint}"
        )
    if yymm >= "1501" and len(number) != 5:
        return (
            f"{value!r} is not an arXiv id: ids from 2015 on have 5 digits after the dot, "
            "earlier ones 4"
        )
    if yymm < "1501" and len(number) != 4:
        return (
            f"{value!r} is not an arXiv id: ids before 2015 have 4 digits after the dot, "
            "from 2015 on 5"
        )
    return None


def normalize_arxiv(value: str) -> str | None:
    """The bare arXiv id inside `value` (a URL, `arXiv:` prefix, version or `.pdf`), if any
    and if it is a possible one."""
    match = _ARXIV_IN_TEXT.search(value.strip())
    if match and _arxiv_problem(match.group(1)) is None:
        return match.group(1)
    return None


def _check_arxiv(value: str) -> str:
    if _ARXIV.match(value):
        problem = _arxiv_problem(value)
        if problem is not None:
            raise _error("arxiv_id", problem)
        return value
    hint = normalize_arxiv(value)
    tail = f"; did you mean {hint!r}?" if hint and hint != value else ""
    raise _error(
        "arxiv_id",
        f"{value!r} is not a bare arXiv id such as '2210.09461' (no URL, 'arXiv:' prefix, "
        f"version or '.pdf'){tail}",
    )


ArxivId = Annotated[
    StrictStr,
    AfterValidator(_check_arxiv),
    _string_schema(
        ARXIV_PATTERN,
        "Bare arXiv identifier, no version: '2210.09461'. Quote it in YAML.",
        ["2210.09461"],
    ),
]

# --- characters of links and DOIs ---------------------------------------------------------------

# RFC 3986: unreserved and reserved characters, and %-escapes. Letters and digits of every script
# are allowed too (an IRI such as https://de.wikipedia.org/wiki/Café); every other character is
# refused, named, with its percent-encoding. A `'` is reserved but legal, and `[`, `]` only in an
# IPv6 host; both are refused because they break HTML attributes and Markdown links.
_URL_ASCII = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#@!$&()*+,;=%"
)
# A DOI is the path of https://doi.org/<doi>: a `?` or `#` there would end it.
_DOI_ASCII = _URL_ASCII - {"?", "#"}
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# The same sets for the JSON Schema: ASCII as above, and beyond ASCII the Basic Multilingual
# Plane less controls, spaces, invisible and bidi characters (an approximation of "letters and
# digits", which ECMA-262 patterns without the u flag cannot name).
_IRI_EXTRA = (
    r"\u00c0-\u167f\u1681-\u1fff\u2070-\u27ff\u2900-\u2fff\u3001-\ud7ff\uf900-\ufdcf"
    r"\ufdf0-\ufefe\uff00-\uffef"
)
_URL_CHARS = r"(?:[A-Za-z0-9\-._~:/?#@!$&()*+,;=" + _IRI_EXTRA + r"]|%[0-9A-Fa-f]{2})"
_DOI_CHARS = r"(?:[A-Za-z0-9\-._~:/@!$&()*+,;=" + _IRI_EXTRA + r"]|%[0-9A-Fa-f]{2})"


def _link_char_allowed(ch: str, ascii_allowed: frozenset[str]) -> bool:
    if ch.isascii():
        return ch in ascii_allowed
    return unicodedata.category(ch)[0] in "LNM" and ch not in _BLANK_LOOKING


def _percent_encode(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))


def _check_link_chars(value: str, ascii_allowed: frozenset[str]) -> None:
    """Refuse, by name, the first character `value` cannot hold as a link (or DOI)."""
    bad = [ch for ch in value if not _link_char_allowed(ch, ascii_allowed)]
    if bad:
        fixed = "".join(
            ch if _link_char_allowed(ch, ascii_allowed) else _percent_encode(ch) for ch in value
        )
        raise _error(
            "link_character",
            f"{value!r} contains {_char_name(bad[0])}, which a link cannot hold as it is; "
            f"percent-encode it as {_percent_encode(bad[0])} (write {fixed!r})",
        )
    if _BAD_PERCENT.search(value):
        raise _error(
            "link_character",
            f"{value!r} has '%' not followed by two hex digits; write a literal '%' as %25",
        )


# A DOI may hold any printable character (the DOI
# 10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0 exists). Here a DOI is written as
# it goes into https://doi.org/<doi>, with `<`, `>`, quotes, spaces, `?`, `#` and the like
# percent-encoded, as the DOI Handbook allows (that one is
# 10.1002/(SICI)1097-4571(199806)49:8%3C693::AID-ASI4%3E3.0.CO;2-0): safe in every link.
DOI_PATTERN = r"^10\.[0-9]{4,9}/" + _DOI_CHARS + r"+$"
_DOI = re.compile(r"^10\.[0-9]{4,9}/\S+$")
_DOI_START = re.compile(r"^10\.[0-9]{4,9}/.")


def _check_doi(value: str) -> str:
    if len(value) > MAX_URL_CHARS:
        raise _error("doi", f"is {len(value)} characters; keep it to {MAX_URL_CHARS} or fewer")
    if _DOI_START.match(value):
        _check_link_chars(value, _DOI_ASCII)
        if _DOI.match(value):
            return value
    stripped = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:\s*)", "", value.strip(), flags=re.I)
    tail = f"; did you mean {stripped!r}?" if stripped != value and _DOI.match(stripped) else ""
    raise _error("doi", f"{value!r} is not a bare DOI such as '10.1109/CVPR52729.2023.00123'{tail}")


Doi = Annotated[
    StrictStr,
    AfterValidator(_check_doi),
    _string_schema(
        DOI_PATTERN,
        "Bare DOI, no resolver URL; characters a link cannot hold percent-encoded (%3C for <).",
        ["10.1109/TPAMI.2023.3263826"],
        maxLength=MAX_URL_CHARS,
    ),
]

OPENREVIEW_PATTERN = r"^[A-Za-z0-9_-]{5,20}$"
_OPENREVIEW = re.compile(OPENREVIEW_PATTERN)


def _check_openreview(value: str) -> str:
    if _OPENREVIEW.match(value):
        return value
    match = re.search(r"[?&]id=([A-Za-z0-9_-]+)", value)
    tail = f"; did you mean {match.group(1)!r}?" if match else ""
    raise _error(
        "openreview_id",
        f"{value!r} is not an OpenReview forum id such as 'BjyvwnXXVn_' (the id= part of the "
        f"forum URL){tail}",
    )


OpenReviewId = Annotated[
    StrictStr,
    AfterValidator(_check_openreview),
    _string_schema(
        OPENREVIEW_PATTERN, "OpenReview forum id (the id= of the URL).", ["BjyvwnXXVn_"]
    ),
]

ACL_PATTERN = r"^(?:[0-9]{4}\.[a-z0-9]+(?:-[a-z0-9]+)*\.[0-9]+|[A-Z][0-9]{2}-[0-9]{4})$"
_ACL = re.compile(ACL_PATTERN)


def _check_acl(value: str) -> str:
    if _ACL.match(value):
        return value
    match = re.search(r"aclanthology\.org/([^/\s]+?)(?:\.pdf)?/?$", value)
    tail = f"; did you mean {match.group(1)!r}?" if match and _ACL.match(match.group(1)) else ""
    raise _error(
        "acl_id",
        f"{value!r} is not an ACL Anthology id such as '2023.emnlp-main.825' or 'P19-1580'{tail}",
    )


AclId = Annotated[
    StrictStr,
    AfterValidator(_check_acl),
    _string_schema(ACL_PATTERN, "ACL Anthology id.", ["2023.emnlp-main.825"]),
]

IEEE_PATTERN = r"^[0-9]{5,10}$"
_IEEE = re.compile(IEEE_PATTERN)


def _check_ieee(value: str) -> str:
    if _IEEE.match(value):
        return value
    match = re.search(r"(?:document/|arnumber=)([0-9]{5,10})", value)
    tail = f"; did you mean {match.group(1)!r}?" if match else ""
    raise _error(
        "ieee_id",
        f"{value!r} is not an IEEE Xplore document number such as '10183862'{tail}",
    )


IeeeId = Annotated[
    StrictStr,
    AfterValidator(_check_ieee),
    _string_schema(IEEE_PATTERN, "IEEE Xplore article number.", ["10183862"]),
]


# --- links ------------------------------------------------------------------------------------

# Host names: dot-separated labels of letters, digits and inner hyphens (no empty label).
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
URL_PATTERN = r"^https://" + _HOST + r"(?:[/?#]" + _URL_CHARS + r"*)?$"
_URL = re.compile(r"^https://" + _HOST + r"(?:[/?#]\S*)?$")
_URL_START = re.compile(r"^https://" + _HOST + r"(?:[/?#]|$)")


def _check_url_length(value: str) -> None:
    if len(value) > MAX_URL_CHARS:
        raise _error(
            "url",
            f"is {len(value)} characters; keep it to {MAX_URL_CHARS} or fewer (a link that long "
            "is not a paper's)",
        )


def _check_url(value: str) -> str:
    _check_url_length(value)
    if _URL_START.match(value):
        _check_link_chars(value, _URL_ASCII)
        if _URL.match(value):
            return value
    if value.startswith("http://") and _URL.match("https://" + value[7:]):
        raise _error("url", f"{value!r} uses http; write {'https://' + value[7:]!r}")
    raise _error("url", f"{value!r} is not an https URL such as 'https://arxiv.org/abs/2210.09461'")


HttpsUrl = Annotated[
    StrictStr,
    AfterValidator(_check_url),
    _string_schema(
        URL_PATTERN,
        "An https URL; characters a link cannot hold percent-encoded (%20 for a space).",
        ["https://arxiv.org/abs/2210.09461"],
        maxLength=MAX_URL_CHARS,
    ),
]

GITHUB_PATTERN = (
    r"^https://github\.com/[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/"
    r"[A-Za-z0-9._-]+(?<!\.git)(?:/tree/(?:(?![?#])" + _URL_CHARS + r")*[A-Za-z0-9\-._~%])?$"
)
_GITHUB = re.compile(
    r"^https://github\.com/[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/"
    r"[A-Za-z0-9._-]+(?<!\.git)(?:/tree/[^\s?#]+[^\s?#/])?$"
)
_GITHUB_REPO = re.compile(
    r"^https?://(?:www\.)?github\.com/([^/\s?#]+)/([^/\s?#]+)(/tree/[^\s?#]+)?"
)


def normalize_github(value: str) -> str | None:
    """`https://github.com/owner/repo` (plus a /tree/ path) from a decorated GitHub link."""
    match = _GITHUB_REPO.match(value.strip())
    if not match:
        return None
    owner, repo, tree = match.groups()
    repo = repo.removesuffix(".git")
    url = f"https://github.com/{owner}/{repo}" + (tree.rstrip("/") if tree else "")
    return url if _GITHUB.match(url) else None


def _check_code(value: str) -> str:
    if re.match(r"^https?://(?:www\.)?github\.com/", value):
        _check_url_length(value)
        if _GITHUB.match(value):
            _check_link_chars(value, _URL_ASCII)
            return value
        hint = normalize_github(value)
        tail = f"; did you mean {hint!r}?" if hint and hint != value else ""
        raise _error(
            "github_url",
            f"{value!r} is not a GitHub repository URL of the form "
            f"'https://github.com/<owner>/<repo>' (no query, fragment, '.git' or trailing "
            f"slash){tail}",
        )
    return _check_url(value)


CodeUrl = Annotated[
    StrictStr,
    AfterValidator(_check_code),
    _string_schema(
        [
            r"^https://(?!(?:www\.)?github\.com/)" + _HOST + r"(?:[/?#]" + _URL_CHARS + r"*)?$",
            GITHUB_PATTERN,
        ],
        "Official code repository; GitHub links as https://github.com/<owner>/<repo>.",
        ["https://github.com/facebookresearch/ToMe"],
        maxLength=MAX_URL_CHARS,
    ),
]
GitHubUrl = Annotated[
    StrictStr,
    AfterValidator(_check_code),
    _string_schema(
        GITHUB_PATTERN,
        "A GitHub repository URL.",
        ["https://github.com/owner/repo"],
        maxLength=MAX_URL_CHARS,
    ),
]

MODULE_PATTERN = r"^reference_impls(?:\.[a-z_][a-z0-9_]*)+$"
_MODULE = re.compile(MODULE_PATTERN)


def _check_module(value: str) -> str:
    if _MODULE.match(value):
        return value
    raise _error(
        "module",
        f"{value!r} is not a reference implementation module such as 'reference_impls.vision.tome'",
    )


ModuleName = Annotated[
    StrictStr,
    AfterValidator(_check_module),
    _string_schema(
        MODULE_PATTERN, "Dotted module under reference_impls.", ["reference_impls.vision.tome"]
    ),
]

SOURCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_SOURCE = re.compile(SOURCE_PATTERN)


def _check_source(value: str) -> str:
    if _SOURCE.match(value):
        return value
    raise _error(
        "source_name",
        f"{value!r} is not a source name: a source-list file stem such as "
        "'000_bc6bb1248e4d14b4', or 'manual' or 'arxiv'",
    )


SourceName = Annotated[
    StrictStr,
    AfterValidator(_check_source),
    _string_schema(
        SOURCE_PATTERN,
        "Where the facts came from: a source-list file stem, 'arxiv' or 'manual'.",
        ["000_bc6bb1248e4d14b4", "manual"],
    ),
]


# --- numbers and venues -----------------------------------------------------------------------


def _check_year(value: int) -> int:
    last = today().year
    if FIRST_YEAR <= value <= last:
        return value
    raise _error("year", f"{value} is not a plausible year ({FIRST_YEAR} to {last})")


Year = Annotated[StrictInt, AfterValidator(_check_year)]

VENUE_PATTERN = (
    r"^(?:arXiv|(?:"
    + "|".join(re.escape(name).replace("\\ ", " ") for name in VENUES)
    + r") (?:19|20)[0-9]{2}(?: Workshop| Findings)?)$"
)
_VENUE = re.compile(r"^(?P<name>.+?) (?P<year>(?:19|20)[0-9]{2})(?: (?P<suffix>[A-Za-z]+))?$")
_VENUE_BY_LOWER = {name.lower(): name for name in VENUES}


def last_venue_year() -> int:
    """Venues are announced up to a year ahead; a later venue year is a typo."""
    return today().year + 1


def venue_year(venue: str | None) -> int | None:
    match = _VENUE.match(venue) if venue else None
    return int(match.group("year")) if match else None


def suggest_venue(value: str) -> str | None:
    """The normalised spelling of a venue string, if one can be read from it."""
    text = " ".join(value.replace("'", " 20").split())
    years = re.findall(r"(?:19|20)[0-9]{2}", text)
    if text.lower() in ("arxiv", "arxiv preprint", "corr"):
        return ARXIV_VENUE
    workshop = re.search(r"workshop|w$|\bw\b", text, re.I) is not None
    findings = re.search(r"findings", text, re.I) is not None
    words = re.sub(
        r"(?:19|20)[0-9]{2}|\b(?:workshops?|findings|of|the|proceedings)\b|[()]",
        " ",
        text,
        flags=re.I,
    )
    candidates = [w.strip(" ,.-") for w in [" ".join(words.split()), *words.split()]]
    for candidate in candidates:
        key = candidate.lower()
        name = _VENUE_BY_LOWER.get(key) or VENUE_SPELLINGS.get(key)
        if name is None:
            continue
        if key in ("cvprw", "iccvw", "eccvw"):
            workshop = True
        if not years:
            return None
        if int(years[0]) > last_venue_year():
            return None  # not a venue yet: a typo, which no spelling fixes
        suffix = " Workshop" if workshop else " Findings" if findings else ""
        return f"{name} {years[0]}{suffix}"
    return None


def _check_venue(value: str) -> str:
    if value == ARXIV_VENUE:
        return value
    match = _VENUE.match(value)
    if match and int(match.group("year")) > last_venue_year():
        raise _error(
            "venue",
            f"{value!r} is after next year; a venue year is {last_venue_year()} or earlier",
        )
    if match and match.group("name") in VENUES and match.group("suffix") in (None, *VENUE_SUFFIXES):
        return value
    hint = suggest_venue(value)
    if hint and hint != value:
        raise _error("venue", f"{value!r} is not a normalised venue; did you mean {hint!r}?")
    if match and match.group("suffix") in (None, *VENUE_SUFFIXES):
        raise _error(
            "venue",
            f"{match.group('name')!r} is not a known venue name ({', '.join(VENUES)}); if it is "
            "a real venue, add it to VENUES in src/tokenkb/taxonomy.py",
        )
    raise _error(
        "venue",
        f"{value!r} is not a normalised venue such as 'ICLR 2023', 'CVPR 2023 Workshop', "
        "'EMNLP 2023 Findings' or 'arXiv'",
    )


Venue = Annotated[
    StrictStr,
    AfterValidator(_check_venue),
    _string_schema(
        VENUE_PATTERN,
        "Normalised venue: '<NAME> <YEAR>' (+ ' Workshop' / ' Findings') or 'arXiv'.",
        ["ICLR 2023", "CVPR 2023 Workshop", "EMNLP 2023 Findings", "arXiv"],
    ),
]


def _unique(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    for value in values:
        if isinstance(value, BaseModel):
            key: Any = value.model_dump_json()
            shown = ", ".join(
                f"{k}: {v}" for k, v in value.model_dump(exclude_defaults=True).items()
            )
        else:
            key = value.casefold() if isinstance(value, str) else value
            shown = str(value)
        if key in seen:
            raise _error("unique", f"lists {shown!r} twice; keep one")
        seen.add(key)
    return values


def _enum_schema(enum: type[Any], description: str) -> WithJsonSchema:
    meanings = MEANINGS[enum]
    return WithJsonSchema(
        {
            "type": "string",
            "enum": [member.value for member in enum],
            "description": description,
            "enumDescriptions": [meanings[member.value] for member in enum],
        }
    )


KindField = Annotated[Kind, _enum_schema(Kind, "What sort of work this is.")]
ModalityField = Annotated[Modality, _enum_schema(Modality, "Model or data the work applies to.")]
FamilyField = Annotated[Family, _enum_schema(Family, "How tokens are reduced.")]
ImplLevelField = Annotated[
    ImplLevel, _enum_schema(ImplLevel, "paper: this work's algorithm; family: its family's.")
]

# Fields that name a vocabulary, for messages that list the allowed values.
ENUM_FIELDS: dict[str, type[Any]] = {
    "kind": Kind,
    "modality": Modality,
    "family": Family,
    "impl_level": ImplLevel,
}


# --- the record -------------------------------------------------------------------------------


class Source(BaseModel):
    """Provenance: a place the record's facts were read from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceName = Field(
        description="Source-list file stem (e.g. 000_bc6bb1248e4d14b4), 'arxiv' or 'manual'."
    )
    line: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="1-based line in the source list where the work appears."
    )
    fields: Annotated[list[StrictStr], AfterValidator(_unique)] = Field(
        default_factory=list, description="Which record fields this source supports."
    )

    @model_validator(mode="after")
    def _check_fields(self) -> Self:
        known = Paper.model_fields
        for name in self.fields:
            if name not in known:
                hint = _closest(name, list(known))
                tail = f"; did you mean {hint!r}?" if hint else ""
                raise _error("source_field", f"fields names {name!r}, not a record field{tail}")
        return self


def _closest(value: str, choices: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return match[0] if match else None


class Paper(BaseModel):
    """One work on token reduction: the contents of papers/<id>.yaml, in canonical field order."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="tokenkb paper record",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"kind": {"not": {"const": "method"}}}},
                    "then": {"not": {"required": ["training_free"]}},
                }
            ],
            "dependentRequired": {"impl": ["impl_level"], "impl_level": ["impl"]},
        },
    )

    id: Slug = Field(description="Readable slug <shortname>-<year>; equals the file name.")
    title: Title = Field(description="Title of the work as published.")
    aliases: Annotated[list[Title], AfterValidator(_unique), _at_most(MAX_LIST_ITEMS)] = Field(
        default_factory=list,
        description="Other titles and nicknames (e.g. 'ToMe', 'FastV').",
        json_schema_extra={"maxItems": MAX_LIST_ITEMS},
    )
    authors: Annotated[list[Name], AfterValidator(_unique), _at_most(MAX_AUTHORS)] = Field(
        default_factory=list,
        description="Authors in paper order, 'First Last'.",
        json_schema_extra={"maxItems": MAX_AUTHORS},
    )
    year: Year = Field(description="Year of the first public version (e.g. arXiv v1).")
    venue: Venue | None = Field(
        default=None,
        description="Normalised venue, e.g. 'ICLR 2023', or 'arXiv'; left out when unverified.",
    )
    kind: KindField
    # Left out until curated; when written, at least one value (the default is not validated).
    modality: Annotated[list[ModalityField], Field(min_length=1), AfterValidator(_unique)] = Field(
        default_factory=list, description="Modalities the work applies to; out until curated."
    )
    family: Annotated[list[FamilyField], AfterValidator(_unique)] = Field(
        default_factory=list, description="Method families; empty until curated."
    )
    training_free: StrictBool | None = Field(
        default=None,
        description=(
            "Methods only: can it be applied to a pretrained model without training? Leave it "
            "out when unverified."
        ),
    )
    arxiv: ArxivId | None = None
    doi: Doi | None = None
    openreview: OpenReviewId | None = None
    acl: AclId | None = None
    ieee: IeeeId | None = None
    paper: HttpsUrl | None = Field(default=None, description="Canonical URL of the paper.")
    code: CodeUrl | None = Field(default=None, description="Official code repository.")
    project: HttpsUrl | None = Field(default=None, description="Project page.")
    summary: Summary | None = Field(
        default=None, description="One to three sentences in our own words."
    )
    results: Annotated[list[Title], AfterValidator(_unique), _at_most(MAX_LIST_ITEMS)] = Field(
        default_factory=list,
        description="Headline numbers with their setting.",
        json_schema_extra={"maxItems": MAX_LIST_ITEMS},
    )
    impl: ModuleName | None = Field(
        default=None, description="reference_impls module implementing this algorithm."
    )
    impl_level: ImplLevelField | None = None
    sources: Annotated[list[Source], AfterValidator(_unique)] = Field(
        default_factory=list, description="Provenance of the facts."
    )

    @model_validator(mode="after")
    def _check_record(self, info: ValidationInfo) -> Self:
        problems = list(_record_problems(self, info.context or {}))
        if problems:
            raise PydanticCustomError(
                "record_rules",
                "; ".join(message for _, message in problems).replace("{", "{{").replace("}", "}}"),
                {"problems": problems},
            )
        return self


def _record_problems(
    paper: Paper, context: dict[str, Any]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Rules spanning several fields, as (location, message) pairs."""
    stem = context.get("stem")
    if stem is not None and paper.id != stem:
        yield (
            ("id",),
            (
                f"id {paper.id!r} does not match the file name {stem + '.yaml'!r}; rename the file "
                f"to {paper.id + '.yaml'!r} or set id: {stem}"
            ),
        )
    if paper.impl_level is not None and paper.impl is None:
        yield (
            ("impl_level",),
            (
                "impl_level is set but impl is not; name the reference_impls module in impl or "
                "remove impl_level"
            ),
        )
    if paper.impl is not None and paper.impl_level is None:
        yield (
            ("impl",),
            (
                "impl needs impl_level: 'paper' (this work's own algorithm) or 'family' (the "
                "canonical algorithm of its family)"
            ),
        )
    if paper.kind is not Kind.METHOD and paper.training_free is not None:
        yield (
            ("training_free",),
            (
                f"training_free applies to methods only and this record has kind: "
                f"{paper.kind.value}; remove it"
            ),
        )
    published = venue_year(paper.venue)
    if published is not None and published < paper.year:
        yield (
            ("venue",),
            (
                f"venue year {published} is before year {paper.year}; year is the first public "
                f"version, so it is {published} or earlier"
            ),
        )
    id_year = int(re.sub(r"[a-z]$", "", paper.id)[-4:])
    if id_year not in (paper.year, published):
        choices = sorted({paper.year, published or paper.year})
        base = paper.id.rsplit("-", 1)[0]
        yield (
            ("id",),
            (
                f"id year {id_year} matches neither year ({paper.year}) nor the venue year; use "
                + " or ".join(repr(f"{base}-{year}") for year in choices)
            ),
        )
    if paper.arxiv is not None and "." in paper.arxiv and "/" not in paper.arxiv:
        arxiv_year = 2000 + int(paper.arxiv[:2])
        if paper.year > arxiv_year:
            yield (
                ("year",),
                (
                    f"year {paper.year} is after the arXiv id's year {arxiv_year} ({paper.arxiv}); "
                    f"year is the first public version, so it is {arxiv_year} or earlier"
                ),
            )
    if paper.paper is not None:
        linked = re.match(r"^https://arxiv\.org/(?:abs|pdf)/(.+)$", paper.paper)
        linked_id = normalize_arxiv(linked.group(1)) if linked else None
        if linked_id is not None and paper.arxiv is None:
            yield ("paper",), f"paper links arXiv {linked_id}; also set arxiv: '{linked_id}'"
        elif linked_id is not None and linked_id != paper.arxiv:
            yield (
                ("paper",),
                (f"paper links arXiv {linked_id} but arxiv is {paper.arxiv}; one of them is wrong"),
            )
    title = paper.title.casefold()
    for index, alias in enumerate(paper.aliases):
        if alias.casefold() == title:
            yield ("aliases", index), f"alias {alias!r} repeats the title; remove it"


FIELD_NAMES: tuple[str, ...] = tuple(Paper.model_fields)


def json_schema() -> dict[str, Any]:
    """The record's JSON Schema, for editors (yaml-language-server) and other tools."""
    schema = Paper.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
