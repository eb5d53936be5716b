"""The one place that writes files: atomically, so no reader ever sees half a file.

Everything that produces output (records, caches, generated pages) builds text in memory and
hands it here. A write goes to a temporary file in the target's directory, is flushed to disk,
then renamed over the target; on any error the temporary file is removed and the target is left
as it was.

Several files that must change together (the records one `kb import` writes) go through
`write_transaction`: every file is staged as a temporary file first; only when all are on disk
is a journal written, then the renames; a run killed before the journal leaves the directory
untouched (the next writer removes the stale temporary files), one killed after it is completed
by the next command (`recover`), which renames what the journal lists. Writers hold `locked` on
the directory, so a journal is only ever completed by someone when its writer is gone.

`fault(point)` is the test hook of this module and its callers: with `TOKENKB_FAULT` set to
`point@N` (several, comma-separated), the N-th time the process reaches `point` it kills itself
with SIGKILL (`point@N:enospc` raises ENOSPC instead, `:eio` EIO, `:erofs` EROFS, and `:stall`
waits a second and goes on, `:hold` waits up to a minute for a signal), so tests can stop or
hold a real run at an exact place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

JOURNAL_NAME = ".kb-journal.json"
_FAULT_ERRORS = {"enospc": errno.ENOSPC, "eio": errno.EIO, "erofs": errno.EROFS}
_reached: Counter[str] = Counter()


def fault(point: str) -> None:
    """The test hook (see the module docstring); does nothing unless TOKENKB_FAULT names
    `point`."""
    spec = os.environ.get("TOKENKB_FAULT")
    if not spec:
        return
    _reached[point] += 1
    for item in spec.split(","):
        name, _, rest = item.partition("@")
        count, _, action = rest.partition(":")
        if name != point or _reached[point] != (int(count) if count.isdigit() else 1):
            continue
        if action in _FAULT_ERRORS:
            code = _FAULT_ERRORS[action]
            raise OSError(code, os.strerror(code))
        if action == "stall":
            time.sleep(1.0)
            return
        if action == "hold":  # until a signal ends the process (at most a minute)
            time.sleep(60.0)
            return
        os.kill(os.getpid(), signal.SIGKILL)


class LockTimeout(Exception):
    """Another process held the lock for longer than we were willing to wait."""


@contextlib.contextmanager
def locked(directory: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on `directory` itself for the block: no lock file
    is created, and the kernel releases the lock when the process dies, however it dies.

    Every command that writes records (import, new, enrich, fmt) plans *and* writes under this
    lock, so two concurrent runs cannot both decide to create the same file: the second waits,
    then plans against what the first wrote. Readers do not lock (writes are atomic renames).
    Raises LockTimeout after `timeout` seconds, and OSError when the directory cannot be opened.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
        os.chmod(tmp, _mode_for(path))
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


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a directory
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_transaction(directory: Path, files: Mapping[Path, str]) -> list[Path]:
    """Write `files` (all directly in `directory`) so that they all change or none does; the
    caller holds `locked(directory)`. Returns the paths written.

    On an error while staging (a full disk, a read-only directory) every temporary file is removed
    and the error is raised: nothing changed. An error during the renames (rare: they move no
    data) leaves the journal, which `recover` completes.
    """
    staged: list[tuple[str, str]] = []  # (temporary name, target name)
    try:
        for path, text in files.items():
            if path.parent.resolve() != directory.resolve():
                raise ValueError(f"{path} is not directly in {directory}")
            fault("write:stage")
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
            staged.append((Path(tmp).name, path.name))
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, _mode_for(path))
        journal = json.dumps({"renames": staged}, ensure_ascii=False)
        fault("write:journal")
        write_text_atomic(directory / JOURNAL_NAME, journal)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(directory / tmp)
        raise
    _fsync_directory(directory)
    _complete(directory, staged)
    return [directory / target for _, target in staged]


def _complete(directory: Path, renames: list[tuple[str, str]]) -> None:
    for tmp, target in renames:
        fault("write:rename")
        with contextlib.suppress(FileNotFoundError):  # renamed before an interruption
            os.replace(directory / tmp, directory / target)
    _fsync_directory(directory)
    os.unlink(directory / JOURNAL_NAME)


def recover(directory: Path) -> list[str]:
    """Finish what an interrupted writer left in `directory`: complete a journalled transaction,
    remove stale temporary files. Does nothing while another process holds the lock (its
    writer is alive) or when the directory cannot be opened. Returns one line per thing done,
    for the user."""
    try:
        if not any(_leftover(entry.name) for entry in os.scandir(directory)):
            return []  # the common case: nothing to do, and no lock taken
        with locked(directory, timeout=0):
            return _recover_locked(directory)
    except (LockTimeout, OSError):
        return []  # a writer is at work (what it left is not stale), or an unreadable directory


def _leftover(name: str) -> bool:
    return name == JOURNAL_NAME or (name.startswith(".") and name.endswith(".tmp"))


def _recover_locked(directory: Path) -> list[str]:
    done: list[str] = []
    journal = directory / JOURNAL_NAME
    if journal.exists():
        try:
            renames = [(str(a), str(b)) for a, b in json.loads(journal.read_text())["renames"]]
            if any("/" in name or name.startswith("..") for pair in renames for name in pair):
                raise ValueError("names outside the directory")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [
                f"{journal}: cannot complete an interrupted write ({exc}); check "
                "`git status` in this directory, then delete this file"
            ]
        try:
            _complete(directory, renames)
        except OSError as exc:
            return [
                f"{journal}: cannot complete an interrupted write yet: "
                f"{exc.strerror or exc}; it will be completed by the next command that can"
            ]
        done.append(f"{directory}: completed a write that was interrupted ({len(renames)} files)")
    stale = [
        entry.name
        for entry in os.scandir(directory)
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file()
    ]
    for name in stale:
        with contextlib.suppress(OSError):
            os.unlink(directory / name)
    if stale:
        done.append(f"{directory}: removed {len(stale)} temporary files of an interrupted run")
    return done


# Linux renameat2(2): swap two paths in one step (glibc >= 2.28 exports it).
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap `first` and `second` atomically; False where the system cannot (then nothing moved)."""
    import ctypes
    import sys

    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # an older C library
        return False
    path, flags = ctypes.c_char_p, ctypes.c_uint
    renameat2.argtypes = (ctypes.c_int, path, ctypes.c_int, path, flags)
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system lacks it
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))


def replace_directory(staged: Path, target: Path, aside: Path) -> None:
    """Put the finished directory `staged` at `target`, removing what was there.

    A reader, or a crash, at any moment sees either the whole old tree or the whole new one at
    `target`: on Linux the two are exchanged in one renameat2(RENAME_EXCHANGE), and the old tree,
    now at `staged`, is removed. Where that is not available the old tree is first renamed to
    `aside` (same file system), then `staged` to `target`: a crash between the two renames leaves
    no `target` and the whole old tree at `aside`, which the caller's next run must rename back.
    """
    import shutil

    if not target.exists():
        os.rename(staged, target)
    elif _exchange(staged, target):
        fault("replace-directory:swapped")
        shutil.rmtree(staged)
    else:
        os.rename(target, aside)
        fault("replace-directory:aside")
        os.rename(staged, target)
        fault("replace-directory:swapped")
        shutil.rmtree(aside)
