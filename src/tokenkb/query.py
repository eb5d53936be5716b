"""Select records by field: the library behind `kb query`.

Works on the JSON-ready dicts the cache returns (not on pydantic models) so a query never needs
to import pydantic. Within one filter the values are alternatives (`--modality vlm --modality
video`: either); different filters must all hold. No filter selects everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .problems import did_you_mean
from .taxonomy import Family, Kind, Modality
from .titles import fold


@dataclass(frozen=True)
class Filters:
    modality: Sequence[str] = ()
    family: Sequence[str] = ()
    kind: Sequence[str] = ()
    training_free: bool | None = None
    year: Sequence[int] = ()
    since: int | None = None
    venue: Sequence[str] = ()
    has_code: bool = False
    has_impl: bool = False
    search: str | None = None
    _terms: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.search:
            object.__setattr__(self, "_terms", tuple(_fold(self.search).split()))


class FilterError(ValueError):
    """A filter value outside its vocabulary; the message says what would be right."""


def check_filters(filters: Filters) -> None:
    """Raise FilterError when a vocabulary filter names an unknown value."""
    for option, values, vocabulary in (
        ("--modality", filters.modality, Modality),
        ("--family", filters.family, Family),
        ("--kind", filters.kind, Kind),
    ):
        allowed = [member.value for member in vocabulary]
        for value in values:
            if value not in allowed:
                raise FilterError(
                    f"{option} {value!r} is not one of {', '.join(allowed)}"
                    f"{did_you_mean(value, allowed)}"
                )


def _fold(text: str) -> str:
    """Folded as titles are compared (`titles.fold`), so 'Pruning' finds 'pruning' and 'Muller'
    finds 'Müller'."""
    return fold(text)


def _haystack(record: dict[str, Any]) -> str:
    parts = [record["id"], record["title"], record.get("summary") or "", record.get("arxiv") or ""]
    parts += record.get("aliases") or []
    parts += record.get("authors") or []
    parts.append(record.get("venue") or "")
    return _fold(" \n ".join(parts))


def matches(record: dict[str, Any], filters: Filters) -> bool:
    if filters.modality and not set(filters.modality) & set(record.get("modality") or []):
        return False
    if filters.family and not set(filters.family) & set(record.get("family") or ()):
        return False
    if filters.kind and record["kind"] not in filters.kind:
        return False
    if (
        filters.training_free is not None
        and record.get("training_free") is not filters.training_free
    ):
        return False
    if filters.year and record["year"] not in filters.year:
        return False
    if filters.since is not None and record["year"] < filters.since:
        return False
    if filters.venue:
        venue = (record.get("venue") or "").lower()
        wanted = [v.lower() for v in filters.venue]
        if not any(venue == v or venue.startswith(v + " ") for v in wanted):
            return False
    if filters.has_code and not record.get("code"):
        return False
    if filters.has_impl and not record.get("impl"):
        return False
    if filters._terms:
        haystack = _haystack(record)
        if not all(term in haystack for term in filters._terms):
            return False
    return True


def sort_key(record: dict[str, Any]) -> tuple[int, str]:
    """Newest first, then by id."""
    return (-record["year"], record["id"])


def select(records: Iterable[dict[str, Any]], filters: Filters) -> list[dict[str, Any]]:
    """The records matching every filter, newest first."""
    return sorted((r for r in records if matches(r, filters)), key=sort_key)
