"""A cache of validated records, so that `kb query` answers without re-parsing every file.

The cache is one JSON file holding, per record file, its stat signature (mtime in ns, size,
inode) and the validated record. A record is reused only when its signature is unchanged and its
mtime is not within `RACY_NS` of the moment the cache was written (a file changed in the same
clock tick as the cache write could otherwise look unchanged: git's "racily clean" problem).
Files added or removed, and any change to the schema code, invalidate what they must.

This module imports neither pydantic nor the store unless a file must be (re)validated: that is
what keeps a query on a warm cache fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from . import __version__
from .problems import Problem, RecordError

CACHE_FORMAT = 1
RACY_NS = 2_000_000_000
_SCHEMA_MODULES = ("model.py", "taxonomy.py", "store.py")


def cache_path(papers: Path) -> Path:
    """Where the cache for a papers directory lives (`TOKENKB_CACHE_DIR` overrides)."""
    directory = os.environ.get("TOKENKB_CACHE_DIR")
    base = Path(directory) if directory else papers.resolve().parent / ".kbcache"
    digest = hashlib.sha256(str(papers.resolve()).encode()).hexdigest()[:16]
    return base / f"records-{digest}.json"


def _code_signature() -> list[Any]:
    here = Path(__file__).parent
    signature: list[Any] = [CACHE_FORMAT, __version__]
    for name in _SCHEMA_MODULES:
        st = (here / name).stat()
        signature.append([name, st.st_mtime_ns, st.st_size])
    return signature


def _signature(entry: os.DirEntry[str]) -> list[int]:
    st = entry.stat()
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def load_records(papers: Path, use_cache: bool = True) -> list[dict[str, Any]]:
    """Every record in `papers` as a JSON-ready dict, validated; RecordError if any is invalid.

    Records come in file-name order. Invalid files are never cached, so they are reported again
    on every call until fixed.
    """
    try:
        entries = sorted(
            (
                e
                for e in os.scandir(papers)
                if e.name.endswith(".yaml") and not e.name.startswith(".")
            ),
            key=lambda e: e.name,
        )
    except FileNotFoundError:
        raise RecordError([Problem(str(papers), 1, "no such papers directory")]) from None
    signatures = {e.name: _signature(e) for e in entries}
    code = _code_signature()
    path = cache_path(papers)
    cached: dict[str, Any] = {}
    written_ns = 0
    if use_cache:
        try:
            data = json.loads(path.read_bytes())
            if data.get("code") == code:
                cached = data["files"]
                written_ns = int(data["written_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            cached = {}
    records: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    for name, signature in signatures.items():
        hit = cached.get(name)
        if hit is not None and hit[0] == signature and signature[0] < written_ns - RACY_NS:
            records[name] = hit[1]
        else:
            stale.append(name)
    if stale:
        records.update(_validate_files(papers, stale))
    if use_cache and (stale or len(cached) != len(signatures)):
        _write_cache(path, code, {name: [signatures[name], records[name]] for name in signatures})
    return [records[name] for name in signatures]


def _validate_files(papers: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    from .validate import check_files

    checked = check_files([papers / name for name in names], keep_records=True)
    problems = [problem for item in checked for problem in item.problems]
    if problems:
        raise RecordError(sorted(problems))
    return {Path(item.path).name: item.record for item in checked if item.record is not None}


def _write_cache(path: Path, code: list[Any], files: dict[str, Any]) -> None:
    from .outputs import write_text_atomic

    payload = {"code": code, "written_ns": time.time_ns(), "files": files}
    # A read-only checkout still answers queries, just without the speed-up.
    with contextlib.suppress(OSError):
        write_text_atomic(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
