"""Time `kb import --dry-run` of the source lists against papers/, and count what it reads.

    python benchmarks/import_lists.py [SOURCES_DIR] [--repeat 5]

SOURCES_DIR defaults to ../shared/sources (the five lists the base was built from; they are
input data, not part of this repository). Reading, parsing, matching and planning are timed
together (median of the repeats); nothing is written. Prints JSON. Target (issue 3): all five
lists under 10 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenkb import importer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="?", default=str(ROOT.parent / "shared" / "sources"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.sources).glob("*.txt"))
    excluded = importer.load_excluded(ROOT / "curation" / "excluded.yaml")
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        results = [importer.read_source(p) for p in paths]
        plan = importer.plan_import(results, ROOT / "papers", excluded)
        times.append(time.perf_counter() - start)
    per_list = {
        r.source: {
            "format": r.format,
            "entries": len(r.entries),
            "unparsed": len(r.unparsed),
            "not_works": len(r.skipped),
        }
        for r in results
    }
    reasons = Counter(
        "already imported"
        if "already imported" in p.problems
        else "excluded"
        if any(x.startswith("excluded") for x in p.problems)
        else p.action
        for p in plan.planned
    )
    print(
        json.dumps(
            {
                "benchmark": "import_lists",
                "lists": len(paths),
                "seconds_median": round(statistics.median(times), 3),
                "seconds_all": [round(t, 3) for t in times],
                "per_list": per_list,
                "entries": sum(v["entries"] for v in per_list.values()),
                "outcome": dict(reasons),
                "conflicts": len(plan.conflicts),
                "records": len(list((ROOT / "papers").glob("*.yaml"))),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
