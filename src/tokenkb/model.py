"""The paper record: one strict pydantic model and the reusable field types it is built from.

Everything a record may contain is defined here, and nowhere else: the field types (`ArxivId`,
`Doi`, `Slug`, `Year`, `CodeUrl`, ...) check one value each and say what would be right; the
rules that span several fields live in `Paper._check_record`. This module knows nothing about
files or YAML (see `store`) and never does I/O.
"""

from __future__ import annotations

import datetime as _dt
import re
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


def _error(kind: str, message: str) -> PydanticCustomError:
    # Messages are complete sentences meant for a contributor; braces would be read as
    # pydantic template fields, so they are doubled.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


def _string_schema(
    pattern: str | list[str], description: str, examples: list[str]
) -> WithJsonSchema:
    """The JSON Schema of a checked string type, for editors (which cannot run Python).

    The Python check gives the precise message; the pattern (or any of several) approximates it.
    """
    schema: dict[str, Any] = {"type": "string", "description": description, "examples": examples}
    if isinstance(pattern, str):
        schema["pattern"] = pattern
    else:
        schema["anyOf"] = [{"pattern": p} for p in pattern]
    return WithJsonSchema(schema)


# --- text -------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_text(value: str) -> str:
    if not value.strip():
        raise _error("text", "is empty; give a value or remove the field")
    if value != value.strip():
        raise _error("text", f"has leading or trailing spaces; write {value.strip()!r}")
    bad = _CONTROL.search(value)
    if bad:
        what = (
            "a line break"
            if bad.group() in "\r\n\x85\u2028\u2029"
            else f"control character {bad.group()!r}"
        )
        raise _error("text", f"contains {what}; write it on one line")
    if "  " in value:
        raise _error("text", f"contains a double space; write {' '.join(value.split())!r}")
    return value


Text = Annotated[StrictStr, AfterValidator(_check_text)]


# --- identifiers ------------------------------------------------------------------------------

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*-(?:19|20)[0-9]{2}[a-z]?$"
_SLUG = re.compile(SLUG_PATTERN)


def suggest_slug(value: str) -> str:
    """The slug closest to `value`: lowercase, runs of other characters become one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")


def _check_slug(value: str) -> str:
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
    ),
]

ARXIV_PATTERN = r"^(?:[0-9]{2}(?:0[1-9]|1[0-2])\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})$"
_ARXIV = re.compile(ARXIV_PATTERN)
_ARXIV_IN_TEXT = re.compile(
    r"(?:arxiv\.org/(?:abs|pdf|html)/|arxiv:\s*)?"
    r"([0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})(?:v[0-9]+)?(?:\.pdf)?",
    re.IGNORECASE,
)


def normalize_arxiv(value: str) -> str | None:
    """The bare arXiv id inside `value` (a URL, `arXiv:` prefix, version or `.pdf`), if any."""
    match = _ARXIV_IN_TEXT.search(value.strip())
    if match and _ARXIV.match(match.group(1)):
        return match.group(1)
    return None


def _check_arxiv(value: str) -> str:
    if _ARXIV.match(value):
        if "/" not in value:
            yymm, number = value.split(".")
            digits = 5 if int(yymm[:2]) >= 15 else 4
            if len(number) != digits:
                raise _error(
                    "arxiv_id",
                    f"{value!r} is not an arXiv id: ids from 2015 on have 5 digits after the "
                    "dot, earlier ones 4",
                )
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

DOI_PATTERN = r"^10\.[0-9]{4,9}/\S+$"
_DOI = re.compile(DOI_PATTERN)


def _check_doi(value: str) -> str:
    if _DOI.match(value):
        return value
    stripped = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:\s*)", "", value.strip(), flags=re.I)
    tail = f"; did you mean {stripped!r}?" if stripped != value and _DOI.match(stripped) else ""
    raise _error("doi", f"{value!r} is not a bare DOI such as '10.1109/CVPR52729.2023.00123'{tail}")


Doi = Annotated[
    StrictStr,
    AfterValidator(_check_doi),
    _string_schema(DOI_PATTERN, "Bare DOI, no resolver URL.", ["10.1109/TPAMI.2023.3263826"]),
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

URL_PATTERN = r"^https://[A-Za-z0-9.-]+\.[A-Za-z]{2,}(?:[/?#]\S*)?$"
_URL = re.compile(URL_PATTERN)


def _check_url(value: str) -> str:
    if _URL.match(value):
        return value
    if value.startswith("http://") and _URL.match("https://" + value[7:]):
        raise _error("url", f"{value!r} uses http; write {'https://' + value[7:]!r}")
    raise _error("url", f"{value!r} is not an https URL such as 'https://arxiv.org/abs/2210.09461'")


HttpsUrl = Annotated[
    StrictStr,
    AfterValidator(_check_url),
    _string_schema(URL_PATTERN, "An https URL.", ["https://arxiv.org/abs/2210.09461"]),
]

GITHUB_PATTERN = (
    r"^https://github\.com/[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/"
    r"[A-Za-z0-9._-]+(?<!\.git)(?:/tree/[^\s?#]+[^\s?#/])?$"
)
_GITHUB = re.compile(GITHUB_PATTERN)
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
        if _GITHUB.match(value):
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
            r"^https://(?!(?:www\.)?github\.com/)[A-Za-z0-9.-]+\.[A-Za-z]{2,}(?:[/?#]\S*)?$",
            GITHUB_PATTERN,
        ],
        "Official code repository; GitHub links as https://github.com/<owner>/<repo>.",
        ["https://github.com/facebookresearch/ToMe"],
    ),
]
GitHubUrl = Annotated[
    StrictStr,
    AfterValidator(_check_code),
    _string_schema(GITHUB_PATTERN, "A GitHub repository URL.", ["https://github.com/owner/repo"]),
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
    last = _dt.date.today().year + 1
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
        suffix = " Workshop" if workshop else " Findings" if findings else ""
        return f"{name} {years[0]}{suffix}"
    return None


def _check_venue(value: str) -> str:
    if value == ARXIV_VENUE:
        return value
    match = _VENUE.match(value)
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
    title: Text = Field(description="Title of the work as published.")
    aliases: Annotated[list[Text], AfterValidator(_unique)] = Field(
        default_factory=list, description="Other titles and nicknames (e.g. 'ToMe', 'FastV')."
    )
    authors: Annotated[list[Text], AfterValidator(_unique)] = Field(
        default_factory=list, description="Authors in paper order, 'First Last'."
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
    summary: Annotated[Text, Field(max_length=MAX_SUMMARY_CHARS)] | None = Field(
        default=None, description="One to three sentences in our own words."
    )
    results: Annotated[list[Text], AfterValidator(_unique)] = Field(
        default_factory=list, description="Headline numbers with their setting."
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
