"""The one place that writes files: atomically, so no reader ever sees half a file.

Everything that produces output (records, caches, generated pages) builds text in memory and
hands it here. A write goes to a temporary file in the target's directory, is flushed to disk,
then renamed over the target; on any error the temporary file is removed and the target is left
as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

LOCK_NAME = ".kb.lock"


class LockTimeout(Exception):
    """Another process held the lock for longer than we were willing to wait."""


@contextlib.contextmanager
def locked(directory: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive advisory lock on `directory` (its `.kb.lock` file) for the block.

    Every command that writes records (import, new, enrich, fmt) plans *and* writes under this
    lock, so two concurrent runs cannot both decide to create the same file: the second waits,
    then plans against what the first wrote. Readers do not lock (writes are atomic renames).
    Raises LockTimeout after `timeout` seconds, and OSError when the lock file cannot be made
    (a read-only directory).
    """
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{directory}: another kb command has been writing here for "
                        f"{timeout:.0f} s; try again when it has finished"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8, `\\n` line ends) in one rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def stale_files(files: Mapping[Path, str]) -> list[Path]:
    """The paths whose current contents differ from the text given for them."""
    stale = []
    for path, text in files.items():
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            stale.append(path)
            continue
        if current != text.encode("utf-8"):
            stale.append(path)
    return stale


def write_files(files: Mapping[Path, str]) -> list[Path]:
    """Write every file whose contents changed; returns the paths written."""
    changed = stale_files(files)
    for path in changed:
        write_text_atomic(path, files[path])
    return changed
