"""EViT: Expediting Vision Transformers via Token Reorganizations (arXiv 2202.07800).

Record `evit-2022`. Between attention and MLP of a few blocks (4, 7 and 10 of 12, 1-based), the
patch tokens are ranked by the attention the CLS token pays them, averaged over heads; the top
`k = ceil(keep_rate * n)` are kept ("attentive"), in order of decreasing attention (the official
`topk(sorted=True)`), and with `fuse_token=True` all the others are fused into one token, their
CLS-attention-weighted sum, appended after the kept ones: a block then leaves exactly `1 + k + 1`
tokens (`1 + k` with `fuse_token=False`, where the inattentive tokens are simply dropped). At the
next reducing block the fused token is one of the `n` candidates, as in the official code.

`fuse_token` defaults to True here: it is the paper's method, and the official README evaluates
with `--fuse_token`; the official `EViT`/`Block` classes default to False (a command-line flag).

Checked against the official repository youweiliang/evit at commit
5ca95a7cf4a8637193284895c5bc0dd9dc365982, `evit.py`: `Attention.forward` (selection),
`Block.forward` (gather, `complement_idx`, fusion) with attention, norms and MLP of our own
choosing, run in memory outside the project on seeded random inputs (a fetched snapshot;
nothing copied): 60 cases (B 1-4, 5-80 tokens, keep rates 0.05-1, fuse_token on and off,
float32 and float64): the same tokens in the same order, equal to 6e-8 (float32; the fused
token's sum runs over a differently shaped tensor) and 6e-17 (float64).

Simplified: EViT is meant to be trained or fine-tuned with the reorganisation in place (with a
keep-rate warm-up); here it is applied to a given model at inference only, with no training step.
The fused token is the attention-weighted *sum* of the inattentive tokens, as in the official code
(the weights sum to less than one); `Config.normalise_fused` rescales it to a weighted average.
EViT does not use proportional attention; when the model tracks sizes anyway, the fused token's
size is the sum of the fused sizes.

Shapes: tokens `(B, N, C)`, CLS at index 0 always kept and unchanged; attention `(B, H, N, N)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .adapter import attach
from .tokens import drop_mask, keep_topk, three_stages
from .vit import TokenState, VisionTransformer, cls_attention

IMPL = ImplInfo(
    name="evit",
    title="EViT: keep the CLS-attentive tokens, fuse the rest into one",
    papers=("evit-2022",),
    family="prune-merge",
    training_free=False,
    arxiv="2202.07800",
    simplified=(
        "inference-time reorganisation only: the paper trains or fine-tunes with it (keep-rate "
        "warm-up), which is not reproduced"
    ),
)


@dataclass(frozen=True)
class Config:
    keep_rate: float = 0.7  # share of the current patch tokens kept at each chosen block
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based: blocks 4, 7, 10 of 12
    normalise_fused: bool = False  # official code: weighted sum; True: weighted average
    fuse_token: bool = True  # fuse the inattentive tokens into one (False: drop them)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three equal stages at 1/4, 1/2 and 3/4 depth leaving ~keep_rate of the patches; identity
    (no reducing block) at keep_rate >= 1."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    if keep_rate >= 1.0:
        return Config(keep_rate=1.0, blocks=())
    return Config(keep_rate=keep_rate ** (1 / 3), blocks=three_stages(depth))


def attentive_count(n: int, keep_rate: float) -> int:
    """Attentive tokens kept out of `n` patch tokens: `ceil(keep_rate * n)`, as officially."""
    return min(n, math.ceil(keep_rate * n))


def evit_reorganise(
    x: Tensor,
    cls_attn: Tensor,
    k: int,
    size: Tensor | None = None,
    normalise_fused: bool = False,
    fuse_token: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Keep CLS and the `k` patch tokens of `x (B, N, C)` with the largest `cls_attn (B, N-1)`,
    most attended first; fuse the other `N-1-k` into one token appended last (with
    `fuse_token`). Returns `(B, 1 + k + 1, C)` or `(B, 1 + k, C)` (unchanged input when
    `k == N-1`: nothing is inattentive)."""
    N = x.shape[1]
    if k == N - 1:
        return x, size
    kept_x, kept_size, kept = keep_topk(x, cls_attn, k, size, keep_order=False)  # (B, 1+k, C)
    if not fuse_token:
        return kept_x, kept_size
    dropped = drop_mask(N - 1, kept)  # (B, N-1) True for the inattentive tokens
    weights = cls_attn * dropped  # (B, N-1)
    if normalise_fused:
        weights = weights / weights.sum(dim=1, keepdim=True)
    fused = (weights.unsqueeze(-1) * x[:, 1:]).sum(dim=1, keepdim=True)  # (B, 1, C)
    out = torch.cat([kept_x, fused], dim=1)  # (B, 1+k+1, C)
    if size is None or kept_size is None:
        return out, None
    fused_size = (size[:, 1:] * dropped.unsqueeze(-1)).sum(dim=1, keepdim=True)  # (B, 1, 1)
    return out, torch.cat([kept_size, fused_size], dim=1)  # (B, 1+k+1, 1)


class EViTReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "EViT acts between attention and MLP (mid hook)"
        k = attentive_count(state.x.shape[1] - 1, self.config.keep_rate)
        c = self.config
        attn = cls_attention(state.attn)
        return evit_reorganise(state.x, attn, k, state.size, c.normalise_fused, c.fuse_token)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    with attach(model, mid=dict.fromkeys(config.blocks, EViTReducer(config))) as patched:
        yield patched
