"""DiffRate: Differentiable Compression Rate for Efficient Vision Transformers, arXiv 2305.17997,
record `diffrate-2023`.

Checked against the official repository OpenGVLab/DiffRate (DiffRate/patch/deit.py,
DiffRate/merge.py); no code was taken from it.

DiffRate learns, per block, how many tokens to prune and how many to merge; this module applies
given counts (the inference path). In every block, between attention and MLP:

1. importance: the attention from CLS to each token, averaged over heads; the tokens are sorted
   by it, most important first (CLS stays first) and stay in that order;
2. prune: the `prune` least important tokens are dropped;
3. merge: of the tokens left, the `merge` least important ones are each merged into the most
   similar (cosine similarity of the tokens themselves) of the more important ones, CLS
   excluded; later blocks use proportional attention (`log(size)` added to the scores).

Simplified: the differentiable search of the compression rates (the paper's contribution, done
with the model frozen on training data) is left out; the per-block (prune, merge) counts are
taken as given in `Config`. Merging is the size-weighted average of ToMe, so `sum(size * x)` is
conserved; the official code averages merged tokens without size weights and scales the sizes of
merged tokens by their similarity before summing them.

Shapes: tokens `(B, N, C)`, CLS at index 0; attention `(B, H, N, N)`; size `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import ImplInfo
from .adapter import attach
from .tokens import gather
from .tome import merge_pairs
from .vit import TokenState, VisionTransformer, cls_attention

IMPL = ImplInfo(
    name="diffrate",
    title="DiffRate: prune by CLS attention, then merge the least important tokens",
    papers=("diffrate-2023",),
    family="prune-merge",
    training_free=False,
    arxiv="2305.17997",
    simplified=(
        "no differentiable rate search: the per-block (prune, merge) counts are given; merging is "
        "size-weighted (the official code averages without weights and scales merged sizes by "
        "similarity)"
    ),
)


@dataclass(frozen=True)
class Config:
    # Per block from block 0, (tokens pruned, tokens merged away); later blocks reduce nothing.
    counts: tuple[tuple[int, int], ...] = ((0, 0),) + ((4, 4),) * 11

    def __post_init__(self) -> None:
        assert all(
            len(pair) == 2 and all(isinstance(n, int) and n >= 0 for n in pair)
            for pair in self.counts
        ), "counts holds (prune, merge) pairs of ints >= 0"


def config_for(keep_rate: float, depth: int, num_patches: int = 196) -> Config:
    """Remove about `(1 - keep_rate) * num_patches` tokens, evenly over the blocks after the first
    (DiffRate never reduces in block 0), half by pruning and half by merging.

    DiffRate learns these counts; the even split is our stand-in. The counts are absolute, so this
    needs the patch count (DeiT at 224px by default).
    """
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    if keep_rate >= 1.0:
        return Config(counts=())
    total = round(num_patches * (1.0 - keep_rate))
    blocks = depth - 1 if depth > 1 else 1
    per_block = [total // blocks + (1 if i < total % blocks else 0) for i in range(blocks)]
    counts = tuple((n // 2, n - n // 2) for n in per_block)
    return Config(counts=((0, 0), *counts) if depth > 1 else counts)


def diffrate_compress(
    x: Tensor, importance: Tensor, prune: int, merge: int, size: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sort by `importance (B, N - 1)`, prune `prune` tokens, merge `merge` more away.

    `x (B, N, C)` with CLS at index 0; at least CLS and one patch token remain (the counts are
    capped). Returns `(x (B, N', C), size (B, N', 1))`, CLS first, then by decreasing importance.
    """
    B, N, _ = x.shape
    if size is None:
        size = x.new_ones(B, N, 1)
    order = importance.argsort(dim=-1, descending=True) + 1  # (B, N - 1)
    index = torch.cat([order.new_zeros(B, 1), order], dim=1)  # (B, N) CLS first
    keep = N - min(prune, N - 2)
    x, size = gather(x, index[:, :keep]), gather(size, index[:, :keep])  # (B, keep, C)
    merge = min(merge, keep - 2)
    if merge <= 0:
        return x, size
    n_dst = keep - merge  # the more important tokens, CLS included
    metric = F.normalize(x, dim=-1)  # (B, keep, C)
    sim = metric[:, n_dst:] @ metric[:, :n_dst].transpose(-1, -2)  # (B, merge, n_dst)
    sim[..., 0] = -torch.inf  # nothing merges into CLS
    dst = sim.argmax(dim=-1)  # (B, merge)
    src = torch.arange(n_dst, keep, device=x.device).expand(B, merge)  # (B, merge)
    return merge_pairs(x, size, src, dst)


class DiffRateBlock:
    """The reducer for one block with its (prune, merge) counts."""

    def __init__(self, prune: int, merge: int) -> None:
        self.prune, self.merge = prune, merge

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "DiffRate runs between attention and MLP (mid hook)"
        importance = cls_attention(state.attn)  # (B, N - 1)
        return diffrate_compress(state.x, importance, self.prune, self.merge, state.size)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    if len(config.counts) > len(model.blocks):
        raise ValueError(
            f"Config.counts has {len(config.counts)} blocks for a model of depth "
            f"{len(model.blocks)}"
        )
    mid = {
        index: DiffRateBlock(prune, merge)
        for index, (prune, merge) in enumerate(config.counts)
        if prune or merge
    }
    with attach(model, mid=mid, track_size=True if mid else None) as patched:
        yield patched
