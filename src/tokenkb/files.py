"""Read files and list directories that anyone may have put anything into, without hanging.

A papers directory is filled by pull requests: an entry may be a symlink to /dev/zero, a FIFO,
a socket, a directory named `x.yaml`, a dangling symlink or a loop, or may vanish between being
listed and being read. Every reader of records, lists and caches goes through this module, which
reads regular files only, never more than a limit, and turns what the system refuses into one
`Problem` line that says what to do. It imports nothing heavy (the warm `kb query` path uses it)
and it does not print.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .problems import Problem, RecordError

_CHUNK = 1 << 20


class NotRegularFile(OSError):
    """The path is a directory, FIFO, socket or device: nothing a record or list can be."""


class FileTooLarge(OSError):
    """The file holds more bytes than the reader accepts; `size` is how many (at least)."""

    def __init__(self, path: Path, size: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"file is {size} bytes, over the limit of {limit}", str(path))
        self.size = size
        self.limit = limit


def read_bytes_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed), when it has at most `limit`.

    Never blocks and never reads more than `limit + 1` bytes, whatever `path` is: a FIFO, socket,
    device (a symlink to /dev/zero) or directory raises NotRegularFile before anything is read,
    a longer file raises FileTooLarge, and everything else the system refuses raises its OSError
    (FileNotFoundError for a dangling symlink or a file deleted since it was listed, ELOOP for a
    symlink loop, PermissionError). `read_problem` turns any of them into a one-line message.
    """
    # stat first so that a FIFO or device is never even opened (opening some has effects);
    # O_NONBLOCK and the fstat below cover a file swapped for one between stat and open.
    _check_regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        _check_regular(info.st_mode, path)
        if info.st_size > limit:
            raise FileTooLarge(path, info.st_size, limit)
        data = bytearray()
        while len(data) <= limit:  # the file may have grown since fstat: read one byte past
            chunk = os.read(fd, min(_CHUNK, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileTooLarge(path, len(data), limit)
    return bytes(data)


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular(mode: int, path: Path) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "something other than a file")
    raise NotRegularFile(errno.EINVAL, f"it is {kind}, not a regular file", str(path))


def read_problem(exc: OSError, path: Path) -> str:
    """Why `read_bytes_bounded` failed on `path`, and what to do about it, in one line.

    (FileTooLarge is the caller's to word: only it knows what the limit is for.)
    """
    if isinstance(exc, NotRegularFile):
        return f"cannot read file: {exc.strerror}; only regular files are read, so remove it"
    return f"cannot read file: {_reason(exc, path)}"


def directory_problem(exc: OSError, directory: Path) -> Problem:
    """A directory that cannot be listed, as one Problem at its line 1."""
    if isinstance(exc, NotADirectoryError):
        reason = "it is a file, not a directory; give the papers directory"
    else:
        reason = _reason(exc, directory)
    return Problem(str(directory), 1, f"cannot list directory: {reason}")


def _reason(exc: OSError, path: Path) -> str:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"it is a symbolic link to {target!r}, which does not exist; fix or remove it"
        return "it does not exist (deleted or renamed while kb ran?); check the path, run again"
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link loop; fix or remove the link"
    if isinstance(exc, PermissionError):
        return "permission denied; make it readable (chmod a+rX)"
    reason = " ".join((exc.strerror or str(exc) or type(exc).__name__).split())
    return f"{reason}; check it and the directory it is in"


def is_record_name(name: str) -> bool:
    """Whether a papers directory entry of this name is read as a record (`<id>.yaml`)."""
    return name.endswith(".yaml") and not name.startswith(".")


def directory_entries(directory: Path) -> list[os.DirEntry[str]]:
    """Every entry of a directory, sorted by name; RecordError when it cannot be listed.

    Entries are not checked to be files: reading one that is not reports it.
    """
    try:
        with os.scandir(directory) as scan:
            entries = list(scan)
    except OSError as exc:
        raise RecordError([directory_problem(exc, directory)]) from None
    return sorted(entries, key=lambda e: e.name)
