"""DiffRate: Differentiable Compression Rate for Efficient Vision Transformers, arXiv 2305.17997,
record `diffrate-2023`.

DiffRate learns, per block, how many tokens to prune and how many to merge; this module applies
given counts (the inference path). In every block, between attention and MLP:

1. importance: the attention from CLS to each token, averaged over heads; the tokens are sorted
   by it, most important first (CLS stays first) and stay in that order. As in the official
   code every block sorts, also one that then reduces nothing (the order decides which tokens
   the next block prunes and which it merges);
2. prune: the `prune` least important tokens are dropped;
3. merge: of the tokens left, the `merge` least important ones are each merged into the most
   similar of the more important ones (cosine similarity `m / ||m||` of the metric: the tokens
   themselves, as in the official code, or a separate `metric`), CLS excluded
   (`class_token=True`). Features merge by an unweighted mean of the receiving token and the
   tokens merged into it (the official `scatter_reduce(mode="mean")`); sizes are summed after
   scaling each merged token's size by its similarity to its destination (`node_max`), which
   the official code does to tune proportional attention for off-the-shelf models. Later
   blocks use proportional attention (`log(size)` added to the scores). Sources can be traced
   (`SourceTrace`, as the official `trace_source`).

Sizes are therefore not patch counts: a merged token adds less than its size, and a negative
similarity would subtract (the official eval path does not clamp; its training path clamps the
scaled sizes at 1). `Config.merge_mode="weighted"` gives ToMe's size-weighted merge with plain
size sums instead, which conserves `sum(size * x)`.

Checked against the official repository OpenGVLab/DiffRate at commit
91ae3e376e9c3f9f1e69f580fd902b61de5dfe0e: `DiffRate/merge.py` (`get_merge_func`) and the eval
branch of `DiffRateBlock.forward` in `DiffRate/patch/deit.py` (sort, prune, merge, sizes,
`trace_source`), run in memory outside the project on seeded random inputs (a fetched snapshot;
nothing copied): 120 cases of one step (B 1-4, N 3-60, prune and merge counts 0 to past the
cap, float32 and float64) give bit-identical tokens, sizes and sources; on our 4-block ViT the
same eval branch in the mid hook of every block gives bit-identical logits (3 count settings,
batch 3, 3 seeds).

Simplified: the differentiable search of the compression rates (the paper's contribution, done
with the model frozen on training data) is left out; the per-block (prune, merge) counts are
taken as given in `Config` (the official code takes kept numbers, `N - prune` and
`N - prune - merge`). At least CLS and one patch token remain in every block (the counts are
capped).

Shapes: tokens `(B, N, C)`, CLS at index 0; attention `(B, H, N, N)`; size `(B, N, 1)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of, patches_of
from ..registry import ImplInfo
from .adapter import attach
from .tokens import gather
from .tome import Merge, SourceTrace
from .vit import TokenState, VisionTransformer, cls_attention

IMPL = ImplInfo(
    name="diffrate",
    title="DiffRate: prune by CLS attention, then merge the least important tokens",
    papers=("diffrate-2023",),
    family="prune-merge",
    training_free=False,
    arxiv="2305.17997",
    simplified="no differentiable rate search: the per-block (prune, merge) counts are given",
)

MERGE_MODES = ("mean", "weighted")
METRICS = ("x", "keys")


@dataclass(frozen=True)
class Config:
    # Per block from block 0, (tokens pruned, tokens merged away); later blocks reduce nothing.
    counts: tuple[tuple[int, int], ...] = ((0, 0),) + ((4, 4),) * 11
    merge_mode: str = "mean"  # "mean" (official: plain mean, similarity-scaled sizes), "weighted"
    metric: str = "x"  # merge similarity on the tokens ("x", official) or the attention keys
    class_token: bool = True  # nothing merges into token 0

    def __post_init__(self) -> None:
        assert all(
            len(pair) == 2 and all(isinstance(n, int) and n >= 0 for n in pair)
            for pair in self.counts
        ), "counts holds (prune, merge) pairs of ints >= 0"
        assert self.merge_mode in MERGE_MODES, f"merge_mode must be one of {MERGE_MODES}"
        assert self.metric in METRICS, f"metric must be one of {METRICS}"


def config_for(keep_rate: float, model_config: object, num_patches: int = 196) -> Config:
    """Remove about `(1 - keep_rate) * num_patches` tokens, evenly over the blocks after the first
    (DiffRate never reduces in block 0), half by pruning and half by merging.

    DiffRate learns these counts; the even split is our stand-in. The counts are absolute, so this
    needs the patch count (DeiT at 224px by default).
    """
    depth, num_patches = depth_of(model_config), patches_of(model_config, num_patches)
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    if keep_rate >= 1.0:
        return Config(counts=())
    total = round(num_patches * (1.0 - keep_rate))
    blocks = depth - 1 if depth > 1 else 1
    per_block = [total // blocks + (1 if i < total % blocks else 0) for i in range(blocks)]
    counts = tuple((n // 2, n - n // 2) for n in per_block)
    return Config(counts=((0, 0), *counts) if depth > 1 else counts)


def plan(
    metric: Tensor, importance: Tensor, prune: int, merge: int, class_token: bool = True
) -> tuple[Merge, Tensor]:
    """Sort by `importance (B, N - 1)`, prune, and match the `merge` least important tokens
    left to the more important ones by cosine similarity of `metric (B, N, D)`.

    Returns `(merge, node_max (B, merge'))`: the sort, prune and merge as one `Merge`, and
    each merged token's similarity to its destination.
    """
    B, N, _ = metric.shape
    order = importance.argsort(dim=-1, descending=True) + 1  # (B, N - 1)
    index = torch.cat([order.new_zeros(B, 1), order], dim=1)  # (B, N) CLS first
    keep = N - min(prune, N - 2)
    merge = max(0, min(merge, keep - 2))
    n_dst = keep - merge  # the more important tokens, CLS included
    with torch.no_grad():
        unit = gather(metric, index[:, :keep])  # (B, keep, D)
        unit = unit / unit.norm(dim=-1, keepdim=True)
        sim = unit[:, n_dst:] @ unit[:, :n_dst].transpose(-1, -2)  # (B, merge, n_dst)
        if class_token:
            sim[..., 0] = -math.inf  # nothing merges into CLS
        node_max, dst = sim.max(dim=-1)  # (B, merge)
    return Merge.from_positions(index[:, :n_dst], index[:, n_dst:keep], dst, N), node_max


def diffrate_compress(
    x: Tensor,
    importance: Tensor,
    prune: int,
    merge: int,
    size: Tensor | None = None,
    metric: Tensor | None = None,
    class_token: bool = True,
    merge_mode: str = "mean",
    trace: SourceTrace | None = None,
) -> tuple[Tensor, Tensor]:
    """DiffRate's step on `x (B, N, C)` with CLS at index 0: sort by `importance (B, N - 1)`,
    prune `prune` tokens, merge `merge` more away (similarity of `metric (B, N, D)`, default
    `x`).

    Returns `(x (B, N', C), size (B, N', 1))`, CLS first, then by decreasing importance.
    """
    assert merge_mode in MERGE_MODES, f"merge_mode must be one of {MERGE_MODES}"
    if size is None:
        size = x.new_ones(*x.shape[:2], 1)
    step, node_max = plan(x if metric is None else metric, importance, prune, merge, class_token)
    if trace is not None:
        trace.update(step)
    if merge_mode == "weighted":
        return step.weighted(x, size)
    # each merged token counts with its size times its similarity to where it goes
    flat = size.reshape(-1, 1)  # (B * N, 1)
    moved = flat.index_select(0, step.src_rows) * node_max.reshape(-1, 1)  # (B * merge, 1)
    scaled = flat.index_copy(0, step.src_rows, moved).view_as(size)
    return step(x, "mean"), step(scaled, "sum")


class DiffRateBlock:
    """The reducer for one block with its (prune, merge) counts."""

    def __init__(
        self, prune: int, merge: int, config: Config = Config(), trace: SourceTrace | None = None
    ) -> None:
        self.prune, self.merge, self.config, self.trace = prune, merge, config, trace

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "DiffRate runs between attention and MLP (mid hook)"
        c = self.config
        importance = cls_attention(state.attn)  # (B, N - 1)
        metric = state.keys if c.metric == "keys" else None
        return diffrate_compress(
            state.x,
            importance,
            self.prune,
            self.merge,
            state.size,
            metric,
            c.class_token,
            c.merge_mode,
            self.trace,
        )


@contextmanager
def patch(
    model: VisionTransformer, config: Config = Config(), trace: SourceTrace | None = None
) -> Iterator[VisionTransformer]:
    """DiffRate with the given counts; pass a `SourceTrace` to record token sources. Every block
    sorts by importance once any block reduces, as the official patch does."""
    depth = len(model.blocks)
    if len(config.counts) > depth:
        raise ValueError(
            f"Config.counts has {len(config.counts)} blocks for a model of depth {depth}"
        )
    counts = list(config.counts) + [(0, 0)] * (depth - len(config.counts))
    mid = {}
    if any(prune or merge for prune, merge in counts):
        mid = {i: DiffRateBlock(p, m, config, trace) for i, (p, m) in enumerate(counts)}
    pre = {0: trace.reset_hook} if trace is not None and mid else None
    with attach(model, mid=mid, pre=pre, track_size=True if mid else None) as patched:
        yield patched
