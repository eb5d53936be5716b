"""Make a Pagefind search bundle byte-for-byte reproducible.

Pagefind 1.5.2 (the newest on PyPI) writes its filter indexes from a hash map with a random
seed: the values inside each `filter/*.pf_filter` file, the list of filters in the
`pagefind.*.pf_meta` file (and the sort list beside it) come out in a different order on every
run, so those files, their content-hash names and `pagefind-entry.json` differ between two builds
of the same site (Pagefind/pagefind#638; fixed upstream after 1.5.2 by #1124, which sorts
them). `normalise_bundle` sorts them the same way, re-encodes the files, names them by the
hash of their contents as Pagefind does, and rewrites the entry file. On a bundle that is already
sorted it changes nothing but the gzip framing, which it always writes the same way.

The files are gzip-compressed `pagefind_dcd` + CBOR. The CBOR here uses three types only
(unsigned integers, text, arrays, all of definite length); anything else, or a file that does
not re-encode to the same bytes, is a PagefindFormatError: the build stops rather than publish a
bundle it does not understand. This module reads and writes only inside the bundle directory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

SIGNATURE = b"pagefind_dcd"
_UINT, _TEXT, _ARRAY = 0, 3, 4


class PagefindFormatError(Exception):
    """A bundle file is not in the format this module knows (another Pagefind version?)."""


def normalise_bundle(bundle: Path) -> None:
    """Sort the filter indexes of the Pagefind bundle in `bundle` (a site's `pagefind/`)."""
    entry_path = bundle / "pagefind-entry.json"
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    languages: dict[str, dict[str, Any]] = entry["languages"]
    for language, info in languages.items():
        meta_path = bundle / f"pagefind.{info['hash']}.pf_meta"
        meta = _read(meta_path)
        if not (isinstance(meta, list) and len(meta) == 6):
            raise PagefindFormatError(f"{meta_path}: expected 6 fields, found {meta!r:.80}")
        # meta = [version, pages, index_chunks, filters, sorts, meta_fields]
        old_files = {}
        for name, old_hash in meta[3]:
            path = bundle / "filter" / f"{old_hash}.pf_filter"
            old_files[name] = (path, _read(path))
        new_files: dict[str, bytes] = {}
        filters = []
        for name in sorted(old_files):
            filter_name, values = old_files[name][1]
            data = _encode([filter_name, sorted(values, key=lambda value: value[0])])
            file_hash = _short_hash(language, data, 7, taken=new_files)
            new_files[file_hash] = data
            filters.append([name, file_hash])
        for path, _ in old_files.values():
            path.unlink()
        for file_hash, data in new_files.items():
            _write(bundle / "filter" / f"{file_hash}.pf_filter", data)
        meta[3] = filters
        meta[4] = sorted(meta[4], key=lambda sort: sort[0])
        data = _encode(meta)
        meta_hash = _short_hash(language, data, len(language) + 8, taken={})
        meta_path.unlink()
        _write(bundle / f"pagefind.{meta_hash}.pf_meta", data)
        info["hash"] = meta_hash
    entry["languages"] = dict(sorted(languages.items()))
    # The same compact JSON that Pagefind writes (serde_json::to_string).
    text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    entry_path.write_text(text, encoding="utf-8")


def _short_hash(language: str, data: bytes, length: int, taken: dict[str, bytes]) -> str:
    """`<language>_<first `length` hex digits of the SHA-1>`, longer while the name is taken.
    The hex digits are Pagefind's: each byte without a leading zero."""
    digest = "".join(f"{byte:x}" for byte in hashlib.sha1(data).digest())
    for end in range(length, len(digest) + 1):
        name = f"{language}_{digest[:end]}"
        if name not in taken:
            return name
    raise PagefindFormatError(f"two filter indexes of {language} have the same contents")


def _read(path: Path) -> Any:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise PagefindFormatError(f"{path}: not a gzip file ({exc})") from None
    if not raw.startswith(SIGNATURE):
        raise PagefindFormatError(f"{path}: does not start with {SIGNATURE!r}")
    data = raw[len(SIGNATURE) :]
    try:
        value, end = _decode(data, 0)
    except IndexError:
        raise PagefindFormatError(f"{path}: truncated CBOR") from None
    except PagefindFormatError as exc:
        raise PagefindFormatError(f"{path}: {exc}") from None
    if end != len(data) or _encode(value) != data:
        raise PagefindFormatError(f"{path}: CBOR this module cannot re-encode byte for byte")
    return value


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(SIGNATURE + data, compresslevel=9, mtime=0))


_MAJOR_NAMES = ("unsigned integer", "negative integer", "byte string", "text", "array", "map",
                "tag", "float or simple value")  # fmt: skip


def _decode(data: bytes, pos: int) -> tuple[Any, int]:
    start, major, info = pos, data[pos] >> 5, data[pos] & 0x1F
    pos += 1
    if info < 24:
        length = info
    elif info <= 27:
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise IndexError(pos)
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    else:
        raise PagefindFormatError(f"CBOR item of indefinite or reserved length at byte {start}")
    if major == _UINT:
        return length, pos
    if major == _TEXT:
        if pos + length > len(data):
            raise IndexError(pos)
        return data[pos : pos + length].decode("utf-8"), pos + length
    if major == _ARRAY:
        items = []
        for _ in range(length):
            item, pos = _decode(data, pos)
            items.append(item)
        return items, pos
    raise PagefindFormatError(
        f"CBOR item of major type {major} (a {_MAJOR_NAMES[major]}) at byte {start}; expected "
        "an unsigned integer, text or an array"
    )


def _encode(value: Any) -> bytes:
    if isinstance(value, bool):
        raise PagefindFormatError(f"cannot encode {value!r}")
    if isinstance(value, int):
        return _head(_UINT, value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return _head(_TEXT, len(data)) + data
    if isinstance(value, list):
        return _head(_ARRAY, len(value)) + b"".join(_encode(item) for item in value)
    raise PagefindFormatError(f"cannot encode {value!r}")


def _head(major: int, value: int) -> bytes:
    """The shortest head for `value`, as minicbor (Pagefind's encoder) writes it."""
    if value < 24:
        return bytes([major << 5 | value])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, value)
    raise PagefindFormatError(f"integer {value} is too large for CBOR")
