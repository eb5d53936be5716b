"""Validate record files: each file on its own, then the set of them together.

Per file: the strict YAML reading of `store` and the schema of `model`. Across files: one id per
work, one record per arXiv id and DOI, and no title or alias naming two different works. Large
sets are checked in worker processes (parsing dominates and is CPU-bound). This module returns
problems; it does not print.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .problems import Problem, RecordError, did_you_mean
from .store import misnamed_files, parse_record, read_text, record_paths
from .titles import title_key

PARALLEL_THRESHOLD = 1000
CHUNK = 500


@dataclass(frozen=True)
class Checked:
    """What one file contributed: its problems, and the facts cross-record checks need."""

    path: str
    problems: list[Problem]
    id: str | None = None
    id_line: int = 1
    arxiv: tuple[str, int] | None = None
    doi: tuple[str, int] | None = None
    names: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, name, line)
    record: dict[str, Any] | None = None


@dataclass
class Report:
    files: int
    problems: list[Problem]
    records: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_file(path: Path, keep_record: bool = False) -> Checked:
    """Check one record file."""
    name = str(path)
    try:
        paper, parsed = parse_record(read_text(path), name, stem=path.stem)
    except RecordError as exc:
        return Checked(name, exc.problems)
    if paper.impl is not None:
        missing = impl_problem(paper.impl)
        if missing:
            return Checked(name, [Problem(name, parsed.line(("impl",)), missing)])
    names = [("title", paper.title, parsed.line(("title",)))]
    names += [
        ("alias", alias, parsed.line(("aliases", index)))
        for index, alias in enumerate(paper.aliases)
    ]
    return Checked(
        name,
        [],
        id=paper.id,
        id_line=parsed.line(("id",)),
        arxiv=(paper.arxiv, parsed.line(("arxiv",))) if paper.arxiv else None,
        doi=(paper.doi.lower(), parsed.line(("doi",))) if paper.doi else None,
        names=names,
        record=paper.model_dump(mode="json") if keep_record else None,
    )


@functools.cache
def _impls_root() -> Path | None:
    """Where the reference_impls package lives, found without importing it (no torch)."""
    spec = importlib.util.find_spec("reference_impls")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def impl_problem(module: str) -> str | None:
    """Why `impl` names no module of reference_impls, or None when the module exists."""
    root = _impls_root()
    if root is None:
        return f"impl: {module!r} cannot be checked: the reference_impls package is not installed"
    target = root.joinpath(*module.split(".")[1:])
    if target.with_suffix(".py").is_file() or (target / "__init__.py").is_file():
        return None
    known = sorted(
        "reference_impls." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if p.name != "__init__.py"
    )
    hint = did_you_mean(module, known) or "; `kb impls` lists the modules"
    return f"impl: module {module!r} does not exist{hint}"


def _check_chunk(paths: list[str], keep_records: bool) -> list[Checked]:
    return [check_file(Path(p), keep_records) for p in paths]


def check_files(
    paths: Sequence[Path], keep_records: bool = False, jobs: int | None = None
) -> list[Checked]:
    """Check many files, in worker processes when there are many of them."""
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    if jobs <= 1 or len(paths) < PARALLEL_THRESHOLD:
        return [check_file(p, keep_records) for p in paths]
    chunks = [[str(p) for p in paths[i : i + CHUNK]] for i in range(0, len(paths), CHUNK)]
    results: list[Checked] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for part in pool.map(_check_chunk, chunks, [keep_records] * len(chunks)):
            results.extend(part)
    return results


def cross_record_problems(checked: Iterable[Checked]) -> list[Problem]:
    """Problems that only show when records are seen together."""
    problems: list[Problem] = []
    ids: dict[str, Checked] = {}
    arxiv: dict[str, Checked] = {}
    dois: dict[str, Checked] = {}
    names: dict[str, tuple[Checked, str, int]] = {}
    for item in checked:
        if item.id is None:
            continue
        if item.id in ids:
            other = ids[item.id]
            problems.append(
                Problem(
                    item.path,
                    item.id_line,
                    f"id {item.id!r} is also used by {other.path}:{other.id_line}",
                )
            )
        else:
            ids[item.id] = item
        for identifier, seen, label in ((item.arxiv, arxiv, "arXiv id"), (item.doi, dois, "DOI")):
            if identifier is None:
                continue
            value, line = identifier
            if value in seen:
                other = seen[value]
                problems.append(
                    Problem(
                        item.path,
                        line,
                        f"{label} {value} is also in {other.id} ({other.path}); the same work "
                        "should have one record: merge them",
                    )
                )
            else:
                seen[value] = item
        for kind, name, line in item.names:
            key = title_key(name)
            if not key:
                continue
            if key in names and names[key][0].id != item.id:
                other, other_kind, other_line = names[key]
                problems.append(
                    Problem(
                        item.path,
                        line,
                        f"{kind} {name!r} is also the {other_kind} of {other.id} "
                        f"({other.path}:{other_line}); names must point at one work, so make "
                        "this one distinct (e.g. add the venue or a qualifier)",
                    )
                )
            elif key not in names:
                names[key] = (item, kind, line)
    return problems


def collect_paths(paths: Sequence[Path]) -> tuple[list[Path], list[Problem]]:
    """Record files named by the arguments (directories are expanded), and misnamed files."""
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        # os.path.isdir, not Path.is_dir: it is False (never an OSError) for what cannot be
        # stat'ed, which then is read as a file and reported as one.
        if os.path.isdir(path):
            try:
                files.extend(record_paths(path))
                problems.extend(misnamed_files(path))
            except RecordError as exc:  # the directory cannot be listed
                problems.extend(exc.problems)
        else:
            files.append(path)
    if len(paths) == 1:
        return files, problems  # one directory lists each file once
    seen: set[Path] = set()
    unique = []
    for path in files:
        resolved = Path(os.path.realpath(path))  # Path.resolve raises on a symlink loop
        if resolved not in seen:
            seen.add(resolved)
            unique.append(path)
    return unique, problems


def validate(paths: Sequence[Path], keep_records: bool = False, jobs: int | None = None) -> Report:
    """Validate files and directories of records; the problems come sorted by path and line."""
    files, problems = collect_paths(paths)
    checked = check_files(files, keep_records, jobs)
    for item in checked:
        problems.extend(item.problems)
    problems.extend(cross_record_problems(checked))
    records = [item.record for item in checked if item.record is not None]
    return Report(len(files), sorted(set(problems)), records)
