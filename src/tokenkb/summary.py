"""A plain-text summary of the base: counts by kind, modality, family and flags."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .taxonomy import Family, Kind, Modality


def summarize(records: list[dict[str, Any]]) -> str:
    methods = [r for r in records if r["kind"] == Kind.METHOD]
    lines = [f"tokenkb: {len(records)} works, {len(methods)} methods"]
    for label, key, vocabulary in (
        ("kind", "kind", Kind),
        ("modality", "modality", Modality),
        ("family", "family", Family),
    ):
        counts: Counter[str] = Counter()
        for record in records:
            values = record.get(key) or []
            counts.update([values] if isinstance(values, str) else values)
        shown = [f"{v.value} {counts[v.value]}" for v in vocabulary if counts[v.value]]
        lines.append(f"  {label + ':':<16}{', '.join(shown) or '-'}")
    free = sum(1 for r in methods if r.get("training_free"))
    lines.append(f"  {'training-free:':<16}{free} of {len(methods)} methods")
    lines.append(f"  {'with code:':<16}{sum(1 for r in records if r.get('code'))}")
    lines.append(
        f"  {'with impl:':<16}{sum(1 for r in methods if r.get('impl'))} of {len(methods)} methods"
    )
    years = sorted(r["year"] for r in records)
    if years:
        lines.append(f"  {'years:':<16}{years[0]}-{years[-1]}")
    return "\n".join(lines) + "\n"
