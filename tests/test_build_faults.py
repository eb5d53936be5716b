"""`kb build` under faults: killed at each step, a failing step, two builds at once, and two
builds of the same inputs. After each, site/ is whole (the previous build's or the new one's,
byte for byte), nothing of the killed build is left once the next build has run, and a retry
equals a clean build.

The builds are real `kb build` subprocesses on a copy of the project with a subset of papers/
(fast, and the same pipeline); faults come from the build's test hook (`TOKENKB_FAULT=build:...`,
see `tokenkb.render`), so a SIGKILL is a real one. The project alternates between two sets of
inputs, A and B (B has one work more), so that "the previous site" and "the new site" differ.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tokenkb import outputs, render
from tokenkb.pagefind_index import PagefindFormatError, normalise_bundle

from .conftest import PAPERS, ROOT

SUBSET = sorted(PAPERS.glob("*.yaml"))[:20]
EXTRA = sorted(PAPERS.glob("*.yaml"))[20]  # the one work more in inputs B


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` by relative path, with its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def leftovers(root: Path) -> list[str]:
    """What builds leave in build/ besides docs/: staging directories (none after a build)."""
    return sorted(p.name for p in (root / "build").iterdir() if p.name != "docs")


def environment(root: Path, fault: str | None = None) -> dict[str, str]:
    env = {**os.environ, "TOKENKB_CACHE_DIR": str(root / "kbcache")}
    for name in ("TOKENKB_FAULT", "SOURCE_DATE_EPOCH", "TOKENKB_PAPERS"):
        env.pop(name, None)
    if fault:
        env["TOKENKB_FAULT"] = fault
    return env


@dataclass
class Build:
    returncode: int
    stdout: str
    stderr: str
    pid: int


def start_build(root: Path, fault: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tokenkb.cli", "--papers", str(root / "papers"), "build"],
        env=environment(root, fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> Build:
    out, err = process.communicate(timeout=300)
    return Build(process.returncode, out, err, process.pid)


def kb_build(root: Path, fault: str | None = None) -> Build:
    return finish(start_build(root, fault))


def running_steps(root: Path) -> list[int]:
    """Live processes (not zombies) whose command line names root/build: mkdocs, Pagefind."""
    needle = os.fsencode(root / "build")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for_steps_to_end(root: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while running_steps(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_steps(root) == []


@dataclass
class Project:
    root: Path
    sites: dict[str, dict[str, bytes]] = field(default_factory=dict)
    docs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    built: str = ""  # the inputs that site/ was last built from

    def use(self, inputs: str) -> None:
        extra = self.root / "papers" / EXTRA.name
        if inputs == "B":
            shutil.copy(EXTRA, extra)
        else:
            extra.unlink(missing_ok=True)

    def other(self) -> str:
        return "B" if self.built == "A" else "A"


def copy_project(root: Path) -> None:
    (root / "papers").mkdir(parents=True)
    for path in SUBSET:
        shutil.copy(path, root / "papers")
    for name in ("docs", "awesome", "schema"):
        shutil.copytree(ROOT / name, root / name)
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(ROOT / "benchmarks" / "results", root / "benchmarks" / "results")
    shutil.copytree(ROOT / "reference_impls", root / "reference_impls",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The project built once from inputs B, then once from A (site/ is A's)."""
    project = Project(tmp_path_factory.mktemp("build") / "project")
    copy_project(project.root)
    for inputs in ("B", "A"):
        project.use(inputs)
        done = kb_build(project.root)
        assert done.returncode == 0, done.stderr
        project.sites[inputs] = tree(project.root / "site")
        project.docs[inputs] = tree(project.root / "build" / "docs")
        project.built = inputs
    assert project.sites["A"] != project.sites["B"]
    assert "pagefind/pagefind-entry.json" in project.sites["A"]
    return project


def retry_equals_a_clean_build(project: Project, inputs: str) -> None:
    retry = kb_build(project.root)
    assert retry.returncode == 0, retry.stderr
    assert leftovers(project.root) == []
    assert tree(project.root / "site") == project.sites[inputs]
    assert tree(project.root / "build" / "docs") == project.docs[inputs]
    project.built = inputs


# --- reproducible -----------------------------------------------------------------------------


def test_the_same_inputs_give_the_same_bytes(
    project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Another copy of the project (another path, another process, another day for all the
    build knows): the whole site/ is byte-identical, Pagefind's index included."""
    again = tmp_path_factory.mktemp("again") / "project"
    copy_project(again)
    done = kb_build(again)
    assert done.returncode == 0, done.stderr
    assert tree(again / "site") == project.sites["A"]
    assert tree(again / "build" / "docs") == project.docs["A"]


# --- killed -----------------------------------------------------------------------------------

# (fault point, does site/ hold the new site once the build is killed there)
KILL_POINTS = [
    ("build:after-sources", False),
    ("build:during-mkdocs", False),
    ("build:after-mkdocs", False),
    ("build:during-pagefind", False),
    ("build:before-swap", False),
    ("replace-directory:swapped@2", True),  # @1 is build/docs; the old site is still on disk
]


@pytest.mark.parametrize(("point", "swapped"), KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_a_killed_build_leaves_a_whole_site_and_a_retry_equals_a_clean_build(
    project: Project, point: str, swapped: bool
) -> None:
    old, new = project.built, project.other()
    project.use(new)
    killed = kb_build(project.root, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # A step of the killed build dies with it: it does not write on into its staging directory.
    wait_for_steps_to_end(project.root)
    staging = project.root / "build" / f"site.{killed.pid}.tmp"
    if point == "build:during-mkdocs":
        assert not (staging / "index.html").exists()
    if point == "build:during-pagefind":
        assert not (staging / "pagefind").exists()
    assert tree(project.root / "site") == project.sites[new if swapped else old]
    if point not in ("build:after-sources", "build:during-mkdocs"):
        assert leftovers(project.root) != []  # so the retry has something to clean up
    project.built = new if swapped else old
    retry_equals_a_clean_build(project, new)


# --- failing ----------------------------------------------------------------------------------


def test_a_failing_mkdocs_leaves_the_previous_site_and_no_staging(project: Project) -> None:
    """A broken link: mkdocs --strict fails (it did not, with --quiet), the build stops."""
    old, new = project.built, project.other()
    project.use(new)
    broken = project.root / "docs" / "broken.md"
    broken.write_text("# Broken\n\n[a page that is not there](missing.md)\n", encoding="utf-8")
    try:
        failed = kb_build(project.root)
    finally:
        broken.unlink()
    assert failed.returncode == 1
    assert "error: mkdocs build --strict failed:" in failed.stderr
    assert "missing.md" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert tree(project.root / "site") == project.sites[old]
    assert leftovers(project.root) == []


def test_an_error_after_pagefind_leaves_the_previous_site_and_no_staging(
    project: Project,
) -> None:
    old, new = project.built, project.other()
    project.use(new)
    failed = kb_build(project.root, fault="build:after-pagefind@1:eio")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == f"error: {project.root}: Input/output error"
    assert tree(project.root / "site") == project.sites[old]
    assert leftovers(project.root) == []


# --- concurrent -------------------------------------------------------------------------------


def test_two_concurrent_builds_both_succeed_and_equal_one_build(project: Project) -> None:
    new = project.other()
    project.use(new)
    first, second = start_build(project.root), start_build(project.root)
    results = [finish(first), finish(second)]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert results[0].stdout == results[1].stdout  # the same summary
    assert leftovers(project.root) == []
    assert tree(project.root / "site") == project.sites[new]
    assert tree(project.root / "build" / "docs") == project.docs[new]
    project.built = new


# --- the pieces, in process -------------------------------------------------------------------


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_replace_directory_puts_the_new_tree_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)
    staged, target, aside = tmp_path / "new.tmp", tmp_path / "site", tmp_path / "site.old"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "new.html").write_text("new")
    target.mkdir()
    (target / "old.html").write_text("old")
    outputs.replace_directory(staged, target, aside)
    assert tree(target) == {"sub/new.html": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_tree_set_aside_by_an_interrupted_swap_is_put_back(tmp_path: Path) -> None:
    """Killed between the two renames (no RENAME_EXCHANGE): no site/, the old one whole beside
    it. The next build renames it back before anything else."""
    (tmp_path / "build" / "site.4242.old").mkdir(parents=True)
    (tmp_path / "build" / "site.4242.old" / "index.html").write_text("old")
    (tmp_path / "build" / "site.4243.tmp").mkdir()
    render._clean_staging(tmp_path)
    assert tree(tmp_path / "site") == {"index.html": b"old"}
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == []


def test_a_tree_set_aside_is_removed_when_the_swap_completed(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "build" / "docs.4242.old").mkdir(parents=True)
    (tmp_path / "build" / "docs").mkdir()
    (tmp_path / "build" / "site.4242.old").mkdir()
    (tmp_path / "build" / "notes.txt").write_text("not ours")
    render._clean_staging(tmp_path)
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["docs", "notes.txt"]


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(b"pagefind_dcd" + data, mtime=0)


def test_normalise_bundle_sorts_filter_values_and_renames_by_contents(tmp_path: Path) -> None:
    """A hand-made bundle in Pagefind 1.5.2's format: CBOR [filter, [[value, [pages]], ...]]."""
    bundle = tmp_path / "pagefind"
    (bundle / "filter").mkdir(parents=True)
    # ["year", [["2024", [0]], ["2023", [1, 2]]]]
    unsorted = b"\x82dyear\x82\x82d2024\x81\x00\x82d2023\x82\x01\x02"
    (bundle / "filter" / "en_1234567.pf_filter").write_bytes(_gz(unsorted))
    # [version, pages, chunks, [["year", "en_1234567"]], sorts, meta_fields]
    meta = b"\x86e1.5.2\x80\x80\x81\x82dyearjen_1234567\x80\x80"
    (bundle / "pagefind.en_0000000000.pf_meta").write_bytes(_gz(meta))
    (bundle / "pagefind-entry.json").write_text(
        '{"version":"1.5.2","languages":{"en":{"hash":"en_0000000000","page_count":3}}}'
    )
    normalise_bundle(bundle)
    files = tree(bundle)
    entry = files.pop("pagefind-entry.json").decode()
    assert entry == '{"version":"1.5.2","languages":{"en":{"hash":"en_82d7f1b23a","page_count":3}}}'
    assert sorted(files) == ["filter/en_2950d48.pf_filter", "pagefind.en_82d7f1b23a.pf_meta"]
    sorted_values = b"\x82dyear\x82\x82d2023\x82\x01\x02\x82d2024\x81\x00"
    assert files["filter/en_2950d48.pf_filter"] == _gz(sorted_values)
    new_meta = b"\x86e1.5.2\x80\x80\x81\x82dyearjen_2950d48\x80\x80"
    assert files["pagefind.en_82d7f1b23a.pf_meta"] == _gz(new_meta)


def test_normalise_bundle_refuses_a_format_it_does_not_know(tmp_path: Path) -> None:
    bundle = tmp_path / "pagefind"
    bundle.mkdir()
    (bundle / "pagefind.en_0000000000.pf_meta").write_bytes(_gz(b"\xfb\x3f\xf0" + bytes(6)))
    (bundle / "pagefind-entry.json").write_text('{"languages":{"en":{"hash":"en_0000000000"}}}')
    with pytest.raises(PagefindFormatError) as error:
        normalise_bundle(bundle)
    meta = bundle / "pagefind.en_0000000000.pf_meta"
    assert str(error.value) == (
        f"{meta}: CBOR item of major type 7 (a float or simple value) at byte 0; expected an "
        "unsigned integer, text or an array"
    )
