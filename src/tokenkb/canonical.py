"""`kb fmt`: bring record files into canonical form without losing anything.

A file is rewritten only when it is a valid record, and never when it holds comments (other than
the schema line), since the canonical form has no place for them: those are reported so the
contributor can move the text into a field. The YAML values are the record; the canonical dump is
the only spelling of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .outputs import LockTimeout, locked, write_text_atomic
from .problems import Problem, RecordError
from .store import SCHEMA_COMMENT, dump_record, parse_record, read_text
from .validate import collect_paths

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class FormatResult:
    files: int = 0
    changed: list[Path] = field(default_factory=list)
    invalid: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def comment_lines(text: str) -> list[int]:
    """1-based lines holding a YAML comment, other than the schema line at the top."""
    if "#" not in text:
        return []
    chars = list(text)
    loader = _Loader(text)
    try:
        while True:
            event = loader.get_event()
            if isinstance(event, yaml.StreamEndEvent):
                break
            if isinstance(event, yaml.ScalarEvent) and event.start_mark and event.end_mark:
                start, end = event.start_mark.index, event.end_mark.index
                chars[start:end] = [" " if c != "\n" else c for c in chars[start:end]]
    finally:
        loader.dispose()
    masked = "".join(chars)
    lines = []
    for number, line in enumerate(masked.split("\n"), 1):
        if "#" in line and not (number == 1 and line + "\n" == SCHEMA_COMMENT):
            lines.append(number)
    return lines


def first_difference(old: str, new: str) -> int:
    for number, (a, b) in enumerate(zip(old.split("\n"), new.split("\n"), strict=False), 1):
        if a != b:
            return number
    return min(old.count("\n"), new.count("\n")) + 1


def format_paths(paths: Sequence[Path], check: bool = False) -> FormatResult:
    """Format (or with `check`, only compare) record files. Writing holds the lock of every
    directory written to, as the other record writers do, so a concurrent import or `kb new`
    never sees a record change under it."""
    files, problems = collect_paths(paths)
    result = FormatResult(files=len(files), problems=problems)
    with contextlib.ExitStack() as stack:
        if not check:
            for directory in sorted({path.parent.resolve() for path in files}):
                try:
                    stack.enter_context(locked(directory))
                except (OSError, LockTimeout) as exc:
                    message = exc.strerror if isinstance(exc, OSError) else str(exc)
                    result.problems.append(Problem(str(directory), 1, f"cannot lock: {message}"))
                    result.invalid.extend(p for p in files if p.parent.resolve() == directory)
            files = [p for p in files if p not in result.invalid]
        _format_files(files, check, result)
    result.problems.sort()
    return result


def _format_files(files: Sequence[Path], check: bool, result: FormatResult) -> None:
    for path in files:
        name = str(path)
        try:
            text = read_text(path)
            paper, _ = parse_record(text, name, stem=path.stem)
        except RecordError as exc:
            result.invalid.append(path)
            result.problems.extend(exc.problems)
            continue
        canonical = dump_record(paper)
        if canonical == text:
            continue
        if check:
            result.changed.append(path)
            result.problems.append(
                Problem(
                    name,
                    first_difference(text, canonical),
                    f"not in canonical form; run 'kb fmt {name}'",
                )
            )
            continue
        comments = comment_lines(text)
        if comments:
            result.invalid.append(path)
            result.problems.extend(
                Problem(
                    name,
                    line,
                    "comment would be lost by formatting; move it into a field "
                    "(summary, results) or remove it, then run kb fmt again",
                )
                for line in comments
            )
            continue
        try:
            write_text_atomic(path, canonical)
        except OSError as exc:
            result.invalid.append(path)
            result.problems.append(
                Problem(name, 1, f"cannot write: {exc.strerror or exc}; the file is unchanged")
            )
            continue
        result.changed.append(path)
