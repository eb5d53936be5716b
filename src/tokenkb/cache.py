"""A cache of validated records, so that `kb query` answers without re-parsing every file.

The cache is one JSON file holding, per record file, its stat signature (mtime in ns, size,
inode) and the validated record. A record is reused only when its signature is unchanged and its
mtime is not within `RACY_NS` of the moment the cache was written (a file changed in the same
clock tick as the cache write could otherwise look unchanged: git's "racily clean" problem).
Files added or removed, and any change to the schema code, invalidate what they must. A cache
file that is unreadable, corrupt, truncated or of the wrong shape is ignored (and rewritten); an
entry that cannot be stat'ed (dangling symlink, deleted since listed) is validated, which reports
it.

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
from .files import directory_entries, is_record_name, read_bytes_bounded
from .problems import RecordError

CACHE_FORMAT = 1
RACY_NS = 2_000_000_000
MAX_CACHE_BYTES = 1 << 30  # far above any real cache; a bigger "cache" is not ours
_SCHEMA_MODULES = ("model.py", "taxonomy.py", "store.py", "files.py")


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


def _signature(entry: os.DirEntry[str]) -> list[int] | None:
    try:
        st = entry.stat()
    except OSError:  # gone or a dangling link: never a cache hit, and validation reports it
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def _read_cache(path: Path, code: list[Any]) -> tuple[dict[str, Any], int]:
    """The cached files and the time the cache was written; nothing when it is not usable."""
    try:
        data = json.loads(read_bytes_bounded(path, MAX_CACHE_BYTES))
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON, too deep
        return {}, 0
    if not isinstance(data, dict) or data.get("code") != code:
        return {}, 0
    files, written_ns = data.get("files"), data.get("written_ns")
    if not isinstance(files, dict) or type(written_ns) is not int:
        return {}, 0
    return files, written_ns


def _hit(entry: Any, signature: list[int]) -> dict[str, Any] | None:
    """The cached record when `entry` is `[signature, record]` for this signature."""
    if (
        isinstance(entry, list)
        and len(entry) == 2
        and entry[0] == signature
        and isinstance(entry[1], dict)
        and isinstance(entry[1].get("id"), str)
    ):
        return entry[1]
    return None


def load_records(papers: Path, use_cache: bool = True) -> list[dict[str, Any]]:
    """Every record in `papers` as a JSON-ready dict, validated; RecordError if any is invalid.

    Records come in file-name order. Invalid files are never cached, so they are reported again
    on every call until fixed.
    """
    entries = [e for e in directory_entries(papers) if is_record_name(e.name)]
    signatures = {e.name: _signature(e) for e in entries}
    code = _code_signature()
    path = cache_path(papers)
    cached, written_ns = _read_cache(path, code) if use_cache else ({}, 0)
    records: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    for name, signature in signatures.items():
        hit = _hit(cached.get(name), signature) if signature is not None else None
        if hit is not None and signature is not None and signature[0] < written_ns - RACY_NS:
            records[name] = hit
        else:
            stale.append(name)
    if stale:
        records.update(_validate_files(papers, stale))
    if use_cache and (stale or len(cached) != len(signatures)):
        files = {name: [sig, records[name]] for name, sig in signatures.items() if sig is not None}
        _write_cache(path, code, files)
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
