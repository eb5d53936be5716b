"""vid-TLDR: Training Free Token merging for Light-weight Video Transformer, arXiv 2403.13347,
record `vid-tldr-2024`.

Checked against the official repository mlvlab/vid-TLDR (`multi_modality/utils/vid_TLDR.py`
and its use in `multi_modality/models/backbones/vit/vit.py`); no code was taken from it. Between
attention and MLP of the first blocks, vid-TLDR merges `r` tokens with ToMe's bipartite matching,
weighted by a saliency score:

1. saliency from attention sharpness: each token's attention row, averaged over heads, scored by
   its negative entropy `sum_j a_ij log a_ij` (a sharp, focused row is salient);
2. background removal: the scores are min-max normalised to [0, 1] and tokens below the mean are
   background; foreground sharpening: the scores minus their mean, divided by their maximum,
   with background tokens set to 0. Salient tokens get a weight in (0, 1];
3. merging: the tokens themselves (not the keys) are the matching metric; CLS never merges; the
   `r` best-matched A tokens go into their B partner with weight `size * saliency`, the partner
   with weight `size`: `x_dst = (s_dst x_dst + sum s_i w_i x_i) / (s_dst + sum s_i w_i)`, and the
   new size is that denominator. A background source (weight 0) is dropped without a trace, so
   merging suppresses background while salient tokens are kept in the mix.

The attention used for saliency is the block's attention *without* the `log(size)` term (the
official code keeps a copy before it); `TokenState.attn` is the proportional one, so the size
term is divided out and each row renormalised, which recovers it exactly. The merged tokens
use proportional attention in later blocks, as officially.

Simplified: images, not video (the official model is UMT's video ViT over frame tubelets, with no
CLS; here CLS is protected and excluded from the saliency statistics); survivors keep their
original order (ToMe puts the unmatched A tokens first); `r` per block is an int (the official
code also accepts a fraction of the tokens). `config_for` front-loads the merging as the
official schedules do (e.g. `[600, 200, 100, 0, ...]` of 1568 tokens).

Shapes: tokens `(B, N, C)`, CLS at index 0; attention `(B, H, N, N)`; saliency `(B, N - 1)`;
size `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ImplInfo
from .adapter import attach
from .tofu import bipartite_match, survivor_slots
from .tokens import weighted_merge
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="vid_tldr",
    title="vid-TLDR: saliency (attention sharpness) weighted ToMe merging, background dropped",
    papers=("vid-tldr-2024",),
    family="merging",
    training_free=True,
    arxiv="2403.13347",
    simplified=(
        "image ViT with CLS instead of a video ViT over tubelets; survivors keep their order; "
        "integer r per block only"
    ),
)


@dataclass(frozen=True)
class Config:
    # Tokens merged per block, from the first block on; missing blocks merge none (as the
    # official per-block lists, which front-load the merging).
    r: tuple[int, ...] = (75, 25, 12)

    def __post_init__(self) -> None:
        assert all(isinstance(v, int) and v >= 0 for v in self.r), "r must be ints >= 0"

    def per_block(self, depth: int) -> tuple[int, ...]:
        if len(self.r) > depth:
            raise ValueError(f"Config.r has {len(self.r)} values for a model of depth {depth}")
        return self.r + (0,) * (depth - len(self.r))


def config_for(keep_rate: float, depth: int, num_patches: int = 196) -> Config:
    """Merge `round(num_patches * (1 - keep_rate))` tokens as early as possible, at most half of
    the patch tokens in one block; nothing at keep_rate >= 1."""
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    remaining = round(num_patches * (1.0 - keep_rate)) if keep_rate < 1.0 else 0
    n, rs = num_patches, []
    for _ in range(depth):
        r = min(remaining, n // 2)
        rs.append(r)
        remaining, n = remaining - r, n - r
    while rs and rs[-1] == 0:
        rs.pop()
    return Config(r=tuple(rs))


def saliency(attn: Tensor, size: Tensor | None = None) -> Tensor:
    """Saliency of the patch tokens from `attn (B, H, N, N)`: `(B, N - 1)`, 0 for background and
    in (0, 1] for foreground. With `size (B, N, 1)`, `attn` is taken to include proportional
    attention's `log(size)` term, which is divided out first."""
    if size is not None:
        attn = attn / size[:, None, None, :, 0]  # undo softmax(scores + log size)
        attn = attn / attn.sum(dim=-1, keepdim=True)
    mean = attn.mean(dim=1)[:, 1:]  # (B, N - 1, N) rows of the patch tokens
    score = torch.special.xlogy(mean, mean).sum(dim=-1)  # (B, N - 1) negative entropy
    tiny = torch.finfo(score.dtype).tiny
    score = score - score.amin(dim=1, keepdim=True)
    score = score / score.amax(dim=1, keepdim=True).clamp_min(tiny)
    background = score < score.mean(dim=1, keepdim=True)
    score = score - score.mean(dim=1, keepdim=True)
    score = score / score.amax(dim=1, keepdim=True).clamp_min(tiny)
    return score.masked_fill(background, 0.0)


def saliency_merge(
    x: Tensor, salient: Tensor, r: int, size: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Merge `r' = min(r, (N - 1) // 2)` tokens of `x (B, N, C)`, matched on `x` itself, each
    source weighted by its `salient (B, N - 1)` score. Returns `(x (B, N - r', C),
    size (B, N - r', 1))`."""
    B, N, _ = x.shape
    if size is None:
        size = x.new_ones(B, N, 1)
    r = min(r, (N - 1) // 2)
    if r <= 0:
        return x, size
    src, dst = bipartite_match(x, r)  # (B, r) each
    weight = torch.cat([salient.new_ones(B, 1), salient], dim=1)  # (B, N), CLS weight unused
    factor = torch.ones_like(weight).scatter(1, src, weight.gather(1, src))  # 1 unless a source
    return weighted_merge(x, size * factor.unsqueeze(-1), survivor_slots(N, src, dst), N - r)


class VidTLDRReducer:
    """The reducer of one block: saliency from its attention, then saliency-weighted merging."""

    def __init__(self, r: int) -> None:
        self.r = r

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "vid-TLDR runs between attention and MLP (mid hook)"
        salient = saliency(state.attn, state.size)
        return saliency_merge(state.x, salient, self.r, state.size)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    rs = config.per_block(len(model.blocks))
    mid = {index: VidTLDRReducer(r) for index, r in enumerate(rs) if r > 0}
    with attach(model, mid=mid, track_size=True if mid else None) as patched:
        yield patched
