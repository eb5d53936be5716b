"""`kb` writing into a pipe whose reader goes away (`kb validate | head -1`): the command keeps
the exit code it computed, and prints no traceback. These run `kb` as a real subprocess, because
only a real pipe shows what the shell sees.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tokenkb.cli import main

from .conftest import PAPERS, valid_record

# Long problem lines (a long file name) in many files, so the output (~130 KB) is well over a
# pipe's 64 KiB: the command is still writing when the reader goes away, whatever the timing.
LONG = "x" * 80


def kb_into_closed_pipe(
    *args: str, cwd: Path, lines: int = 1, merge_stderr: bool = False, buffered: bool = True
) -> tuple[int, str, str]:
    """Run `kb ARGS | head -LINES`: read that many lines, close the pipe, wait.
    Returns (exit code, the lines read, stderr). `buffered=False` runs it with
    PYTHONUNBUFFERED=1, where every line meets the closed pipe at once, not at the next flush."""
    env = {**os.environ, "TOKENKB_CACHE_DIR": str(cwd / "kbcache")}
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenkb.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
    )
    assert process.stdout is not None
    read = b"".join(process.stdout.readline() for _ in range(lines))
    process.stdout.close()
    err = process.stderr.read() if process.stderr else b""
    code = process.wait(timeout=120)
    return code, read.decode(), err.decode()


@pytest.fixture(scope="module")
def invalid_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose 800 records each have one problem (a year that is not a number)."""
    root = tmp_path_factory.mktemp("pipes")
    papers = root / "papers"
    papers.mkdir()
    for index in range(800):
        record_id = f"{LONG}{index}-2023"
        text = valid_record(id=record_id, arxiv=f"2301.{index:05d}")
        (papers / f"{record_id}.yaml").write_text(text.replace("year: 2023", "year: soon"))
    return root


def assert_quiet(err: str) -> None:
    assert "Traceback" not in err
    assert "Exception ignored" not in err
    assert "BrokenPipeError" not in err


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_validate_into_a_closed_pipe_keeps_exit_code_1(
    invalid_project: Path, buffered: bool
) -> None:
    code, read, err = kb_into_closed_pipe(
        "validate", "papers", cwd=invalid_project, buffered=buffered
    )
    assert read.startswith(f"papers/{LONG}")
    assert ": year: " in read
    assert_quiet(err)
    assert code == 1


def test_validate_with_stderr_into_the_same_closed_pipe_keeps_exit_code_1(
    invalid_project: Path,
) -> None:
    code, _, _ = kb_into_closed_pipe("validate", "papers", cwd=invalid_project, merge_stderr=True)
    assert code == 1


def test_fmt_check_into_a_closed_pipe_keeps_exit_code_1(invalid_project: Path) -> None:
    code, read, err = kb_into_closed_pipe("fmt", "--check", "papers", cwd=invalid_project)
    assert read.startswith(f"papers/{LONG}")
    assert_quiet(err)
    assert code == 1


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_pipe_closed_before_anything_is_written_keeps_exit_code_1(
    tmp_path: Path, buffered: bool
) -> None:
    """`kb validate | true`: the reader is gone before the first line; buffered, the short
    report meets the closed pipe only in the last flush at exit."""
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "one-2023.yaml").write_text(
        valid_record(id="one-2023").replace("year: 2023", "year: soon")
    )
    code, read, err = kb_into_closed_pipe(
        "validate", "papers", cwd=tmp_path, lines=0, buffered=buffered
    )
    assert read == ""
    assert_quiet(err)
    assert "1 problem in 1 of 1 file" in err
    assert code == 1


def test_render_check_into_a_closed_pipe_keeps_exit_code_1(tmp_path: Path) -> None:
    shutil.copytree(PAPERS, tmp_path / "papers")  # no schema/ nor awesome/: all of them stale
    code, read, err = kb_into_closed_pipe("render", "--check", cwd=tmp_path)
    assert read == "--- a/schema/paper.schema.json\n"
    assert_quiet(err)
    assert code == 1


def test_query_into_a_closed_pipe_exits_0(tmp_path: Path) -> None:
    code, read, err = kb_into_closed_pipe(
        "--papers", str(PAPERS), "query", "--format", "json", cwd=tmp_path
    )
    assert read == "[\n"
    assert_quiet(err)
    assert code == 0


def test_interrupt_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("tokenkb.cli.cmd_validate", interrupted)
    assert main(["validate"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_sigint_in_a_subprocess_exits_130_without_a_traceback(invalid_project: Path) -> None:
    """Ctrl-C while `kb validate` works: exit 130, no traceback."""
    # The fault hook holds the command after its first line of output (a wait on a full pipe
    # depended on the pipe's size and the machine's load). SIGINT is reset to its default in the
    # child: a test run started in the background of a non-interactive shell ignores SIGINT, and
    # children inherit that, so the interrupt never arrived there.
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenkb.cli", "validate", "--jobs", "1", "papers"],
        cwd=invalid_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TOKENKB_FAULT": "print:problem@1:hold", "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    process.stdout.readline()  # the command is printing: interrupt it there
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err.decode()
    assert process.returncode == 130
