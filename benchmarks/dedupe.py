"""Deduplication at scale: synthetic records with planted duplicates, time and precision/recall.

    python benchmarks/dedupe.py [--sizes 1000 10000 100000] [--seed 0]

Each size makes that many items: originals with random titles (8-12 words from a 5,000-word
vocabulary, so unrelated titles share common words as real ones do) and arXiv ids, and about
20% planted duplicates of four kinds: re-cased and re-punctuated titles, the venue version of an
arXiv paper (same title, a DOI instead of the arXiv id), a one-letter typo, and a renamed work
whose record lists the old title as an alias. Precision and recall are over pairs: every pair
of items placed in one group is a predicted pair; the planted (original, duplicate) pairs are
the truth. Prints JSON. Targets (issue 3): sub-quadratic time, 100k under 30 s, precision and
recall >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from itertools import combinations, pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tokenkb.dedupe import Item, find_duplicates


def make_items(n: int, seed: int) -> tuple[list[Item], set[tuple[int, int]]]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = sorted(
        {"".join(rng.choice(letters) for _ in range(rng.randint(4, 10))) for _ in range(5000)}
    )
    common = vocabulary[:50]  # frequent words, like "token", "efficient", "transformer"
    items: list[Item] = []
    planted: set[tuple[int, int]] = set()
    originals = int(n * 0.8)
    for index in range(originals):
        words = [rng.choice(common) for _ in range(3)] + [
            rng.choice(vocabulary) for _ in range(rng.randint(5, 9))
        ]
        rng.shuffle(words)
        title = " ".join(w.capitalize() for w in words)
        arxiv = f"{rng.randint(15, 24):02d}{rng.randint(1, 12):02d}.{index:05d}"
        items.append(Item(f"o{index}", title, {"arxiv": arxiv}))
    while len(items) < n:
        source = rng.randrange(originals)
        original = items[source]
        title = original.title or ""
        kind = rng.randrange(4)
        if kind == 0:  # re-cased, re-punctuated
            dup = Item(f"d{len(items)}", title.upper().replace(" ", ", ", 1) + ".", {})
        elif kind == 1:  # the venue version: same title, a DOI instead of the arXiv id
            dup = Item(f"d{len(items)}", title, {"doi": f"10.1000/{source}"})
        elif kind == 2:  # a typo
            position = rng.randrange(len(title))
            dup = Item(f"d{len(items)}", title[:position] + title[position + 1 :], {})
        else:  # renamed: the record lists its old title
            new_title = " ".join(rng.choice(vocabulary).capitalize() for _ in range(8))
            dup = Item(f"d{len(items)}", new_title, {}, [title])
        planted.add((source, len(items)))
        items.append(dup)
    return items, planted


def measure(n: int, seed: int) -> dict[str, float | int]:
    items, planted = make_items(n, seed)
    start = time.perf_counter()
    groups = find_duplicates(items)
    seconds = time.perf_counter() - start
    # Duplicates of one original are also duplicates of each other: the truth is every pair
    # within the planted clusters.
    cluster: dict[int, int] = {}
    for a, b in planted:
        cluster[b] = a
    truth_groups: dict[int, list[int]] = {}
    for dup, orig in cluster.items():
        truth_groups.setdefault(orig, [orig]).append(dup)
    truth = {pair for g in truth_groups.values() for pair in combinations(sorted(g), 2)}
    predicted = {pair for g in groups.groups for pair in combinations(sorted(g), 2)}
    hits = len(truth & predicted)
    return {
        "items": n,
        "planted_pairs": len(truth),
        "predicted_pairs": len(predicted),
        "seconds": round(seconds, 3),
        "precision": round(hits / len(predicted), 4) if predicted else 1.0,
        "recall": round(hits / len(truth), 4) if truth else 1.0,
        "conflicts": len(groups.conflicts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [measure(n, args.seed) for n in args.sizes]
    for small, large in pairwise(rows):
        large["time_ratio_vs_previous"] = round(
            float(large["seconds"]) / max(float(small["seconds"]), 1e-9), 1
        )
        large["size_ratio_vs_previous"] = int(large["items"]) // int(small["items"])
    print(json.dumps({"benchmark": "dedupe", "results": rows}, indent=2))


if __name__ == "__main__":
    main()
