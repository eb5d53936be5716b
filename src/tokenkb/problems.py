"""Problems found in input files, as `path:line: message`.

Every check in tokenkb reports through `Problem`, so that the CLI prints them one way and tests
compare them exactly. A message says what is wrong and what would be right.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one place in one file (lines are 1-based)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class RecordError(Exception):
    """A file could not be read as a record; `problems` says why, with lines."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def did_you_mean(value: object, choices: list[str]) -> str:
    """`"; did you mean 'x'?"` for the closest choice, or `""` when none is close."""
    if not isinstance(value, str):
        return ""
    lowered = {choice.lower(): choice for choice in choices}
    if value.lower() in lowered:
        return f"; did you mean {lowered[value.lower()]!r}?"
    match = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[match[0]]!r}?" if match else ""
