"""Token Merging: Your ViT But Faster (ToMe), arXiv 2210.09461, record `tome-2023`.

Checked against the official repository facebookresearch/ToMe (tome/merge.py, tome/patch/timm.py);
no code was taken from it (CC-BY-NC): this is written from the paper.

In every block, between attention and MLP, ToMe merges `r` pairs of similar tokens:

1. the metric is the attention keys averaged over heads, `(B, N, D)`, cosine-normalised;
2. tokens alternate into set A (even positions, CLS included) and set B (odd positions);
3. each A token finds its most similar B token; CLS gets no edge, so it is never merged;
4. the `r` A tokens with the most similar match are merged into their B token by a
   size-weighted average (`size` counts the patches a token stands for); several A tokens may
   land on the same B token;
5. attention in later blocks adds `log(size)` to its scores (proportional attention).

`r` is per block: a constant, ToMe's linearly decreasing schedule (2r at the first block down to
0 at the last, about the same total), or any tuple. At most half of the non-CLS tokens can merge
in one block, so `r` is capped at `(N - 1) // 2` as in ToMe.

Simplified: the merged tokens keep the original order of the survivors (ToMe puts the unmerged A
tokens before B; attention does not care about order); no source tracking (`unmerge`), no
distillation token, and no option to switch proportional attention off.

Shapes: tokens `(B, N, C)`, CLS at index 0; keys `(B, N, D)`; size `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ImplInfo
from .adapter import attach
from .tokens import weighted_merge
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="tome",
    title="ToMe: bipartite soft matching on keys, size-weighted merging",
    papers=("tome-2023",),
    family="merging",
    training_free=True,
    arxiv="2210.09461",
    simplified=(
        "survivors keep their original order; no unmerge/source tracking, no distillation "
        "token; proportional attention always on"
    ),
)

SCHEDULES = ("constant", "decreasing")


@dataclass(frozen=True)
class Config:
    r: int | tuple[int, ...] = 13  # tokens merged per block: one value, or one per block
    schedule: str = "constant"  # for an int r: "constant", or "decreasing" (2r down to 0)

    def __post_init__(self) -> None:
        values = self.r if isinstance(self.r, tuple) else (self.r,)
        assert all(isinstance(v, int) and v >= 0 for v in values), "r must be ints >= 0"
        assert self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"
        assert isinstance(self.r, int) or self.schedule == "constant", (
            "a schedule applies to an int r only; a tuple r is already per block"
        )

    def per_block(self, depth: int) -> tuple[int, ...]:
        """The `r` of each of `depth` blocks."""
        if isinstance(self.r, tuple):
            if len(self.r) != depth:
                raise ValueError(f"Config.r has {len(self.r)} values for a model of depth {depth}")
            return self.r
        if self.schedule == "constant" or depth == 1:
            return (self.r,) * depth
        # Linear from 2r at the first block to 0 at the last, truncated to ints.
        return tuple(int(2 * self.r * (1 - i / (depth - 1))) for i in range(depth))


def config_for(keep_rate: float, depth: int, num_patches: int = 196) -> Config:
    """A constant `r` that leaves about `keep_rate` of `num_patches` patch tokens after the last
    block (ToMe's r is an absolute count, so it needs the patch count: DeiT at 224px by default).
    """
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    if keep_rate >= 1.0:
        return Config(r=0)
    return Config(r=max(1, round(num_patches * (1.0 - keep_rate) / depth)))


def merge_pairs(x: Tensor, size: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Merge the tokens at `src (B, r)` into those at `dst (B, r)` (positions in `x (B, N, C)`).

    No position may be both a source and a destination. The survivors (all tokens but the
    sources) keep their order; each becomes the size-weighted average of itself and the sources
    merged into it. Returns `(x (B, N - r, C), size (B, N - r, 1))`; `sum(size * x)` is conserved.
    """
    B, N, _ = x.shape
    target = torch.arange(N, device=x.device).expand(B, N).scatter(1, src, dst)  # (B, N)
    survives = torch.ones(B, N, dtype=torch.bool, device=x.device).scatter(1, src, False)
    slot = survives.long().cumsum(dim=1) - 1  # (B, N) output slot of each survivor
    return weighted_merge(x, size, slot.gather(1, target), N - src.shape[1])


def bipartite_soft_matching(
    x: Tensor, metric: Tensor, r: int, size: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """ToMe's merge step on `x (B, N, C)` with `metric (B, N, D)`; CLS at index 0 is protected.

    Returns `(x (B, N - r', C), size (B, N - r', 1))` with `r' = min(r, (N - 1) // 2)`.
    """
    B, N, _ = x.shape
    if size is None:
        size = x.new_ones(B, N, 1)
    r = min(r, (N - 1) // 2)
    if r <= 0:
        return x, size
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]  # (B, ceil(N/2), D), (B, floor(N/2), D)
    scores = a @ b.transpose(-1, -2)  # (B, Na, Nb)
    scores[:, 0, :] = -torch.inf  # CLS has no edge
    best, match = scores.max(dim=-1)  # (B, Na)
    merged = best.argsort(dim=-1, descending=True)[:, :r]  # (B, r) positions in A
    src = 2 * merged  # (B, r) positions in x
    dst = 2 * match.gather(1, merged) + 1  # (B, r)
    return merge_pairs(x, size, src, dst)


class ToMe:
    """The reducer for one block: merges `r` tokens with the block's keys as metric."""

    def __init__(self, r: int) -> None:
        self.r = r

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.keys is not None, "ToMe runs between attention and MLP (mid hook)"
        return bipartite_soft_matching(state.x, state.keys, self.r, state.size)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    rs = config.per_block(len(model.blocks))
    mid = {index: ToMe(r) for index, r in enumerate(rs) if r > 0}
    with attach(model, mid=mid, track_size=True if mid else None) as patched:
        yield patched
