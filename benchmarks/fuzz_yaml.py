"""Fuzz the record reader (bytes, mutated records, generated YAML) with a fixed seed; print JSON.

    python benchmarks/fuzz_yaml.py [--seconds 300] [--seed 0] [--max-inputs N] [--parser P]

Three kinds of input, in turn:
- `bytes`: random bytes (mostly printable ASCII and YAML punctuation, some anything), read from a
  file by `validate.check_file`, as `kb validate` reads it;
- `mutation`: a real record from papers/ with 1-8 structural mutations: lines inserted, deleted,
  duplicated, swapped, re-indented, values replaced by hostile scalars (`=`, `<<`, `0x_`,
  `2023-13-45`, numbers of thousands of digits), YAML tokens (`& * ! | > - : ? { } [ ] % @`),
  control characters, unicode, deep nesting, long lines, truncation;
- `grammar`: a YAML document built from a small grammar (mappings, block and flow sequences,
  block scalars, quoted scalars with escapes, anchors, aliases, tags, merge keys, comments,
  directives and document markers) over the record's field names and hostile scalars.

The property, for every input and both parsers (libyaml's and PyYAML's pure-Python one):
`store.parse_record` and `validate.check_file` return, or raise RecordError whose problems each
have the input's path, a line >= 1 and a one-line message; nothing else is raised, and no input
takes more than 1 s. A record that parses also dumps to text that `check_record_text` accepts.
Both parsers must agree on whether an input is a valid record. The CI test (tests/test_fuzz.py)
runs this loop on a fixed number of inputs; this script runs it for a time and prints
{inputs, crashes, crash_examples, disagreements, slow_inputs, seconds, inputs_per_second}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenkb import store  # noqa: E402
from tokenkb.model import FIELD_NAMES  # noqa: E402
from tokenkb.problems import RecordError  # noqa: E402
from tokenkb.validate import check_file  # noqa: E402

KINDS = ("bytes", "mutation", "grammar")
PARSERS: dict[str, Any] = {"pure-python": yaml.SafeLoader}
if getattr(yaml, "__with_libyaml__", False):
    PARSERS["libyaml"] = yaml.CSafeLoader
# Seconds one input may take. PyYAML's pure-Python parser (the fallback where libyaml is not
# installed) is about 10x slower: a 64 KB flow list of 20 000 items takes it 0.8 s.
SLOW_S = {"libyaml": 1.0, "pure-python": 2.0}

# Plain scalars that resolve to YAML 1.1 types PyYAML cannot (or must not) construct.
HOSTILE_SCALARS = [
    "=", "<<", "~", "null", "Null", "yes", "No", "on", "OFF", "true", ".inf", "-.INF", ".NaN",
    "0x_", "0b_", "-0x__", "0o17", "0x1F", "0b1010", "017", "1_000", "1__", "+12", "-0",
    "1:20", "190:20:30", "1:2:3:4:5:6:7:8:9", "1.5", "1.", ".5", "1e3", "1.0e+3", "1.0e+99999",
    "2023-01-01", "2023-13-45", "2023-02-30", "0000-01-01", "2023-01-01 25:00:00",
    "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -25:00", "2001-12-14T21:59:43Z",
    "9" * 120, "9" * 5000, "-" + "1" * 4400, "0x" + "f" * 300, "1:" * 60 + "1",
    "1." + "0" * 5000, "0." + "1" * 4500 + "e+9", "2023", "2301.00001", "method", "vision",
    "ICLR 2023", "arXiv", "https://arxiv.org/abs/2301.00001", "A Valid Title", "",
]  # fmt: skip
TOKENS = [
    ":", ": ", " ", "\n", "- ", "-", "[", "]", "{", "}", ",", "&a ", "*a", "&", "*", "!", "!!str ",
    "!!python/object:os.system ", "!<tag:x> ", "|", "|-\n", ">", ">+\n", "'", '"', "#", "# c\n",
    "---\n", "...\n", "? ", "?", "%YAML 1.1\n", "%TAG ! tag:x,2002:\n", "%", "@", "`", "\t", "\\",
    "<<: ", "=", "<<", "\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029",
    "\ufeff", "\ufffe", "\ufffd", "\u202e", "\u200b", "é", "高效", "\U0001d518", "\r", "\r\n", "~",
    "2023", "true", "null",
]  # fmt: skip
ESCAPES = ["\\x01", "\\x85", "\\u2028", "\\ud800", "\\U0001F600", "\\0", "\\e", "\\N", "\\L",
           "\\P", "\\_", "\\q", "\\x", "\\uD83D\\uDE00", "\\t", "\\n"]  # fmt: skip


def seed_records() -> list[tuple[str, str]]:
    """The real records (id, text), the starting points for mutations."""
    paths = sorted((ROOT / "papers").glob("*.yaml"))
    return [(p.stem, p.read_text(encoding="utf-8")) for p in paths]


# --- inputs -----------------------------------------------------------------------------------


def random_bytes(rng: random.Random) -> bytes:
    size = rng.choice((0, 1, 2, 5, 20, 100, 300, 1000))
    if rng.random() < 0.5:  # anything
        return rng.randbytes(rng.randint(0, size))
    alphabet = b"abcz019 :-\n[]{},&*!|>'\"#?%@`\t\\<=~.\x00\x01\x7f\xc3\xa9\xe2\x80\xa8\xef\xbb\xbf"
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def hostile_scalar(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(HOSTILE_SCALARS)
    if roll < 0.8:
        return "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 4)))
    if roll < 0.9:
        return '"' + "".join(rng.choice([*ESCAPES, "a", " "]) for _ in range(3)) + '"'
    return rng.choice(("x", "1", "é", "[", "- ")) * rng.choice((100, 5000, 70_000))


def mutate(text: str, rng: random.Random) -> str:
    """A real record with 1-8 structural mutations."""
    lines = text.split("\n")
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(10)
        at = rng.randrange(len(lines) + 1)
        j = rng.randrange(len(lines)) if lines else 0
        if op == 0:
            lines.insert(at, "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 10))))
        elif op == 1 and lines:
            del lines[j]
        elif op == 2 and lines:
            lines.insert(at, lines[j])
        elif op == 3 and lines:
            k = rng.randrange(len(lines))
            lines[j], lines[k] = lines[k], lines[j]
        elif op == 4 and lines:  # re-indent
            lines[j] = " " * rng.choice((0, 1, 2, 3, 4, 8)) + lines[j].lstrip(" ")
        elif op == 5 and lines and ":" in lines[j]:  # a field's value becomes hostile
            key = lines[j].split(":", 1)[0]
            lines[j] = f"{key}: {hostile_scalar(rng)}"
        elif op == 6 and lines:  # characters into a line
            k = rng.randrange(len(lines[j]) + 1)
            lines[j] = lines[j][:k] + rng.choice(TOKENS) + lines[j][k + rng.randint(0, 3) :]
        elif op == 7:  # deep nesting
            depth = rng.choice((5, 9, 50, 1000))
            if rng.random() < 0.5:
                lines.insert(at, "deep: " + "[" * depth + "]" * depth)
            else:
                lines[at:at] = ["deep:"] + [" " * (2 * d) + "- " for d in range(depth)]
        elif op == 8 and lines:
            lines.insert(at, f"{rng.choice(FIELD_NAMES)}: {hostile_scalar(rng)}")
        elif op == 9:
            return "\n".join(lines)[: rng.randrange(len(text) + 1)]  # truncated
    return "\n".join(lines)


def document(rng: random.Random) -> str:
    """A YAML document from a small grammar, over the record's fields and hostile scalars."""
    out: list[str] = []
    if rng.random() < 0.1:
        out.append(rng.choice(("%YAML 1.1", "%YAML 1.2", "%TAG !e! tag:x,2002:", "%FOO")))
    if rng.random() < 0.2:
        out.append("---")
    out.append(_mapping(rng, 0, rng.randint(1, 14)))
    if rng.random() < 0.1:
        out.append(rng.choice(("---", "...", "--- x", "---\n- a")))
    return "\n".join(out) + rng.choice(("\n", "", "\n\n", "\r\n"))


def _key(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.75:
        return str(rng.choice(FIELD_NAMES))
    if roll < 0.85:
        return rng.choice(("<<", "=", "? x", "'<<'", '"a"', "1", "null", "[a, b]", "{a: 1}"))
    return hostile_scalar(rng).replace("\n", " ")


def _node(rng: random.Random, depth: int) -> str:
    """A value placed after `key:` (inline) or on the next lines (block, starting with \\n)."""
    indent = "  " * (depth + 1)
    roll = rng.random()
    prefix = ""
    if rng.random() < 0.05:
        prefix = rng.choice(("&a ", "!!str ", "!!int ", "! ", "!e!x ", "!!binary ", "!!set "))
    if roll < 0.45 or depth > 9:
        return " " + prefix + hostile_scalar(rng)
    if roll < 0.55:
        return " *a"
    if roll < 0.65:
        flow = ", ".join(hostile_scalar(rng) for _ in range(rng.randint(0, 4)))
        return " " + prefix + rng.choice(("[", "{")) + flow + rng.choice(("]", "}", ""))
    if roll < 0.72:
        style = rng.choice(("|", ">", "|-", ">+", "|2", "|9"))
        body = "\n".join(indent + hostile_scalar(rng) for _ in range(rng.randint(0, 3)))
        return f" {prefix}{style}\n{body}"
    if roll < 0.86:
        items = [f"{indent}-{_node(rng, depth + 1)}" for _ in range(rng.randint(0, 4))]
        return (" " + prefix if prefix else "") + "\n" + "\n".join(items)
    return (" " + prefix if prefix else "") + "\n" + _mapping(rng, depth + 1, rng.randint(0, 4))


def _mapping(rng: random.Random, depth: int, size: int) -> str:
    indent = "  " * depth
    lines = []
    for _ in range(size):
        if rng.random() < 0.05:
            lines.append(indent + "# " + hostile_scalar(rng).replace("\n", " "))
        lines.append(f"{indent}{_key(rng)}:{_node(rng, depth)}")
    return "\n".join(lines)


def make_input(kind: str, rng: random.Random, records: list[tuple[str, str]]) -> tuple[bytes, str]:
    """An input and the file stem to read it under (a mutated record keeps its id's name)."""
    if kind == "bytes":
        return random_bytes(rng), "fuzz-2023"
    if kind == "mutation":
        stem, text = rng.choice(records)
        return mutate(text, rng).encode("utf-8", "surrogatepass"), stem
    return document(rng).encode("utf-8", "surrogatepass"), "fuzz-2023"


# --- the property -----------------------------------------------------------------------------


@contextlib.contextmanager
def parser(loader: Any) -> Iterator[None]:
    saved = store._Loader
    store._Loader = loader
    try:
        yield
    finally:
        store._Loader = saved


def _check_problems(exc: RecordError, name: str) -> None:
    assert exc.problems, "RecordError without problems"
    for problem in exc.problems:
        assert problem.path == name, f"problem names {problem.path!r}, not {name!r}"
        assert isinstance(problem.line, int) and problem.line >= 1, f"line {problem.line!r}"
        message = problem.message
        assert isinstance(message, str) and message, "empty message"
        assert len(message.splitlines()) == 1, f"message of several lines: {message!r}"


def check(data: bytes, path: Path) -> bool:
    """Apply the property to one input with the current parser; True when it is a valid record.

    Raises AssertionError (the property failed) or whatever the reader let escape.
    """
    name = str(path)
    path.write_bytes(data)
    checked = check_file(path)
    if checked.problems:
        _check_problems(RecordError(checked.problems), name)
    try:
        text = store.decode_text(data, name)
    except RecordError as exc:
        _check_problems(exc, name)
        assert checked.problems == exc.problems, "check_file and decode_text disagree"
        return False
    try:
        paper, _ = store.parse_record(text, name, stem=path.stem)
    except RecordError as exc:
        _check_problems(exc, name)
        assert checked.problems == exc.problems, "check_file and parse_record disagree"
        return False
    assert not checked.problems, "parse_record accepts what check_file refuses"
    dumped = store.dump_record(paper)
    assert store.check_record_text(dumped, path) == paper, "the dumped record differs"
    return True


def _crash_key(exc: BaseException) -> str:
    """One crash class per exception type and the innermost frame in tokenkb."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "tokenkb" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def fuzz(
    seconds: float, seed: int, max_inputs: int | None = None, parsers: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run the loop until `seconds` pass or `max_inputs` inputs were tried, with the named
    parsers (all of PARSERS by default)."""
    chosen = {name: PARSERS[name] for name in parsers or tuple(PARSERS)}
    rng = random.Random(seed)
    records = seed_records()
    crashes: dict[str, str] = {}  # class -> smallest input (repr) that shows it
    disagreements: list[str] = []
    slow: list[dict[str, Any]] = []
    counts = dict.fromkeys(KINDS, 0)
    crash_count = 0
    inputs = 0
    valid = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        while time.perf_counter() - start < seconds:
            if max_inputs is not None and inputs >= max_inputs:
                break
            kind = KINDS[inputs % len(KINDS)]
            data, stem = make_input(kind, rng, records)
            path = Path(tmp) / f"{stem}.yaml"
            inputs += 1
            counts[kind] += 1
            verdicts: dict[str, bool | None] = {}
            for parser_name, loader in chosen.items():
                began = time.perf_counter()
                try:
                    with parser(loader):
                        verdicts[parser_name] = check(data, path)
                except Exception as exc:  # the property: nothing may escape but RecordError
                    crash_count += 1
                    key = f"{kind}/{parser_name}: {_crash_key(exc)}"
                    shown = repr(data[:300])
                    if key not in crashes or len(shown) < len(crashes[key]):
                        crashes[key] = shown
                    verdicts[parser_name] = None
                took = time.perf_counter() - began
                if took > SLOW_S[parser_name]:
                    slow.append({"kind": kind, "parser": parser_name, "s": round(took, 2),
                                 "input": repr(data[:200])})  # fmt: skip
            if len({v for v in verdicts.values() if v is not None}) > 1:
                disagreements.append(repr(data[:300]))
            valid += any(verdicts.values())
    elapsed = time.perf_counter() - start
    return {
        "seed": seed,
        "inputs": inputs,
        "inputs_by_kind": counts,
        "parsers": list(chosen),
        "valid_records": valid,
        "crashes": crash_count,
        "crash_examples": crashes,
        "disagreements": len(disagreements),
        "disagreement_examples": disagreements[:10],
        "slow_inputs": slow[:10],
        "seconds": round(elapsed, 1),
        "inputs_per_second": round(inputs / elapsed, 1) if elapsed else 0.0,
    }


def main(argv: list[str] | None = None, out: Callable[[str], Any] = print) -> int:
    parser_ = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser_.add_argument("--seconds", type=float, default=300.0)
    parser_.add_argument("--seed", type=int, default=0)
    parser_.add_argument("--max-inputs", type=int, default=None)
    parser_.add_argument("--parser", action="append", choices=sorted(PARSERS), default=[])
    args = parser_.parse_args(argv)
    result = fuzz(args.seconds, args.seed, args.max_inputs, tuple(args.parser))
    out(json.dumps(result, indent=2, ensure_ascii=False))
    return 1 if result["crashes"] or result["slow_inputs"] else 0


if __name__ == "__main__":
    sys.exit(main())
