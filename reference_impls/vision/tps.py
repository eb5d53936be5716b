"""Joint Token Pruning and Squeezing (TPS): prune by CLS attention, squeeze pruned into kept.

Paper: "Joint Token Pruning and Squeezing Towards More Aggressive Compression of Vision
Transformers" (Wei et al., CVPR 2023), arXiv 2304.10716, record `tps-2023`. Checked against the
official repository https://github.com/megvii-research/TPS-CVPR2023 (`TPSModule` in
torch_codebase/models/dynamic_vit.py, inference branch).

This is the paper's eTPS variant: between attention and MLP of the chosen blocks, the patch
tokens are ranked by the attention the CLS token pays them (averaged over heads, as EViT) and the
top `k` are reserved. Instead of being discarded, every pruned token is squeezed into its host:
the reserved token most similar to it by cosine similarity of the token features
(unidirectional nearest neighbour). A host `h` with matched pruned tokens `P(h)` becomes

    h' = (e * h + sum_{p in P(h)} exp(cos(p, h)) * p) / (e + sum_{p in P(h)} exp(cos(p, h)))

a softmax over similarities in which the host counts with its self-similarity 1 (weight `e`).
Hosts that match nothing are unchanged. CLS is kept unchanged at index 0.

Simplified: the paper fine-tunes the ViT with TPS in place (and dTPS trains a DynamicViT-style
predictor); this module has no learned parts, so it runs on any model as is. The similarity
temperature is fixed to the official default 1. Reserved tokens keep their original order (the
official code orders them by score; a ViT without later position terms is indifferent to it).
Sizes, where tracked, are summed into the host so they keep counting patches, but the fusion
weights are the paper's similarity weights, not sizes, and no proportional attention is used.

Shapes: tokens `(B, N, C)`, CLS at index 0; `scores (B, N - 1)`; output `(B, 1 + k, C)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import ImplInfo
from .adapter import attach
from .tokens import gather, kept_count, three_stages, weighted_merge
from .vit import TokenState, VisionTransformer, cls_attention

IMPL = ImplInfo(
    name="tps",
    title="Token pruning by CLS attention, pruned tokens squeezed into similar kept ones (eTPS)",
    papers=("tps-2023",),
    family="prune-merge",
    training_free=True,
    arxiv="2304.10716",
    simplified="eTPS only, without the paper's fine-tuning; temperature fixed to 1",
)


@dataclass(frozen=True)
class Config:
    keep_rate: float = 0.7  # share of the patch tokens reserved at each chosen block
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based; the paper prunes at blocks 4, 7, 10

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"


def config_for(keep_rate: float, depth: int) -> Config:
    """Three equal stages at 1/4, 1/2 and 3/4 depth leaving ~keep_rate of the patches."""
    if keep_rate >= 1.0:
        return Config(keep_rate=1.0, blocks=())
    return Config(keep_rate=keep_rate ** (1 / 3), blocks=three_stages(depth))


def tps(
    x: Tensor, scores: Tensor, k: int, size: Tensor | None = None, num_prefix: int = 1
) -> tuple[Tensor, Tensor | None]:
    """Reserve the `k` highest-scoring non-prefix tokens of `x (B, N, C)`, squeeze the rest.

    Returns `(x (B, prefix + k, C), size (B, prefix + k, 1) or None)`.
    """
    B, N, _ = x.shape
    n = N - num_prefix
    assert 0 < k <= n, f"cannot reserve {k} of {n} tokens"
    order = scores.argsort(dim=1, descending=True)  # (B, n)
    reserved = order[:, :k].sort(dim=1).values  # (B, k), original order
    pruned = order[:, k:]  # (B, n - k)
    patches = x[:, num_prefix:]  # (B, n, C)
    hosts, guests = gather(patches, reserved), gather(patches, pruned)  # (B, k, C), (B, n-k, C)
    sim = F.normalize(guests, dim=-1) @ F.normalize(hosts, dim=-1).transpose(1, 2)  # (B, n-k, k)
    best, host = sim.max(dim=-1)  # (B, n - k): each pruned token's host
    # One weighted average per host: itself with weight e, its guests with exp(similarity).
    rows = torch.cat([hosts, guests], dim=1)  # (B, n, C)
    weights = torch.cat([hosts.new_full((B, k, 1), math.e), best.exp().unsqueeze(-1)], dim=1)
    dst = torch.cat([torch.arange(k, device=x.device).expand(B, k), host], dim=1)  # (B, n)
    squeezed, _ = weighted_merge(rows, weights, dst, k)  # (B, k, C)
    out = torch.cat([x[:, :num_prefix], squeezed], dim=1)  # (B, prefix + k, C)
    if size is None:
        return out, None
    patch_size = size[:, num_prefix:]  # (B, n, 1)
    moved = torch.cat([gather(patch_size, reserved), gather(patch_size, pruned)], dim=1)
    summed = moved.new_zeros(B, k, 1).scatter_add(1, dst.unsqueeze(-1), moved)  # (B, k, 1)
    return out, torch.cat([size[:, :num_prefix], summed], dim=1)


class TokenPruneSqueeze:
    """The reducer: CLS attention of this block ranks the tokens, then `tps`."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "TPS acts between attention and MLP"
        k = kept_count(state.x.shape[1] - 1, self.config.keep_rate)
        return tps(state.x, cls_attention(state.attn), k, state.size)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    with attach(model, mid=dict.fromkeys(config.blocks, TokenPruneSqueeze(config))) as patched:
        yield patched
