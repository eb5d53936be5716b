"""Fuzz `kb import`'s readers and planner with mutated paper lists (fixed seed, stdlib only).

    python benchmarks/fuzz_import.py [--seconds 300] [--seed 0] [--sources DIR ...]

Each input is a list from the seeds (tests/data/sources and tests/data/list_layouts, and
../shared/sources when present)
with 1-20 random mutations: inserted lines and characters from the tokens that matter to the
readers (brackets, pipes, BibTeX braces, badges, arXiv links, NUL, bidi controls, replacement
characters), deleted, duplicated and hugely repeated lines. Each is read in a random format and
planned against a copy of three real records. The property: reading raises nothing but
`ImportError_` (a one-line refusal), planning raises nothing, every entry gets an action, and
every file the plan would write passes `kb validate`'s checks. Prints JSON: inputs tried,
crashes (with the smallest example of each), slow inputs (over 2 s), inputs per second. The CI
test (tests/test_fuzz_import.py) runs the same loop for a few seconds with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenkb import importer  # noqa: E402
from tokenkb.store import check_record_text  # noqa: E402

TOKENS = [
    "[", "]", "(", ")", "*", "**", "`", "|", "<br>", "<table><tr><td>", "@article{", "}", "{",
    "=", "\\", "\x00", "\u202e", "\u200b", "https://arxiv.org/abs/", "2401.00001", "9999.99999",
    "http://", "https://github.com/", "#", "\n", "- ", "1. ", "Title:", "Venue:", "%", "\ufffd",
    "&#x", "\r", "$", "^", "_", "![badge](https://img.shields.io/badge/CVPR-2025-blue)", "'26",
]  # fmt: skip
FORMATS = [None, *importer.FORMATS]


def seeds(extra: list[Path]) -> list[str]:
    data = ROOT / "tests" / "data"
    found = [p for d in ("sources", "list_layouts") for p in (data / d).rglob("*")]
    paths = sorted(p for p in found if p.is_file())
    for directory in extra:
        paths += sorted(p for p in directory.iterdir() if p.is_file() and p.name != "README.md")
    return [p.read_text(encoding="utf-8", errors="replace")[:30_000] for p in paths]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 20)):
        op = rng.random()
        at = rng.randrange(len(lines) + 1)
        if op < 0.3:
            lines.insert(at, "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 12))))
        elif op < 0.5 and lines:
            j = rng.randrange(len(lines))
            k = rng.randrange(len(lines[j]) + 1)
            lines[j] = lines[j][:k] + rng.choice(TOKENS) + lines[j][k:]
        elif op < 0.6 and lines:
            del lines[rng.randrange(len(lines))]
        elif op < 0.7 and lines:
            lines.insert(at, rng.choice(lines) * rng.randint(1, 50))
        elif lines:
            lines.insert(at, rng.choice(lines))
    return "\n".join(lines)


def fuzz(
    seconds: float, seed: int, extra: list[Path], max_inputs: int | None = None
) -> dict[str, Any]:
    rng = random.Random(seed)
    texts = seeds(extra)
    crashes: dict[str, str] = {}
    slow: list[float] = []
    inputs = 0
    with tempfile.TemporaryDirectory() as scratch:
        papers = Path(scratch) / "papers"
        papers.mkdir()
        for name in ("tome-2023", "evit-2022", "fastv-2024"):
            shutil.copy(ROOT / "papers" / f"{name}.yaml", papers)
        source = Path(scratch) / "list.md"
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and (max_inputs is None or inputs < max_inputs):
            data = mutate(rng.choice(texts), rng)
            as_format = rng.choice(FORMATS)
            source.write_bytes(data.encode("utf-8", "replace"))
            inputs += 1
            began = time.perf_counter()
            try:
                result = importer.read_source(source, as_format)
                plan = importer.plan_import([result], papers)
                assert all(p.action in ("new", "merge", "skip") for p in plan.planned)
                if not plan.invalid:
                    for path, text in plan.files.items():
                        check_record_text(text, path)
            except importer.ImportError_ as exc:
                assert "\n" not in str(exc), str(exc)
            except Exception as exc:  # the finding: record the smallest example of each kind
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
                if key not in crashes or len(data) < len(crashes[key]):
                    crashes[key] = data
            elapsed = time.perf_counter() - began
            if elapsed > 2.0:
                slow.append(round(elapsed, 2))
        total = time.perf_counter() - start
    return {
        "benchmark": "fuzz_import",
        "seed": seed,
        "seconds": round(total, 1),
        "inputs": inputs,
        "inputs_per_second": round(inputs / total, 1),
        "crashes": len(crashes),
        "crash_examples": {key: text[:500] for key, text in crashes.items()},
        "slow_inputs": slow,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="*", type=Path, default=None)
    args = parser.parse_args()
    extra = args.sources
    if extra is None:
        shared = ROOT.parent / "shared" / "sources"
        extra = [shared] if shared.is_dir() else []
    print(json.dumps(fuzz(args.seconds, args.seed, extra), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
