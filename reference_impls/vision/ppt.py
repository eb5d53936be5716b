"""PPT: Token Pruning and Pooling for Efficient Vision Transformers, arXiv 2310.01812, record
`ppt-2023`.

Official repository xjwu1024/PPT; no code was taken from it. In each chosen block (4, 7 and 10 of
12, 1-based, in the official scripts), between attention and MLP, every image chooses for itself
between two ways of removing the same number `r` of tokens (`r` capped at `(N - 1) // 2`, as in
the official code):

1. importance of patch token j: `S_j = a_j * ||v_j|| / sum_i a_i * ||v_i||`, with `a_j` the CLS
   token's attention to j over heads and `v_j` its value vector, heads concatenated (ATS's
   significance score, `ats.significance`);
2. the redundancy criterion is the variance of these scores over the image's patch tokens
   (unbiased, as `torch.var`). A flat score map (variance below `Config.threshold`) means no
   token is clearly inattentive: the image *pools*, ToMe's bipartite soft matching on the keys
   with size-weighted merging (`tome.bipartite_soft_matching`). Otherwise it *prunes*: CLS and
   the `N - 1 - r` patch tokens with the highest scores are kept, ordered by decreasing score
   as in the official code, and the rest dropped.

Both branches leave `N - r` tokens, so the batch stays rectangular. Sizes are tracked and
attention is proportional (`log(size)` added), as in the official pruning-and-pooling blocks; a
pruned token's size is simply dropped.

Values: `TokenState` carries no values, so `patch()` also attaches a pre hook to each PPT block
that recomputes the value norms of the block input from that block's own `norm1` and `attn.qkv`
(`ats.value_norms`).

Checked against the official code at commit 706bcdd475b5652ee84117a88add7a3a49c6045b, run in
memory outside the project: `PPTAttention.score_assignment_step` and `pp_block_adaptive.forward`
(ppt_deit.py, with its own merge.py's `bipartite_soft_matching` and `merge_wavg`; attention, MLP
and drop-path stubbed so that the block returns its reduced tokens). Scores equal ours to float
tolerance (relative 3e-7) on 40 seeded cases; the reduced tokens and sizes are bit-identical on
all 360 cases (B 2-5, N 16-197, r 1, 5 and 50 past the cap, sizes none or random 1-4, thresholds
giving all-prune, all-pool and 90 mixed batches): the pooled images have ToMe's official layout
(`tome.bipartite_soft_matching`), the pruned ones CLS then decreasing score. On equal scores the
order may differ (the official `torch.sort` and our `topk` leave ties unspecified). Per call
(B 16, N 197, C 384, r 50, a mixed batch, CPU) ours takes 0.14x the time of the official block
body, which splits the batch and reassembles it.

Simplified: the threshold is absolute, the official DeiT-S value `7e-5` by default, so it is
calibrated for about 196 patch tokens (the variance of normalised scores scales with `1 / n^2`);
only the off-the-shelf inference mode is reproduced, not fine-tuning with PPT.

Shapes: tokens `(B, N, C)`, CLS at index 0 always kept and unchanged; keys `(B, N, D)`; scores
`(B, N - 1)`; size `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of, patches_of
from ..registry import ImplInfo
from .adapter import attach
from .ats import significance, value_norms
from .tokens import keep_topk, three_stages
from .tome import bipartite_soft_matching
from .vit import Block, TokenState, VisionTransformer, cls_attention

IMPL = ImplInfo(
    name="ppt",
    title="PPT: per image, prune by CLS significance or pool ToMe-style, by score variance",
    papers=("ppt-2023",),
    family="prune-merge",
    training_free=True,
    arxiv="2310.01812",
    simplified=(
        "absolute variance threshold tuned for DeiT-S (7e-5); inference only, no fine-tuning"
    ),
)


@dataclass(frozen=True)
class Config:
    r: int = 50  # tokens removed in each chosen block (official DeiT-S setting)
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based: blocks 4, 7, 10 of 12
    threshold: float = 7e-5  # score variance below it: pool; at or above: prune

    def __post_init__(self) -> None:
        assert isinstance(self.r, int) and self.r >= 0, "r must be an int >= 0"
        assert self.threshold >= 0.0, "threshold must be >= 0"
        assert all(b >= 0 for b in self.blocks), "block indices must be >= 0"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"


def config_for(keep_rate: float, model_config: object, num_patches: int = 196) -> Config:
    """Three blocks at 1/4, 1/2 and 3/4 depth, each removing the same `r`, leaving about
    `keep_rate` of `num_patches`; no PPT block at keep_rate >= 1."""
    depth, num_patches = depth_of(model_config), patches_of(model_config, num_patches)
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    if keep_rate >= 1.0:
        return Config(r=0, blocks=())
    blocks = three_stages(depth)
    return Config(r=max(1, round(num_patches * (1.0 - keep_rate) / len(blocks))), blocks=blocks)


def prune_or_pool(
    x: Tensor,
    scores: Tensor,
    metric: Tensor,
    r: int,
    threshold: float,
    size: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One PPT step on `x (B, N, C)`: images whose `scores (B, N - 1)` have a variance below
    `threshold` pool `r` tokens by ToMe matching on `metric (B, N, D)`; the others prune their
    `r` least significant patch tokens. Returns `(x (B, N - r', C), size (B, N - r', 1),
    pooled (B,))` with `r' = min(r, (N - 1) // 2)` and `pooled` True where the image pooled."""
    B, N, _ = x.shape
    if size is None:
        size = x.new_ones(B, N, 1)
    pooled = scores.var(dim=1) < threshold  # (B,)
    r = min(r, (N - 1) // 2)
    if r <= 0:
        return x, size, pooled
    if bool(pooled.all()):
        out, out_size = bipartite_soft_matching(x, metric, r, size)
        return out, out_size, pooled
    kept_x, kept_size, _ = keep_topk(x, scores, N - 1 - r, size, keep_order=False)
    assert kept_size is not None
    if not bool(pooled.any()):
        return kept_x, kept_size, pooled
    pool_x, pool_size = bipartite_soft_matching(x, metric, r, size)
    choose = pooled.view(B, 1, 1)
    return torch.where(choose, pool_x, kept_x), torch.where(choose, pool_size, kept_size), pooled


class PPTReducer:
    """The pre hook of a PPT block records the value norms of its input (from that block's own
    weights); the mid hook, between attention and MLP, prunes or pools."""

    def __init__(self, model: VisionTransformer, config: Config) -> None:
        self.model = model
        self.config = config
        self.v_norm: Tensor | None = None  # (B, N), set by the pre hook of the current block

    def record_values(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        block = self.model.blocks[state.index]
        assert isinstance(block, Block)
        self.v_norm = value_norms(block, state.x)
        return state.x, state.size

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None and state.keys is not None and self.v_norm is not None, (
            "PPT needs both of its hooks"
        )
        v_norm, self.v_norm = self.v_norm, None
        scores = significance(cls_attention(state.attn), v_norm[:, 1:])  # (B, N - 1)
        x, size, _ = prune_or_pool(
            state.x, scores, state.keys, self.config.r, self.config.threshold, state.size
        )
        return x, size


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    blocks = config.blocks if config.r > 0 else ()
    reducer = PPTReducer(model, config)
    with attach(
        model,
        mid=dict.fromkeys(blocks, reducer),
        pre=dict.fromkeys(blocks, reducer.record_values),
        track_size=True if blocks else None,
    ) as patched:
        yield patched
