"""Read every source list, plan its import against papers/, and measure what the reader gets.

    python benchmarks/import_lists.py [SOURCES_DIR] [--repeat 5] [--no-reimport]

SOURCES_DIR defaults to ../shared/sources (the five seed lists and the lists added later; they
are input data, not part of this repository). Prints JSON. Per list:

- `seconds`: reading and parsing it (median of the repeats);
- `arxiv_linked`: distinct arXiv ids the list links (abs/pdf/html URLs found in its raw text by
  a pattern independent of the reader; shields.io image URLs are not links); `arxiv_read`: how
  many of them some entry was read with; `arxiv_share` = read / linked (target >= 0.98);
- `titles_equal_text`: share of entries whose title is the list's own text (its letters and
  digits, case kept, occur in the entry's raw text in that order);
- `venue_given` / `venue_read` / `venues_unknown`: entries whose list gives a venue, how many of
  them were normalised, and the spellings that were not (reported by the importer);
- `reimport`: the list imported into a scratch copy of papers/, then planned again: the second
  plan must have 0 new and 0 merged entries and write nothing.

`seeds` is the dry-run outcome of the five seed lists against papers/ (must stay 0 new, 0
merged); `seconds_all_lists` plans all lists together (target: seconds, not minutes).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenkb import importer  # noqa: E402
from tokenkb.model import normalize_arxiv  # noqa: E402
from tokenkb.outputs import write_transaction  # noqa: E402

_ARXIV_URL = re.compile(
    r"(?<!img\.shields\.io/badge/)https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf|html)/"
    r"([0-9]{4}\.[0-9]{4,5}(?:v[0-9]+)?)",
    re.I,
)


def _letters(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", text)


def _linked_arxiv(text: str) -> set[str]:
    return {a for a in (normalize_arxiv(m) for m in _ARXIV_URL.findall(text)) if a}


def _outcome(plan: importer.Plan) -> dict[str, int]:
    reasons = Counter(
        "already imported"
        if "already imported" in p.problems
        else "excluded"
        if any(x.startswith("excluded") for x in p.problems)
        else p.action
        for p in plan.planned
    )
    return dict(reasons)


def _reimport(result: importer.ParseResult, excluded: importer.Excluded) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch:
        papers = Path(scratch) / "papers"
        shutil.copytree(ROOT / "papers", papers)
        try:
            first = importer.plan_import([result], papers, excluded)
        except ValueError as exc:
            return {"error": f"plan_import raised ValueError: {exc}"}
        if first.invalid:
            return {
                "invalid": [str(p) for p in first.invalid[:5]],
                "invalid_count": len(first.invalid),
            }
        write_transaction(papers, first.files)
        second = importer.plan_import([result], papers, excluded)
        counts = second.counts()
        return {
            "first": first.counts(),
            "second_new": counts.get("new", 0),
            "second_merged": counts.get("merge", 0),
            "second_files": len(second.files),
        }


def measure(path: Path, repeat: int) -> tuple[importer.ParseResult, dict[str, object]]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = importer.read_source(path)
        times.append(time.perf_counter() - start)
    text = path.read_text(encoding="utf-8", errors="replace")
    linked = _linked_arxiv(text)
    read = {e.arxiv for e in result.entries if e.arxiv}
    titled = [e for e in result.entries if e.title]
    equal = [
        e for e in titled if _letters(e.title or "") in _letters(re.sub(r"<[^>]+>", "", e.text))
    ]
    given = [e for e in result.entries if e.venue_text or e.venue]
    unknown = sorted({e.venue_text or "" for e in given if e.venue is None})
    return result, {
        "format": result.format,
        "seconds": round(statistics.median(times), 4),
        "entries": len(result.entries),
        "unparsed": len(result.unparsed),
        "not_works": len(result.skipped),
        "arxiv_linked": len(linked),
        "arxiv_read": len(linked & read),
        "arxiv_share": round(len(linked & read) / len(linked), 4) if linked else None,
        "arxiv_missed": sorted(linked - read)[:10],
        "titles_equal_text": round(len(equal) / len(titled), 4) if titled else None,
        "venue_given": len(given),
        "venue_read": len(given) - sum(1 for e in given if e.venue is None),
        "venues_unknown": unknown[:15],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="?", default=str(ROOT.parent / "shared" / "sources"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-reimport", action="store_true")
    args = parser.parse_args()
    paths = sorted(
        p
        for p in Path(args.sources).iterdir()
        if p.suffix in (".txt", ".md") and p.stem != "README"
    )
    excluded = importer.load_excluded(ROOT / "curation" / "excluded.yaml")
    per_list: dict[str, dict[str, object]] = {}
    results = []
    for path in paths:
        result, numbers = measure(path, args.repeat)
        if not args.no_reimport and not path.name[:3].isdigit():
            numbers["reimport"] = _reimport(result, excluded)
        per_list[path.name] = numbers
        results.append(result)
    seeds = [r for r, p in zip(results, paths, strict=True) if p.name[:3].isdigit()]
    start = time.perf_counter()
    seed_plan = importer.plan_import(seeds, ROOT / "papers", excluded)
    seed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    all_results = [importer.read_source(p) for p in paths]
    try:
        all_plan: importer.Plan | None = importer.plan_import(
            all_results, ROOT / "papers", excluded
        )
        error = None
    except ValueError as exc:  # a planning failure is a finding, not the end of the benchmark
        all_plan, error = None, f"plan_import raised ValueError: {exc}"
    all_seconds = time.perf_counter() - start
    shares = [v["arxiv_share"] for v in per_list.values() if v["arxiv_share"] is not None]
    print(
        json.dumps(
            {
                "benchmark": "import_lists",
                "lists": len(paths),
                "per_list": per_list,
                "min_arxiv_share": min(shares) if shares else None,  # type: ignore[type-var]
                "seeds": {
                    "outcome": _outcome(seed_plan),
                    "new": seed_plan.counts().get("new", 0),
                    "merged": seed_plan.counts().get("merge", 0),
                    "seconds": round(seed_seconds, 3),
                },
                "all_lists": {
                    "entries": sum(len(r.entries) for r in all_results),
                    "outcome": _outcome(all_plan) if all_plan else None,
                    "conflicts": len(all_plan.conflicts) if all_plan else None,
                    "error": error,
                    "seconds": round(all_seconds, 3),
                },
                "records": len(list((ROOT / "papers").glob("*.yaml"))),
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
