"""Scale benchmark: validate and query N synthetic records; print one JSON object.

    python benchmarks/scale.py --records 1000 [--records 10000 ...] [--repeat 5]

For each N it writes N valid, varied records into a temporary directory and measures, as medians
over --repeat runs, side by side in one process:

- `raw_parse_s`: the floor, parsing every file with PyYAML's C loader alone (read + yaml.load);
- `validate_s`: `tokenkb.validate.validate` on the directory (strict parse, schema, cross-record
  checks; worker processes as `kb validate` uses them), and `validate_1proc_s` in one process;
- `query_cold_s` / `query_warm_s`: wall time of a whole `kb query` process (interpreter start
  included) with filters on, first with no cache, then with a warm cache;
- `query_after_edit_s`: the same after touching one file (the cache must notice and revalidate it).

Targets (issue 2): validate within 2x of the raw-parse floor; 100k records validated in under
20 s; `kb query` on 1k records under 300 ms wall.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tokenkb.model import Paper
from tokenkb.store import dump_record
from tokenkb.taxonomy import Family, Modality
from tokenkb.validate import validate

WORDS = [
    "token", "merging", "pruning", "vision", "transformer", "efficient", "adaptive", "sparse",
    "attention", "cache", "compression", "dynamic", "fast", "language", "model", "visual",
    "inference", "layer", "budget",
]  # fmt: skip
VENUES = ["ICLR", "CVPR", "NeurIPS", "ICML", "ECCV", "EMNLP", "ACL", "AAAI"]


def synth_record(index: int, rng: random.Random) -> Paper:
    year = rng.randint(2019, 2025)
    published = rng.random() < 0.7
    venue = f"{rng.choice(VENUES)} {year + rng.randint(0, 1)}" if published else "arXiv"
    venue_year = int(venue.split()[-1]) if published else year
    method = rng.random() < 0.9
    yymm = f"{year % 100:02d}{rng.randint(1, 12):02d}"
    arxiv = f"{yymm}.{index % 100000:05d}"
    title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize()
    data = {
        "id": f"work{index}-{venue_year}",
        "title": f"{title} {index}",
        "aliases": [f"Nick{index}"] if rng.random() < 0.5 else [],
        "authors": [f"Author{rng.randint(0, 5000)} Name{i}" for i in range(rng.randint(1, 8))],
        "year": year,
        "venue": venue,
        "kind": "method" if method else rng.choice(["survey", "benchmark", "analysis"]),
        "modality": rng.sample([m.value for m in Modality], rng.randint(1, 2)),
        "family": rng.sample([f.value for f in Family], rng.randint(1, 2)) if method else [],
        "training_free": rng.random() < 0.5 if method else None,
        "arxiv": arxiv,
        "paper": f"https://arxiv.org/abs/{arxiv}",
        "code": f"https://github.com/lab{index % 97}/repo{index}" if rng.random() < 0.6 else None,
        "summary": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 45))).capitalize()
        + ".",
        "results": [f"{rng.randint(2, 60)}% fewer FLOPs at {rng.random():.1f} accuracy drop"],
        "sources": [
            {
                "source": "000_bc6bb1248e4d14b4",
                "line": rng.randint(1, 500),
                "fields": ["title", "venue"],
            }
        ],
    }
    return Paper.model_validate(data)


def write_records(directory: Path, count: int) -> None:
    rng = random.Random(count)
    for index in range(count):
        paper = synth_record(index, rng)
        (directory / f"{paper.id}.yaml").write_text(dump_record(paper), encoding="utf-8")


def raw_parse(directory: Path) -> int:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    count = 0
    for path in sorted(directory.glob("*.yaml")):
        yaml.load(path.read_bytes(), Loader=loader)
        count += 1
    return count


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def kb_query(papers: Path, cache: Path) -> float:
    env = {**os.environ, "TOKENKB_CACHE_DIR": str(cache), "TOKENKB_PAPERS": str(papers)}
    argv = [
        sys.executable, "-m", "tokenkb.cli", "query",
        "--modality", "vlm", "--modality", "vision", "--training-free", "--since", "2021",
        "--search", "token", "--format", "json",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode()[-2000:])
    return elapsed


def measure(count: int, repeat: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        papers = Path(tmp) / "papers"
        papers.mkdir()
        start = time.perf_counter()
        write_records(papers, count)
        synth_s = time.perf_counter() - start
        report = validate([papers])
        assert report.ok and report.files == count, report.problems[:5]

        raw = timed(lambda: raw_parse(papers), repeat)
        full = timed(lambda: validate([papers]), repeat)
        single = timed(
            lambda: validate([papers], jobs=1), max(1, repeat // 2) if count >= 50000 else repeat
        )

        result: dict[str, object] = {
            "records": count,
            "synthesize_s": round(synth_s, 3),
            "raw_parse_s": round(raw, 3),
            "validate_s": round(full, 3),
            "validate_1proc_s": round(single, 3),
            "validate_over_raw": round(full / raw, 2),
            "validate_1proc_over_raw": round(single / raw, 2),
        }
        cache = Path(tmp) / "cache"
        cold = []
        warm = []
        for _ in range(repeat):
            for path in cache.glob("*"):
                path.unlink()
            cold.append(kb_query(papers, cache))
            warm.append(kb_query(papers, cache))
        # Let the cache age past the racy window, then edit one file and query again.
        time.sleep(2.1)
        kb_query(papers, cache)
        victim = sorted(papers.glob("*.yaml"))[count // 2]
        victim.write_text(victim.read_text(encoding="utf-8"), encoding="utf-8")
        after_edit = kb_query(papers, cache)
        baseline = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            baseline.append(time.perf_counter() - start)
        result.update(
            {
                "query_cold_s": round(statistics.median(cold), 3),
                "query_warm_s": round(statistics.median(warm), 3),
                "query_after_edit_s": round(after_edit, 3),
                "python_startup_s": round(statistics.median(baseline), 3),
            }
        )
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, action="append", help="record counts (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args()
    counts = args.records or [1000]
    results = [measure(count, args.repeat) for count in counts]
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "cpu_count": os.cpu_count(),
                "python": sys.version.split()[0],
                "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
