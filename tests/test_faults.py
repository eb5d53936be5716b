"""Fault injection for the commands that write records: `kb import` killed at each step of its
write, a full disk, a read-only directory, and two imports at once. After each, papers/ is
either untouched or complete, no temporary file remains once the next command has run, `kb
validate` passes, and a retry gives what a clean import gives.

Faults are triggered through `outputs.fault` (`TOKENKB_FAULT=point@N[:action]`) in a real `kb`
subprocess, so a SIGKILL is a real one. (`kb build` has its own: tests/test_build_faults.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PAPERS, ROOT
from tokenkb import outputs

SOURCES = ROOT / "tests" / "data" / "sources"
LISTS = [SOURCES / "numbered_bold.md", SOURCES / "structured.txt", SOURCES / "works.bib"]


def kb(papers: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENKB_CACHE_DIR": str(papers.parent / "kbcache")}
    env.pop("TOKENKB_FAULT", None)
    if fault:
        env["TOKENKB_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "tokenkb.cli", "--papers", str(papers), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def base(directory: Path) -> Path:
    papers = directory / "papers"
    papers.mkdir(parents=True)
    for name in ("tome-2023", "evit-2022"):
        shutil.copy(PAPERS / f"{name}.yaml", papers)
    return papers


def contents(papers: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(papers.iterdir())}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """papers/ after an uninterrupted import of LISTS: what every retry must equal."""
    papers = base(tmp_path_factory.mktemp("clean"))
    done = kb(papers, "import", *map(str, LISTS))
    assert done.returncode == 0, done.stderr
    result = contents(papers)
    assert len(result) > 4  # the import writes several files: there is a middle to kill it in
    return result


@pytest.mark.parametrize(
    "point",
    ["write:stage@1", "write:stage@3", "write:journal@1", "write:rename@1", "write:rename@3"],
)
def test_a_killed_import_leaves_papers_untouched_or_complete(
    tmp_path: Path, clean: dict[str, bytes], point: str
) -> None:
    papers = base(tmp_path)
    before = contents(papers)
    killed = kb(papers, "import", *map(str, LISTS), fault=point)
    assert killed.returncode == -signal.SIGKILL
    records = {name: data for name, data in contents(papers).items() if not name.startswith(".")}
    if point.startswith("write:rename"):  # killed during the renames: the journal is there
        assert (papers / outputs.JOURNAL_NAME).exists()
        assert (records != before) == (point != "write:rename@1")  # some were renamed
    else:
        assert records == before  # killed before the journal: nothing changed
    check = kb(papers, "validate")  # any command finishes or cleans up first
    assert check.returncode == 0, check.stdout + check.stderr
    assert contents(papers) == (clean if point.startswith("write:rename") else before)
    retry = kb(papers, "import", *map(str, LISTS))
    assert retry.returncode == 0, retry.stderr
    assert contents(papers) == clean


@pytest.mark.parametrize(
    ("point", "words"),
    [
        ("write:stage@2:enospc", "No space left on device"),
        ("write:stage@1:erofs", "Read-only file system"),
        ("write:journal@1:enospc", "No space left on device"),
    ],
)
def test_a_full_disk_or_read_only_directory_is_one_line_and_changes_nothing(
    tmp_path: Path, clean: dict[str, bytes], point: str, words: str
) -> None:
    papers = base(tmp_path)
    before = contents(papers)
    failed = kb(papers, "import", *map(str, LISTS), fault=point)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and words in failed.stderr, failed.stderr
    assert "nothing was changed" in failed.stderr and "Traceback" not in failed.stderr
    assert contents(papers) == before  # no record and no temporary file
    assert kb(papers, "import", *map(str, LISTS)).returncode == 0
    assert contents(papers) == clean


def test_two_concurrent_imports_lose_no_work(tmp_path: Path) -> None:
    """Both lists make a new work whose id would be `foo-2024`: the second import waits for the
    first (which stalls while holding the lock), then plans against what it wrote."""
    papers = tmp_path / "papers"
    papers.mkdir()
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text(
        "# A\n* [CVPR 2024] Foo: Pruning Tokens of Cats [[Paper](https://arxiv.org/abs/2401.00101)]\n",
        encoding="utf-8",
    )
    second.write_text(
        "# B\n* [CVPR 2024] Foo: Merging Tokens of Dogs [[Paper](https://arxiv.org/abs/2401.00202)]\n",
        encoding="utf-8",
    )
    env = {**os.environ, "TOKENKB_CACHE_DIR": str(tmp_path / "kbcache")}
    command = [sys.executable, "-m", "tokenkb.cli", "--papers", str(papers), "import"]
    slow = subprocess.Popen(
        [*command, str(first)],
        env={**env, "TOKENKB_FAULT": "write:stage@1:stall"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Start the second once the first holds the lock and is stalled in its write.
        for _ in range(400):
            if any(p.name.endswith(".tmp") for p in papers.iterdir()) or slow.poll() is not None:
                break
            subprocess.run(["sleep", "0.01"], check=True)
        fast = subprocess.run(
            [*command, str(second)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        slow.wait(timeout=60)
    assert slow.returncode == 0 and fast.returncode == 0, fast.stderr
    titles = sorted(
        p.read_text(encoding="utf-8").split("title: ")[1].split("\n")[0]
        for p in papers.glob("*.yaml")
    )
    assert titles == ["'Foo: Merging Tokens of Dogs'", "'Foo: Pruning Tokens of Cats'"]
    assert sorted(p.name for p in papers.glob("*.yaml")) == ["foo-2024.yaml", "foo-2024b.yaml"]
    assert kb(papers, "validate").returncode == 0


def test_a_stale_journal_from_a_dead_writer_is_completed_and_a_bad_one_reported(
    tmp_path: Path,
) -> None:
    papers = base(tmp_path)
    (papers / ".new-2024.yaml.abc.tmp").write_bytes((papers / "tome-2023.yaml").read_bytes())
    (papers / outputs.JOURNAL_NAME).write_text(
        '{"renames": [[".new-2024.yaml.abc.tmp", "tome-2023.yaml"]]}', encoding="utf-8"
    )
    (papers / ".orphan.yaml.xyz.tmp").write_text("half a record", encoding="utf-8")
    assert outputs.recover(papers) == [
        f"{papers}: completed a write that was interrupted (1 files)",
        f"{papers}: removed 1 temporary files of an interrupted run",
    ]
    assert sorted(p.name for p in papers.iterdir()) == ["evit-2022.yaml", "tome-2023.yaml"]
    (papers / outputs.JOURNAL_NAME).write_text('{"renames": [["../x", "y"]]}', encoding="utf-8")
    (message,) = outputs.recover(papers)
    assert "cannot complete an interrupted write" in message
    with outputs.locked(papers):  # a live writer's journal is never touched
        (papers / outputs.JOURNAL_NAME).write_text('{"renames": []}', encoding="utf-8")
        assert outputs.recover(papers) == []
        assert (papers / outputs.JOURNAL_NAME).exists()
