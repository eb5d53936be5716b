"""Hostile input to the readers: every case is a precise problem line, never a crash or a hang.

Scalars PyYAML cannot construct, control characters, size limits at the byte, and papers
directories holding FIFOs, devices, sockets, directories, loops, dangling links, entries that
vanish and caches that are corrupt. Each test here failed (a traceback, a hang, a wrong line or
an off-by-one) before the readers were hardened.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenkb import cache, files, store
from tokenkb.problems import Problem, RecordError
from tokenkb.store import MAX_BYTES, check_record_text, load_record, parse_record, parse_yaml
from tokenkb.validate import check_file, validate

from .conftest import PAPERS, Run, valid_record

LOADERS = ["libyaml", "pure-python"] if getattr(yaml, "__with_libyaml__", False) else ["pure"]


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's C parser and again with PyYAML's pure-Python one."""
    if request.param != "libyaml":
        monkeypatch.setattr(store, "_Loader", yaml.SafeLoader)
    return str(request.param)


class Blocked(BaseException):
    """Not an OSError (nor an Exception), so no reader's error handling can swallow it."""


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail (instead of hanging CI) when a read blocks: opening a FIFO used to wait forever."""

    def expire(signum: int, frame: Any) -> None:
        raise Blocked("a read blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def problems_of(text: str, name: str = "f.yaml") -> list[tuple[int, str]]:
    with pytest.raises(RecordError) as info:
        parse_record(text, name, stem="valid-2023")
    assert all(p.path == name for p in info.value.problems)
    return [(p.line, p.message) for p in info.value.problems]


# --- scalars that PyYAML's constructors cannot build --------------------------------------------


@pytest.mark.parametrize("value", ["=", "<<", "= <<", "<<="])
def test_value_and_merge_indicators_are_text(value: str, loader: str) -> None:
    """`title: =` and `title: <<` died with KeyError 'tag:yaml.org,2002:value' / ':merge'."""
    text = valid_record(title=value).replace("- Ada Lovelace", f"- {value}\n- Ada Lovelace")
    data = parse_yaml(text, "f.yaml").data
    assert (data["title"], data["authors"]) == (value, [value, "Ada Lovelace"])
    try:  # the title rules decide whether '=' is a title; the reader must not crash first
        parse_record(text, "f.yaml", stem="valid-2023")
    except RecordError as exc:
        assert all(p.message.startswith(("title:", "authors[0]:")) for p in exc.problems)


def test_merge_key_is_refused_with_its_line(loader: str) -> None:
    text = valid_record() + "sources:\n- source: zlkong\n  <<: {line: 3}\n"
    assert problems_of(text) == [
        (16, "merge key '<<' is not allowed; write the fields out in this mapping")
    ]
    text = "<<: {id: valid-2023}\n" + valid_record().split("\n", 1)[1]
    assert problems_of(text) == [
        (1, "merge key '<<' is not allowed; write the fields out in this mapping")
    ]


def test_quoted_merge_key_is_an_unknown_field(loader: str) -> None:
    assert problems_of(valid_record() + "'<<': x\n") == [(14, "unknown field '<<'")]


NOT_A_NUMBER = "is read as a number but is not a valid number; quote it if it is text"
NOT_A_DATE = "is read as a date but is not a valid date; quote it if it is text"


@pytest.mark.parametrize(
    ("scalar", "message"),
    [
        ("9" * 5000, "number 999999999999... is 5000 characters long; no field takes a number "
         "over 100 characters (quote it if it is text)"),
        ("-" + "1" * 4400, "number -11111111111... is 4401 characters long; no field takes a "
         "number over 100 characters (quote it if it is text)"),
        ("0x" + "f" * 200, "number 0xffffffffff... is 202 characters long; no field takes a "
         "number over 100 characters (quote it if it is text)"),
        ("1:" * 60 + "1", "number 1:1:1:1:1:1:... is 121 characters long; no field takes a "
         "number over 100 characters (quote it if it is text)"),
        ("0x_", f"'0x_' {NOT_A_NUMBER}"),
        ("0b_", f"'0b_' {NOT_A_NUMBER}"),
        ("-0x__", f"'-0x__' {NOT_A_NUMBER}"),
        ("2023-13-45", f"'2023-13-45' {NOT_A_DATE}"),
        ("2023-02-30", f"'2023-02-30' {NOT_A_DATE}"),
        ("0000-01-01", f"'0000-01-01' {NOT_A_DATE}"),
        ("2023-01-01 25:00:00", f"'2023-01-01 25:00:00' {NOT_A_DATE}"),
        ("2001-12-14 21:59:43.10 -25:00", f"'2001-12-14 21:59:43.10 -25:00' {NOT_A_DATE}"),
        ("2001-12-14t21:59:43+99", f"'2001-12-14t21:59:43+99' {NOT_A_DATE}"),
    ],
    ids=lambda value: value if len(value) < 30 else f"{value[:12]}...{len(value)}",
)  # fmt: skip
def test_scalars_without_a_valid_value_are_problems(scalar: str, message: str, loader: str) -> None:
    """These raised ValueError (int conversion limit, bad dates) out of the reader."""
    text = valid_record().replace("year: 2023", f"year: {scalar}")
    assert problems_of(text) == [(5, message)]
    text = valid_record().replace("- vision", f"- vision\n- {scalar}")
    assert problems_of(text) == [(10, message)]


def test_numbers_up_to_the_length_limit_are_numbers(loader: str) -> None:
    longest = "1" * store.MAX_NUMBER_CHARS
    ((line, message),) = problems_of(valid_record().replace("year: 2023", f"year: {longest}"))
    assert line == 5 and message.startswith(f"year: {longest} is not a plausible year")


def test_valid_dates_and_numbers_are_still_typed(loader: str) -> None:
    assert problems_of(valid_record(title="2023-01-01")) == [
        (2, "title: expected text, got date 2023-01-01; quote it: '2023-01-01'")
    ]
    assert parse_yaml("a: 1.0e+99999\nb: 0x1f\nc: 1_000\n", "f").data == {
        "a": float("inf"),
        "b": 31,
        "c": 1000,
    }


def test_resolver_memo_keeps_only_short_scalars() -> None:
    """Every long plain scalar starting with a digit was memoised: 50 000 of up to 64 KB each."""
    for n in range(50):
        parse_yaml(f"a: {n}{'x' * 10_000}\n", "f")
    assert max(map(len, store._TAGS), default=0) <= 64


def test_bare_tag_is_refused(loader: str) -> None:
    """`title: !` gave '' with libyaml and None with PyYAML; `!` is refused like every tag."""
    assert problems_of(valid_record().replace("title: A Valid Title", "title: !")) == [
        (2, "tag '!' is not allowed; remove it")
    ]


# --- characters YAML refuses --------------------------------------------------------------------


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x80", "\x9f", "\ufffe",
     "\uffff"],
)  # fmt: skip
def test_control_character_is_reported_on_its_line(char: str, loader: str) -> None:
    """Reported at line 1 in two lines ('in "<unicode string>", position 41') before."""
    text = valid_record().replace("venue: ICLR 2023", f"venue: ICLR{char} 2023")
    code = f"U+{ord(char):04X}"
    assert problems_of(text) == [
        (6, f"control character {code} at column 12 is not allowed in a record; delete it")
    ]


@pytest.mark.parametrize(
    ("char", "name"),
    [("\x85", "next line"), ("\u2028", "line separator"), ("\u2029", "paragraph separator")],
)
def test_hidden_line_break_is_reported(char: str, name: str, loader: str) -> None:
    """These silently split a value (`a: \\x85` read as `a: null`)."""
    text = valid_record().replace("venue: ICLR 2023", f"venue: ICLR{char} 2023")
    code = f"U+{ord(char):04X}"
    assert problems_of(text) == [
        (
            6,
            f"character {code} ({name}) at column 12 is read as a line break by YAML; delete it, "
            "or use an ordinary line break",
        )
    ]


@pytest.mark.parametrize(
    "text", ["a: 1\n\ufeff\nb: 2\n", "a: 1\n\ufeffb: 2\n", "a: 1\nb: 2\ufeff\n"]
)
def test_byte_order_mark_inside_is_refused(text: str, loader: str) -> None:
    """libyaml skipped U+FEFF at the start of a line where PyYAML kept it (found by fuzzing)."""
    ((line, message),) = problems_of(text)
    assert line == 2
    assert message.startswith("character U+FEFF (byte-order mark) at column ")
    assert message.endswith(" is read differently by YAML readers; delete it")


def test_control_characters_one_problem_per_line_in_linear_time(loader: str) -> None:
    text = "é: x\x01\x02\n" + "a: b\n" + "c: \x7f\n" * 20_000
    start = time.perf_counter()
    got = problems_of(text)
    assert time.perf_counter() - start < 1.0
    assert got[:2] == [
        (1, "control character U+0001 at column 5 is not allowed in a record; delete it"),
        (3, "control character U+007F at column 4 is not allowed in a record; delete it"),
    ]
    assert len(got) == 20_001


def test_lone_surrogate_is_a_problem(loader: str) -> None:
    """libyaml's reader raised UnicodeEncodeError; writing such text would too."""
    text = valid_record(title="A \ud800 Title")
    assert problems_of(text) == [
        (2, "character U+D800 (a lone surrogate) at column 10; delete it"),
    ]
    with pytest.raises(RecordError) as info:
        check_record_text(text, Path("papers/valid-2023.yaml"))
    assert [str(p) for p in info.value.problems] == [
        "papers/valid-2023.yaml:2: character U+D800 cannot be written as UTF-8; remove it"
    ]


def test_tab_outside_indentation_is_refused_by_either_parser(loader: str) -> None:
    """`year:\t2023` was a valid record with libyaml and invalid with PyYAML's own parser."""
    text = valid_record().replace("year: 2023", "year:\t2023") + "# a comment\tmay hold one\n"
    assert problems_of(text) == [(5, "tab at column 6; use a space instead")]
    assert problems_of(valid_record().replace("\n- vision", "\n\t- vision")) == [
        (9, "tab used for indentation; indent with spaces")
    ]


def test_messages_quoting_a_value_stay_on_one_line(loader: str) -> None:
    """A folded block became the example in '- {value}', line break and all."""
    text = valid_record().replace("- Ada Lovelace", "").replace("authors:", "authors: >\n  A\n  B")
    assert problems_of(text) == [
        (3, "authors: expected a list, got text 'A B\\n'; write each item on its own line as "
         "'- value'"),
    ]  # fmt: skip


# --- the size limit -----------------------------------------------------------------------------


def padded_record(size: int) -> str:
    """A valid record of exactly `size` bytes (a comment pads it)."""
    base = valid_record()
    pad = size - len(base.encode("utf-8")) - 3
    text = base + "# " + "x" * pad + "\n"
    assert len(text.encode("utf-8")) == size
    return text


def too_large(path: Path, size: int) -> list[Problem]:
    return [Problem(str(path), 1, f"file is {size} bytes; a record must be under 65536 bytes")]


def test_size_limit_agrees_with_its_message(tmp_path: Path) -> None:
    """A file of exactly 65 536 bytes was accepted while the message said 'under 65 536'."""
    assert MAX_BYTES == 65_536
    path = tmp_path / "valid-2023.yaml"
    path.write_text(padded_record(65_535), encoding="utf-8")
    assert validate([path]).ok
    assert check_record_text(padded_record(65_535), path).id == "valid-2023"
    for size in (65_536, 65_537, 1_000_000):
        path.write_text(padded_record(size), encoding="utf-8")
        assert validate([path]).problems == too_large(path, size)
        with pytest.raises(RecordError) as info:
            check_record_text(padded_record(size), path)
        assert info.value.problems == too_large(path, size)


def test_check_record_text_applies_the_file_limit(tmp_path: Path) -> None:
    """What a writer is refused equals what `kb validate` says of the written file."""
    text = valid_record(title="T" * 70_000)
    path = tmp_path / "valid-2023.yaml"
    with pytest.raises(RecordError) as info:
        check_record_text(text, path)
    path.write_text(text, encoding="utf-8")
    assert info.value.problems == validate([path]).problems == too_large(path, 70_165)


def test_bounded_read_limits(tmp_path: Path) -> None:
    path = tmp_path / "list.md"
    path.write_bytes(b"x" * 100)
    assert files.read_bytes_bounded(path, 100) == b"x" * 100
    with pytest.raises(files.FileTooLarge) as info:
        files.read_bytes_bounded(path, 99)
    assert info.value.size == 100
    big = 50 * 1024 * 1024
    path.write_bytes(b"y" * big)
    assert len(files.read_bytes_bounded(path, big)) == big
    sparse = tmp_path / "sparse.md"
    with sparse.open("wb") as handle:
        handle.truncate(1 << 40)  # a terabyte that is never read
    with pytest.raises(files.FileTooLarge) as info:
        files.read_bytes_bounded(sparse, big)
    assert info.value.size == 1 << 40


def test_bounded_read_stops_one_byte_past_a_size_that_lied() -> None:
    """/proc files say they are empty; the reader still stops at the limit + 1 byte."""
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc")
    with pytest.raises(files.FileTooLarge) as info:
        files.read_bytes_bounded(status, 10)
    assert info.value.size == 11


# --- what a papers directory may hold -----------------------------------------------------------


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


NOT_REGULAR = "not a regular file; only regular files are read, so remove it"
HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (make_fifo, f"cannot read file: it is a FIFO (named pipe), {NOT_REGULAR}"),
    "zero": (lambda p: p.symlink_to("/dev/zero"), f"cannot read file: it is a character device, {NOT_REGULAR}"),
    "urandom": (lambda p: p.symlink_to("/dev/urandom"), f"cannot read file: it is a character device, {NOT_REGULAR}"),
    "directory": (lambda p: p.mkdir(), f"cannot read file: it is a directory, {NOT_REGULAR}"),
    "socket": (make_socket, f"cannot read file: it is a socket, {NOT_REGULAR}"),
    "loop": (lambda p: p.symlink_to(p.name), "cannot read file: it is a symbolic link loop; fix or remove the link"),
    "dangling": (lambda p: p.symlink_to("gone.yaml"), "cannot read file: it is a symbolic link to 'gone.yaml', which does not exist; fix or remove it"),
}  # fmt: skip


@pytest.fixture(params=sorted(HOSTILE))
def hostile(request: pytest.FixtureRequest, papers_dir: Path) -> tuple[Path, str]:
    """A papers directory with one valid record and one hostile entry; the entry and message."""
    (papers_dir / "valid-2023.yaml").write_text(valid_record(), encoding="utf-8")
    make, message = HOSTILE[request.param]
    path = papers_dir / f"{request.param}-2023.yaml"
    make(path)
    return path, message


def test_validate_reports_hostile_entries(hostile: tuple[Path, str], deadline: None) -> None:
    """Before: validate hung on a FIFO and grew without bound on /dev/zero; tracebacks else."""
    path, message = hostile
    report = validate([path.parent])
    assert report.problems == [Problem(str(path), 1, message)]
    assert report.files == 2
    assert check_file(path).problems == [Problem(str(path), 1, message)]
    with pytest.raises(RecordError) as info:
        load_record(path)
    assert info.value.problems == [Problem(str(path), 1, message)]


def test_query_reports_hostile_entries(
    hostile: tuple[Path, str], deadline: None, kb: Callable[..., Run]
) -> None:
    path, message = hostile
    with pytest.raises(RecordError) as info:
        cache.load_records(path.parent)
    assert info.value.problems == [Problem(str(path), 1, message)]
    run = kb("--papers", str(path.parent), "query", "--format", "json")
    assert run.code == 1
    assert f"{path}:1: {message}\n" in run.err


def test_fmt_reports_hostile_entries(
    hostile: tuple[Path, str], deadline: None, kb: Callable[..., Run]
) -> None:
    path, message = hostile
    run = kb("fmt", "--check", str(path.parent))
    assert run.code == 1
    assert f"{path}:1: {message}\n" in run.out + run.err


def test_validate_two_paths_with_a_symlink_loop(papers_dir: Path) -> None:
    """Path.resolve raised RuntimeError on a loop when deduplicating several arguments."""
    loop = papers_dir / "loop-2023.yaml"
    loop.symlink_to(loop.name)
    valid = papers_dir / "valid-2023.yaml"
    valid.write_text(valid_record(), encoding="utf-8")
    report = validate([loop, valid, loop])
    assert report.problems == [
        Problem(
            str(loop), 1, "cannot read file: it is a symbolic link loop; fix or remove the link"
        )
    ]


def test_file_deleted_between_listing_and_reading(papers_dir: Path) -> None:
    path = papers_dir / "valid-2023.yaml"
    path.write_text(valid_record(), encoding="utf-8")
    listed = store.record_paths(papers_dir)
    path.unlink()
    assert check_file(listed[0]).problems == [
        Problem(
            str(path),
            1,
            "cannot read file: it does not exist (deleted or renamed while kb ran?); check the "
            "path, run again",
        )
    ]


def test_cache_survives_an_entry_vanishing_after_scandir(
    papers_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`entry.stat()` raised FileNotFoundError out of `kb query`."""
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("a-2023", "b-2023"):
        (papers_dir / f"{name}.yaml").write_text(
            valid_record(id=name, title=f"Title {name}", arxiv="2301.0000" + name[0].replace("a", "1").replace("b", "2")),
            encoding="utf-8",
        )  # fmt: skip
    scan = files.directory_entries

    def scan_then_delete(directory: Path) -> list[os.DirEntry[str]]:
        entries = scan(directory)
        (directory / "b-2023.yaml").unlink()
        return entries

    monkeypatch.setattr(cache, "directory_entries", scan_then_delete)
    with pytest.raises(RecordError) as info:
        cache.load_records(papers_dir)
    assert [(p.path, p.line) for p in info.value.problems] == [(str(papers_dir / "b-2023.yaml"), 1)]
    assert info.value.problems[0].message.startswith("cannot read file: it does not exist")


class _DenyingOs:
    """`os` as seen by `tokenkb.files`, where opening files and listing directories is denied
    (the tests may run as root, for whom chmod 000 denies nothing)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def open(path: Any, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    @staticmethod
    def scandir(path: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))


def test_permission_denied(papers_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = papers_dir / "valid-2023.yaml"
    path.write_text(valid_record(), encoding="utf-8")
    monkeypatch.setattr(files, "os", _DenyingOs())
    assert check_file(path).problems == [
        Problem(str(path), 1, "cannot read file: permission denied; make it readable (chmod a+rX)")
    ]
    listing = [
        Problem(
            str(papers_dir),
            1,
            "cannot list directory: permission denied; make it readable (chmod a+rX)",
        )
    ]
    assert validate([papers_dir]).problems == listing
    with pytest.raises(RecordError) as info:
        cache.load_records(papers_dir)
    assert info.value.problems == listing


def test_papers_directory_that_is_a_file_or_missing(tmp_path: Path) -> None:
    papers = tmp_path / "papers"
    papers.write_text("not a directory\n", encoding="utf-8")
    with pytest.raises(RecordError) as info:
        cache.load_records(papers)
    assert info.value.problems == [
        Problem(
            str(papers),
            1,
            "cannot list directory: it is a file, not a directory; give the papers directory",
        )
    ]
    with pytest.raises(RecordError) as info:
        store.record_paths(papers)
    assert info.value.problems[0].message.startswith("cannot list directory: it is a file")
    papers.unlink()
    with pytest.raises(RecordError) as info:
        cache.load_records(papers)
    assert info.value.problems == [
        Problem(
            str(papers),
            1,
            "cannot list directory: it does not exist (deleted or renamed while kb ran?); check "
            "the path, run again",
        )
    ]


def test_misnamed_files_skip_hostile_entries(papers_dir: Path) -> None:
    """A directory named like a record is a read problem, not a misnamed file."""
    (papers_dir / "x-2023.yml").mkdir()
    (papers_dir / "y-2023.yml").symlink_to("nowhere")
    assert [str(p) for p in store.misnamed_files(papers_dir)] == [
        f"{papers_dir / 'y-2023.yml'}:1: records use the .yaml extension; rename to 'y-2023.yaml'"
    ]


# --- the record cache ---------------------------------------------------------------------------


def _cache_with(files_entry: Any, papers: Path) -> dict[str, Any]:
    """A cache payload that would be used (right code, written long after the files)."""
    return {
        "code": cache._code_signature(),
        "written_ns": time.time_ns() + 10 * cache.RACY_NS,
        "files": files_entry,
    }


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_mtime_ns, st.st_size, st.st_ino]


CORRUPT: dict[str, Callable[[Path], bytes]] = {
    "empty": lambda p: b"",
    "truncated": lambda p: b'{"code": [1, "0.1"',
    "not utf-8": lambda p: b"\xff\xfe{}",
    "a list": lambda p: b"[]",
    "null": lambda p: b"null",
    "deep": lambda p: b"[" * 200_000 + b"]" * 200_000,
    "files a list": lambda p: json.dumps(_cache_with([], p)).encode(),
    "written_ns text": lambda p: json.dumps({**_cache_with({}, p), "written_ns": "x"}).encode(),
    "entry a number": lambda p: json.dumps(_cache_with({p.name: 5}, p)).encode(),
    "entry short": lambda p: json.dumps(_cache_with({p.name: [_signature(p)]}, p)).encode(),
    "record text": lambda p: json.dumps(_cache_with({p.name: [_signature(p), "x"]}, p)).encode(),
    "record no id": lambda p: json.dumps(_cache_with({p.name: [_signature(p), {}]}, p)).encode(),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_cache_is_ignored_and_rewritten(
    kind: str, papers_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "cache"))
    path = papers_dir / "valid-2023.yaml"
    path.write_text(valid_record(), encoding="utf-8")
    expected = cache.load_records(papers_dir, use_cache=False)
    target = cache.cache_path(papers_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(CORRUPT[kind](path))
    assert cache.load_records(papers_dir) == expected
    assert json.loads(target.read_bytes())["files"]["valid-2023.yaml"][1] == expected[0]


@pytest.mark.parametrize("kind", ["fifo", "zero", "directory"])
def test_cache_path_that_is_no_file_is_ignored(
    kind: str, papers_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, deadline: None
) -> None:
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "cache"))
    (papers_dir / "valid-2023.yaml").write_text(valid_record(), encoding="utf-8")
    target = cache.cache_path(papers_dir)
    target.parent.mkdir(parents=True)
    HOSTILE[kind][0](target)
    assert [r["id"] for r in cache.load_records(papers_dir)] == ["valid-2023"]


def test_real_papers_still_load_through_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOKENKB_CACHE_DIR", str(tmp_path / "cache"))
    cold = cache.load_records(PAPERS)
    assert cache.load_records(PAPERS) == cold
    assert len(cold) == len(store.record_paths(PAPERS))
