"""Tensor helpers shared by the vision methods: gather, keep top-k, size-weighted merge.

Shapes: tokens `(B, N, C)` with `num_prefix` prefix tokens (CLS) first; scores `(B, N - prefix)`
over the non-prefix tokens; sizes `(B, N, 1)`. Every helper keeps the prefix tokens in front.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..selection import gather as gather


def keep_topk(
    x: Tensor,
    scores: Tensor,
    k: int,
    size: Tensor | None = None,
    num_prefix: int = 1,
    keep_order: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Keep the prefix tokens and the `k` highest-scoring others.

    Returns `(x (B, prefix + k, C), size or None, kept (B, k))`, `kept` indexing the non-prefix
    tokens. With `keep_order` the kept tokens stay in their original order (spatial order
    matters to some later steps); otherwise they come best first.
    """
    n = x.shape[1] - num_prefix
    assert 0 <= k <= n, f"cannot keep {k} of {n} tokens"
    kept = scores.topk(k, dim=1).indices  # (B, k)
    if keep_order:
        kept = kept.sort(dim=1).values
    index = torch.cat(
        [torch.arange(num_prefix, device=x.device).expand(x.shape[0], -1), kept + num_prefix], dim=1
    )  # (B, prefix + k)
    return gather(x, index), (gather(size, index) if size is not None else None), kept


def drop_mask(n: int, kept: Tensor) -> Tensor:
    """A boolean `(B, n)` mask that is True for the tokens not in `kept (B, k)`."""
    mask = torch.ones(kept.shape[0], n, dtype=torch.bool, device=kept.device)
    return mask.scatter(1, kept, False)


def weighted_merge(x: Tensor, size: Tensor, dst: Tensor, n_dst: int) -> tuple[Tensor, Tensor]:
    """Size-weighted averages of the rows of `x` that share a destination slot.

    `x (B, M, C)` and `size (B, M, 1)` are the tokens being merged; `dst (B, M)` gives for each
    row its destination slot in `[0, n_dst)`. Returns `(merged (B, n_dst, C), size (B, n_dst, 1))`
    with `merged = sum(size_i * x_i) / sum(size_i)` per slot: the size-weighted sum
    `sum(size * x)` is conserved exactly.
    """
    B, _, C = x.shape
    total = x.new_zeros(B, n_dst, C).scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, C), x * size)
    count = size.new_zeros(B, n_dst, 1).scatter_add(1, dst.unsqueeze(-1), size)
    return total / count.clamp_min(torch.finfo(count.dtype).tiny), count


def three_stages(depth: int) -> tuple[int, ...]:
    """Block indices at 1/4, 1/2 and 3/4 of the depth (EViT's 4, 7, 10 of 12 when 1-based)."""
    return tuple(sorted({depth // 4, depth // 2, (3 * depth) // 4}))


def kept_count(n: int, keep_rate: float) -> int:
    """Patch tokens kept out of `n`: rounded, at least one."""
    return max(1, min(n, round(n * keep_rate)))
