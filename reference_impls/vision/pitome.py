"""Accelerating Transformers with Spectrum-Preserving Token Merging (PiToMe), arXiv 2405.16148,
record `pitome-2024`.

Checked against the official repository hchautran/PiToMe (algo/pitome/merge.py and
algo/pitome/patch/deit.py); no code was taken from it (CC-BY-NC).

PiToMe ("protect informative tokens before merging") builds on ToMe's bipartite merging but first
decides which tokens may merge at all. In a block that keeps a share `ratio` of its `T` patch
tokens, `k = floor(T - T * ratio)` tokens are merged away:

1. graph: cosine similarities between the patch tokens' keys (averaged over heads), `(B, T, T)`;
2. energy of token i: the mean over all tokens j of `f(cos(k_i, k_j))`, with
   `f(s) = ELU(s - m) = s - m` above the margin `m` and `alpha * (exp(s - m) - 1)` below it.
   A token in a large cluster of similar tokens has high energy; an isolated one has low energy;
3. the `2k` highest-energy tokens are mergeable, the other `T - 2k` are protected (kept as they
   are); the mergeable ones, in order of decreasing energy, alternate into sets A and B;
4. every A token merges into its most similar B token (size-weighted average), so exactly `k`
   tokens go; later blocks use proportional attention (`log(size)` added to the scores).

The margin falls linearly with depth, `m_l = m0 * (1 - l / L)` for block l of L (0-based), so
deeper blocks call more pairs "similar"; `m0 = 0.75` and `alpha = 1` as in the official DeiT code.

Simplifications: the paper defines `f` piecewise, linear above the margin and
`alpha * (exp(s - m) - 1)` below it; we use the official code's form of it, `ELU(cos - m)`, with
the mean over all patch tokens (the token itself included). The official DeiT code
uses an energy-ordered ToMe matching (the `r` best edges among all tokens) in the first half of
the blocks; we use the protect-then-merge step above in every reducing block. Survivors keep
their original order. The official DeiT code does not pass sizes to attention; we use
proportional attention, as ToMe does.

Shapes: tokens `(B, N, C)` with CLS at index 0 (never merged, not in the graph); keys
`(B, N, D)`; size `(B, N, 1)`; `T = N - 1`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..registry import ImplInfo
from .adapter import attach
from .tome import merge_pairs
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="pitome",
    title="PiToMe: energy-protected bipartite token merging",
    papers=("pitome-2024",),
    family="merging",
    training_free=True,
    arxiv="2405.16148",
    simplified=(
        "energy is the official code's mean ELU(cos - m); the protect-then-merge step runs in "
        "every block (the official DeiT code uses an energy-ordered ToMe matching in the first "
        "half); survivors keep their original order; proportional attention always on"
    ),
)


@dataclass(frozen=True)
class Config:
    ratio: float = 0.9  # share of the patch tokens each reducing block keeps
    blocks: tuple[int, ...] | None = None  # reducing blocks, 0-based; None: every block
    margin: float = 0.75  # m0: the margin at block 0, falling linearly with depth
    alpha: float = 1.0  # ELU slope below the margin

    def __post_init__(self) -> None:
        assert 0.5 <= self.ratio <= 1.0, "ratio must be in [0.5, 1]: at most half the tokens merge"
        assert -1.0 <= self.margin <= 1.0, "margin is a cosine similarity, in [-1, 1]"
        assert self.alpha > 0.0, "alpha must be positive"


def config_for(keep_rate: float, depth: int) -> Config:
    """The same ratio in every block, leaving about `keep_rate` of the patches after the last."""
    assert keep_rate > 0.0 and depth >= 1
    if keep_rate >= 1.0:
        return Config(ratio=1.0, blocks=())
    return Config(ratio=max(0.5, keep_rate ** (1.0 / depth)))


def merged_count(num_patches: int, ratio: float) -> int:
    """How many of `num_patches` tokens a block with this keep `ratio` merges away."""
    return math.floor(num_patches - num_patches * ratio)


def energy_score(metric: Tensor, margin: float, alpha: float = 1.0) -> Tensor:
    """Energy of each token of `metric (B, T, D)`: `(B, T)`, high inside large similar clusters."""
    metric = F.normalize(metric, dim=-1)
    sim = metric @ metric.transpose(-1, -2)  # (B, T, T)
    return F.elu(sim - margin, alpha=alpha).mean(dim=-1)


def pitome_merge(
    x: Tensor,
    metric: Tensor,
    k: int,
    margin: float,
    alpha: float = 1.0,
    size: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Merge `k` patch tokens of `x (B, N, C)` away, protecting the low-energy ones.

    `metric (B, N, D)` are the keys; CLS (index 0) is kept and left out of the graph.
    Returns `(x (B, N - k, C), size (B, N - k, 1))`.
    """
    B, N, _ = x.shape
    if size is None:
        size = x.new_ones(B, N, 1)
    assert 0 <= 2 * k <= N - 1, f"cannot merge {k} of {N - 1} patch tokens"
    if k == 0:
        return x, size
    patches = F.normalize(metric[:, 1:], dim=-1)  # (B, T, D)
    energy = energy_score(patches, margin, alpha)  # (B, T)
    mergeable = energy.argsort(dim=-1, descending=True)[:, : 2 * k]  # (B, 2k)
    a, b = mergeable[:, ::2], mergeable[:, 1::2]  # (B, k) each, patch positions
    pa = patches.gather(1, a.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))  # (B, k, D)
    pb = patches.gather(1, b.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))  # (B, k, D)
    match = (pa @ pb.transpose(-1, -2)).argmax(dim=-1)  # (B, k) index into b
    src = a + 1  # (B, k) positions in x (CLS shifts by one)
    dst = b.gather(1, match) + 1  # (B, k)
    return merge_pairs(x, size, src, dst)


class PiToMe:
    """The reducer: the block's keep ratio and margin are fixed when the model is patched."""

    def __init__(self, ratio: float, margin: float, alpha: float) -> None:
        self.ratio, self.margin, self.alpha = ratio, margin, alpha

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.keys is not None, "PiToMe runs between attention and MLP (mid hook)"
        k = merged_count(state.x.shape[1] - 1, self.ratio)
        return pitome_merge(state.x, state.keys, k, self.margin, self.alpha, state.size)


def block_margin(margin: float, index: int, depth: int) -> float:
    """The margin of block `index` (0-based) of `depth`: linear from `margin` towards 0."""
    return margin * (1.0 - index / depth)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    depth = len(model.blocks)
    blocks = range(depth) if config.blocks is None else config.blocks
    mid = {}
    if config.ratio < 1.0:
        mid = {
            i: PiToMe(config.ratio, block_margin(config.margin, i, depth), config.alpha)
            for i in blocks
        }
    with attach(model, mid=mid, track_size=True if mid else None) as patched:
        yield patched
