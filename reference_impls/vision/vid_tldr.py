"""vid-TLDR: Training Free Token merging for Light-weight Video Transformer, arXiv 2403.13347,
record `vid-tldr-2024`.

Official repository mlvlab/vid-TLDR; no code was taken from it. Between attention and MLP of the
first blocks, vid-TLDR merges `r` tokens with ToMe's bipartite matching, weighted by a saliency
score:

1. saliency from attention sharpness: each token's attention row, averaged over heads, scored by
   its negative entropy `sum_j a_ij log a_ij` (a sharp, focused row is salient);
2. background removal: the scores are min-max normalised to [0, 1] and tokens below the mean are
   background; foreground sharpening: the scores minus their mean, divided by their maximum,
   with background tokens set to 0. Salient tokens get a weight in (0, 1];
3. merging: the tokens themselves (not the keys) are the matching metric; CLS never merges; the
   `r` best-matched A tokens go into their B partner with weight `size * saliency`, the partner
   with weight `size`: `x_dst = (s_dst x_dst + sum s_i w_i x_i) / (s_dst + sum s_i w_i)`, and the
   new size is that denominator. A background source (weight 0) is dropped without a trace, so
   merging suppresses background while salient tokens are kept in the mix. The merged sequence
   has ToMe's official layout (`tome.match`): the unmerged A tokens in position order, then
   every B token; the official code lays it out so (it sorts the unmerged tokens always).

The attention used for saliency is the block's attention *without* the `log(size)` term (the
official code keeps a copy before it); `TokenState.attn` is the proportional one, so the size
term is divided out and each row renormalised, which recovers it exactly. The merged tokens
use proportional attention in later blocks, as officially.

Checked against the official code at commit a25051d4a4808ce2b480bd1a80a96f68c21aa5cb, run in
memory outside the project: `get_objective_score`, `merging` and `merge_wavg`
(multi_modality/utils/vid_TLDR.py; its call in multi_modality/models/backbones/vit/vit.py passes
the attention before the size term, `attn_`, and the post-attention tokens as the metric). On 60
seeded cases (B 1-3, N 16-197, sizes 1 or random 1-4): `saliency` equals the official score of
the patch rows (largest difference 3e-6, the official on the plain attention, ours recovering it
from the proportional one). On 240 merges (r 1, 4, N/4 and the cap) with a first token built to
stand apart (our CLS), the merged tokens and sizes equal the official ones to float tolerance
(largest difference 2.4e-7) in all 212 cases where the official code did not merge that first
token (it has no CLS to protect; the other 28 are not comparable). Per call (B 8, N 197, C 384,
r 50, CPU, the same tensors) ours takes 0.2-0.56x the official time over repeated runs.

Options with the official behaviour: `r` per block may be a fraction in (0, 1), merging
`int(N * r)` tokens (N counts CLS here).

Simplified: images, not video (the official model is UMT's video ViT over frame tubelets, with no
CLS; here CLS is protected, so at most `(N - 1) // 2` tokens merge where the official caps at
`N // 2`, and CLS is excluded from the saliency statistics). The official similarity is
`(cos + 1) / 2`, which ranks as the cosine does. `config_for` front-loads the merging as the
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

from ..families import depth_of, patches_of
from ..registry import ImplInfo
from .adapter import attach
from .tome import match
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="vid_tldr",
    title="vid-TLDR: saliency (attention sharpness) weighted ToMe merging, background dropped",
    papers=("vid-tldr-2024",),
    family="merging",
    training_free=True,
    arxiv="2403.13347",
    simplified=(
        "image ViT with CLS (protected, excluded from saliency) instead of a video ViT over "
        "tubelets"
    ),
)


@dataclass(frozen=True)
class Config:
    # Tokens merged per block, from the first block on; missing blocks merge none (as the
    # official per-block lists, which front-load the merging). As officially, a value in (0, 1)
    # is a share of the block's tokens: int(N * r).
    r: tuple[int | float, ...] = (75, 25, 12)

    def __post_init__(self) -> None:
        assert all(
            (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0.0 < v < 1.0)
            for v in self.r
        ), "r must be ints >= 0 or fractions in (0, 1)"

    def per_block(self, depth: int) -> tuple[int | float, ...]:
        if len(self.r) > depth:
            raise ValueError(f"Config.r has {len(self.r)} values for a model of depth {depth}")
        return self.r + (0,) * (depth - len(self.r))


def config_for(keep_rate: float, model_config: object, num_patches: int = 196) -> Config:
    """Merge `round(num_patches * (1 - keep_rate))` tokens as early as possible, at most half of
    the patch tokens in one block; nothing at keep_rate >= 1."""
    depth, num_patches = depth_of(model_config), patches_of(model_config, num_patches)
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


def merged_count(r: int | float, num_tokens: int) -> int:
    """Tokens to merge: `r` itself, or `int(num_tokens * r)` for a fraction (as officially)."""
    return int(num_tokens * r) if r < 1 else int(r)


def saliency_merge(
    x: Tensor, salient: Tensor, r: int, size: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Merge `r' = min(r, (N - 1) // 2)` tokens of `x (B, N, C)`, matched on `x` itself, each
    source weighted by its `salient (B, N - 1)` score. Returns `(x (B, N - r', C),
    size (B, N - r', 1))`."""
    B, N, _ = x.shape
    if size is None:
        size = x.new_ones(B, N, 1)
    merge = match(x, r)  # ToMe's matching and layout on the tokens themselves, CLS protected
    if merge is None:
        return x, size
    weight = torch.cat([salient.new_ones(B, 1), salient], dim=1)  # (B, N), CLS weight unused
    factor = torch.ones_like(weight).view(-1)  # (B * N,): 1 unless a source
    factor[merge.src_rows] = weight.view(-1)[merge.src_rows]
    return merge.weighted(x, size * factor.view(B, N, 1))


class VidTLDRReducer:
    """The reducer of one block: saliency from its attention, then saliency-weighted merging."""

    def __init__(self, r: int | float) -> None:
        self.r = r

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "vid-TLDR runs between attention and MLP (mid hook)"
        salient = saliency(state.attn, state.size)
        return saliency_merge(state.x, salient, merged_count(self.r, state.x.shape[1]), state.size)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    rs = config.per_block(len(model.blocks))
    mid = {index: VidTLDRReducer(r) for index, r in enumerate(rs) if r > 0}
    with attach(model, mid=mid, track_size=True if mid else None) as patched:
        yield patched
