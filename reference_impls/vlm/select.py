"""Selection helpers shared by the visual-token methods: top-k with a fixed tie rule, the
complement of a selection, gathering rows, and the interquartile-range outlier count.

Ties: among equal scores the earlier token wins (a stable sort), so every rule is deterministic
and a plain-loop re-implementation in the tests gives the same indices.

Shapes: scores `(B, n)`; indices `(B, k)` into the n tokens; tokens `(B, n, C)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..selection import gather as gather
from ..selection import top_by_score as top_by_score
from ..selection import top_in_order as top_in_order


def complement(index: Tensor, n: int) -> Tensor:
    """Per row, the positions in `[0, n)` not in `index (B, k)`, ascending: `(B, n - k)`."""
    mask = torch.ones(index.shape[0], n, dtype=torch.bool, device=index.device)
    mask.scatter_(1, index, False)
    return (
        torch.arange(n, device=index.device)
        .expand(index.shape[0], n)[mask]
        .view(index.shape[0], n - index.shape[1])
    )


def iqr_outliers(scores: Tensor) -> int:
    """How many entries of `scores` (all of them, flattened) lie above `Q3 + 1.5 * IQR`, the
    quartiles linearly interpolated (numpy's default `percentile`, as PruMerge and TRIM use)."""
    flat = scores.detach().float().flatten()
    q1, q3 = torch.quantile(flat, torch.tensor([0.25, 0.75], device=flat.device))
    return int((flat > q3 + 1.5 * (q3 - q1)).sum())
