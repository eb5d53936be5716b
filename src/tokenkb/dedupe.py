"""Find the items that name the same work: identifiers first, then titles, never all pairs.

An `Item` is anything with a title and identifiers: a record in papers/ or an imported entry.
`find_duplicates` groups items with union-find:

1. items sharing an identifier (arXiv, DOI, IEEE, OpenReview, ACL) are one work, unless their
   titles plainly disagree: that is a *conflict* (one of the links is wrong), reported and not
   merged;
2. items whose title keys (`titles.title_key`; or a record's title-like aliases, the alias table
   of renamed works) are equal are one work, unless they carry different ids of the same kind: a
   conflict;
3. remaining near-equal titles of three words or more are compared with rapidfuzz, but only
   within blocks of items that share a pair of their four rarest title words (a typo changes one
   word and leaves three pairs), so blocks stay small and the cost grows about linearly with the
   item count. Titles that differ only in short tokens or numbers (two Greek letters, `v1`/`v2`)
   are different works, however alike.

An empty or one-short-word key never matches (`titles.matchable`): titles whose letters a lossy
normaliser dropped must not all become one work. Nicknames alone never merge (two works are
called "PPT"). Nothing here reads or writes files. `Groups.evidence` says how each pair was
joined, so callers can tell an identifier match from a title-only one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from rapidfuzz import fuzz

from .titles import matchable, title_key

ID_KINDS = ("arxiv", "doi", "ieee", "openreview", "acl")
FUZZY_THRESHOLD = 92.0  # ratio or token_sort_ratio of normalised titles for a fuzzy match
FUZZY_MIN_WORDS = 3  # titles of fewer words (or of ideographs) match exactly or not at all
COMPATIBLE_THRESHOLD = 60.0  # token_set_ratio below which two titles for one id disagree
RARE_WORDS = 4  # an item's blocking keys are the pairs of its four rarest title words
_STOP = {
    "a", "an", "the", "of", "for", "and", "in", "on", "to", "with", "via", "by", "is", "are",
    "from", "towards", "toward", "at", "as", "your", "you", "all", "be", "we", "using", "through",
}  # fmt: skip


@dataclass
class Item:
    """What deduplication knows of one record or entry."""

    key: str  # unique label: a record id, or "source:line"
    title: str | None
    ids: dict[str, str] = field(default_factory=dict)  # kind -> value, for ID_KINDS
    titles: list[str] = field(default_factory=list)  # other titles it is known by (aliases)


@dataclass
class Conflict:
    """Two items that share evidence but cannot be the same work, or cannot be told apart."""

    kind: str  # "same-id-different-title" or "same-title-different-id"
    keys: tuple[str, str]
    message: str


@dataclass
class Groups:
    groups: list[list[int]]  # indices into the items, each group one work (singletons included)
    evidence: dict[tuple[int, int], str]  # (a, b) -> why a and b were joined
    conflicts: list[Conflict]


def title_words(normalized: str) -> list[str]:
    return [w for w in normalized.split() if w not in _STOP and len(w) > 1]


def titles_compatible(a: str, b: str) -> bool:
    """Could these be titles of one work (a variant, a prefix, a nickname-prefixed form)?"""
    na, nb = title_key(a), title_key(b)
    if not na or not nb:
        return True
    return fuzz.token_set_ratio(na, nb) >= COMPATIBLE_THRESHOLD


def _fuzzy_comparable(key: str) -> bool:
    """Near-equal matching is for titles written in words: a one-character change in a title of
    ideographs can be another work, and short titles leave no room for a typo."""
    return len(key.split()) >= FUZZY_MIN_WORDS


def _distinguished(a: str, b: str) -> bool:
    """Do two near-equal titles differ exactly where titles of different works differ: a short
    token or a number (Greek letters, `v1` vs `v2`, `ViT-B/16` vs `ViT-L/16`)? A typo changes a word
    of some length and leaves the numbers alone."""
    words_a, words_b = set(a.split()), set(b.split())
    only_a, only_b = words_a - words_b, words_b - words_a
    if not only_a or not only_b:
        return False
    return all(len(w) <= 2 or any(c.isdigit() for c in w) for w in only_a | only_b)


class _UnionFind:
    def __init__(self, items: Sequence[Item]) -> None:
        self.parent = list(range(len(items)))
        self.ids: list[dict[str, str]] = [dict(item.ids) for item in items]

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def clash(self, a: int, b: int) -> str | None:
        """The id kind on which the groups of a and b disagree, if any."""
        ids_a, ids_b = self.ids[self.find(a)], self.ids[self.find(b)]
        for kind, value in ids_a.items():
            other = ids_b.get(kind)
            if other is not None and other.lower() != value.lower():
                return kind
        return None

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[rb] = ra
        for kind, value in self.ids[rb].items():
            self.ids[ra].setdefault(kind, value)
        return True


def find_duplicates(items: Sequence[Item]) -> Groups:
    """Group `items` into works; see the module docstring for the rules."""
    uf = _UnionFind(items)
    evidence: dict[tuple[int, int], str] = {}
    conflicts: list[Conflict] = []
    normalized = [title_key(item.title) if item.title else "" for item in items]

    def join(a: int, b: int, why: str) -> None:
        if uf.union(a, b):
            evidence[(a, b)] = why

    # 1. identifiers
    by_id: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        for kind, value in item.ids.items():
            by_id[(kind, value.lower())].append(index)
    for (kind, value), members in by_id.items():
        first = members[0]
        for other in members[1:]:
            ia, ib = items[first], items[other]
            if (
                ia.title
                and ib.title
                and not any(
                    titles_compatible(x, y)
                    for x in [ia.title, *ia.titles]
                    for y in [ib.title, *ib.titles]
                )
            ):
                conflicts.append(
                    Conflict(
                        "same-id-different-title",
                        (ia.key, ib.key),
                        f"{ia.key} and {ib.key} both give {kind} {value} but their titles differ: "
                        f"{ia.title!r} vs {ib.title!r}; one of the links is wrong",
                    )
                )
                continue
            join(first, other, f"same {kind} {value}")

    # 2. equal normalised titles and title-like aliases
    by_title: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        keys = {normalized[index]}
        keys |= {title_key(t) for t in item.titles if len(t.split()) >= 3}
        for key in keys:
            if matchable(key):
                by_title[key].append(index)
    for key, members in by_title.items():
        for other in members[1:]:
            _join_titles(items, uf, members[0], other, f"same title {key!r}", join, conflicts)

    # 3. near-equal titles within blocks of rare words
    frequency: dict[str, int] = defaultdict(int)
    words = [title_words(n) if _fuzzy_comparable(n) else [] for n in normalized]
    for ws in words:
        for w in set(ws):
            frequency[w] += 1
    blocks: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, ws in enumerate(words):
        if not ws:  # nothing to compare on: an empty key must never match another empty key
            continue
        rarest = sorted(sorted(set(ws), key=lambda w: (frequency[w], w))[:RARE_WORDS])
        pairs: list[tuple[str, ...]] = (
            list(combinations(rarest, 2)) if len(rarest) > 1 else [tuple(rarest)]
        )
        for pair_key in pairs:
            blocks[pair_key].append(index)
    seen: set[tuple[int, int]] = set()
    for members in blocks.values():
        if len(members) < 2:
            continue
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                pair = (a, b)
                if pair in seen or uf.find(a) == uf.find(b):
                    continue
                seen.add(pair)
                # ratio sees typos; token_sort_ratio sees reordered words
                score = max(
                    fuzz.ratio(normalized[a], normalized[b]),
                    fuzz.token_sort_ratio(normalized[a], normalized[b]),
                )
                if score >= FUZZY_THRESHOLD and not _distinguished(normalized[a], normalized[b]):
                    why = f"titles {score:.0f}% alike"
                    _join_titles(items, uf, a, b, why, join, conflicts)

    unique: dict[tuple[str, tuple[str, str]], Conflict] = {}
    for conflict in conflicts:  # a pair found by exact and by fuzzy title is one conflict
        unique.setdefault((conflict.kind, tuple(sorted(conflict.keys))), conflict)  # type: ignore[arg-type]
    conflicts = list(unique.values())
    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(len(items)):
        groups[uf.find(index)].append(index)
    return Groups(sorted(groups.values()), evidence, conflicts)


def _join_titles(
    items: Sequence[Item],
    uf: _UnionFind,
    a: int,
    b: int,
    why: str,
    join: object,
    conflicts: list[Conflict],
) -> None:
    kind = uf.clash(a, b)
    if kind is not None:
        ia, ib = items[a], items[b]
        conflicts.append(
            Conflict(
                "same-title-different-id",
                (ia.key, ib.key),
                f"{ia.key} and {ib.key} have the same title ({why}) but different {kind} ids "
                f"({uf.ids[uf.find(a)][kind]} vs {uf.ids[uf.find(b)][kind]}): two versions, or "
                "a wrong id; not merged",
            )
        )
        return
    assert callable(join)
    join(a, b, why)
