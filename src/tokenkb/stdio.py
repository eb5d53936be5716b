"""Standard output and error that outlive their reader: `kb validate | head -1`.

When the reader of a pipe goes away, the next write raises BrokenPipeError. Caught around the
whole command, that error would cut the command short and lose the exit code it was about to
return (1 for "problems found"); uncaught, it is a traceback, and a failed last flush at exit is
an "Exception ignored" message with exit code 120. Here each stream swallows the error instead:
once its reader is gone it writes nothing more, the command runs to its end, and `kb` exits with
the code the command computed. This module only wraps streams; it never prints.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO, cast


class ReaderGoneTolerant:
    """A text stream that quietly stops writing once its reader has closed the pipe."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self.reader_gone = True
        # What is still buffered is flushed once more when the interpreter exits: point the
        # descriptor at /dev/null so that flush succeeds instead of raising again.
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            return  # an in-memory stream (tests): nothing is flushed at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def tolerate_closed_pipes() -> Iterator[None]:
    """Run the block with `sys.stdout` and `sys.stderr` that survive a closed pipe; when the
    block ends normally the last buffered output is flushed here, so it cannot fail later, at
    exit (after an exception, such as Ctrl-C, nothing waits on a reader that may not read)."""
    saved = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, ReaderGoneTolerant(saved[0]))
    sys.stderr = cast(TextIO, ReaderGoneTolerant(saved[1]))
    try:
        yield
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        sys.stdout, sys.stderr = saved
