"""Joint Token Pruning and Squeezing (TPS): prune by CLS attention, squeeze pruned into kept.

Paper: "Joint Token Pruning and Squeezing Towards More Aggressive Compression of Vision
Transformers" (Wei et al., CVPR 2023), arXiv 2304.10716, record `tps-2023`.

This is the paper's eTPS variant: between attention and MLP of the chosen blocks, the patch
tokens are ranked by the attention the CLS token pays them (averaged over heads, as EViT) and the
top `k` are reserved. Instead of being discarded, every pruned token is squeezed into its host:
the reserved token most similar to it (unidirectional nearest neighbour), by the cosine
similarity of the token features computed as the official code does, `x / (||x|| + 1e-6)`, and
divided by `temperature`. A host `h` with matched pruned tokens `P(h)` becomes

    h' = (e * h + sum_{p in P(h)} exp(s(p, h)) * p) / (e + sum_{p in P(h)} exp(s(p, h)))

a softmax over similarities in which the host counts with weight `e` (fixed, whatever the
temperature, as in the official code). A pruned token whose best similarity is shared by several
reserved tokens is squeezed into each of them (the official mask `sim == max`). Hosts that match
nothing are unchanged. CLS is kept unchanged at index 0.

As in the official code, the reserved tokens come in order of decreasing score (`argsort`,
descending), and stage `p` (0-based) of the chosen blocks keeps `int(n0 * keep_rate ** (p + 1))`
of the model's `n0` patch tokens (at least one).

Checked against the official repository megvii-research/TPS-CVPR2023 at commit
4ff58efc39ba003a7f769375176d1d8ed8de0b4e: `TPSModule.forward` (eval branch) and `get_sim` in
torch_codebase/models/dynamic_vit.py, with the selection of `DynamicVit.forward_features` (eval:
`argsort` descending, first `num_keep_node` reserved), run in memory outside the project on
seeded random inputs: 60 cases (B 1-4, 5-60 patch tokens, k from 1 to all, temperature 0.1-2,
float32 and float64, a third with duplicated tokens) and 20 cases built so that pruned tokens
have tied best hosts (108 such tokens) are bit-identical.

Simplified: the official code is dTPS (a DynamicViT predictor scores the tokens, fine-tuned) and
has no eTPS model; the paper's eTPS scores by CLS attention as EViT, which is what this does,
without fine-tuning, so it runs on any model as is. Sizes, where tracked, are summed into the
host so they keep counting patches (a token squeezed into several tied hosts is shared equally
among them), but the fusion weights are the paper's similarity weights, not sizes, and no
proportional attention is used.

Shapes: tokens `(B, N, C)`, CLS at index 0; `scores (B, N - 1)`; output `(B, 1 + k, C)`.
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
from .tokens import gather, kept_count, three_stages
from .vit import TokenState, VisionTransformer, cls_attention

IMPL = ImplInfo(
    name="tps",
    title="Token pruning by CLS attention, pruned tokens squeezed into similar kept ones (eTPS)",
    papers=("tps-2023",),
    family="prune-merge",
    training_free=True,
    arxiv="2304.10716",
    simplified="eTPS (CLS-attention scores, as EViT) without the paper's fine-tuning",
)


@dataclass(frozen=True)
class Config:
    keep_rate: float = 0.7  # share of the patch tokens reserved at each chosen block
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based; the paper prunes at blocks 4, 7, 10
    temperature: float = 1.0  # divides the cosine similarities (official TPSModule default 1)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"
        assert self.temperature > 0.0, "temperature must be positive"

    def kept(self, num_patches: int, stage: int) -> int:
        """Patch tokens reserved at `stage` (0-based) of a model with `num_patches`."""
        return max(1, int(num_patches * self.keep_rate ** (stage + 1)))


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three equal stages at 1/4, 1/2 and 3/4 depth leaving ~keep_rate of the patches."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    if keep_rate >= 1.0:
        return Config(keep_rate=1.0, blocks=())
    return Config(keep_rate=keep_rate ** (1 / 3), blocks=three_stages(depth))


def unit(x: Tensor, eps: float = 1e-6) -> Tensor:
    """`x / (||x|| + eps)` along the last dimension, the official code's normalisation."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def squeeze(hosts: Tensor, guests: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Squeeze every guest `(B, G, C)` into its most similar host `(B, K, C)`.

    Returns `(hosts' (B, K, C), match (B, G, K))`, `match` 1 where a guest goes to a host (a
    guest with tied best hosts goes to each of them).
    """
    sim = unit(guests) @ unit(hosts).transpose(1, 2) / temperature  # (B, G, K)
    best = sim.amax(dim=-1, keepdim=True)  # (B, G, 1)
    match = (sim == best).to(hosts.dtype)  # (B, G, K)
    weight = (match * best.exp()).transpose(1, 2)  # (B, K, G) exp(similarity) to its hosts
    total = math.e + weight.sum(dim=-1, keepdim=True)  # (B, K, 1)
    return hosts * (math.e / total) + (weight / total) @ guests, match


def tps(
    x: Tensor,
    scores: Tensor,
    k: int,
    size: Tensor | None = None,
    num_prefix: int = 1,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Reserve the `k` highest-scoring non-prefix tokens of `x (B, N, C)`, squeeze the rest.

    Returns `(x (B, prefix + k, C), size (B, prefix + k, 1) or None)`, the reserved tokens in
    order of decreasing score.
    """
    N = x.shape[1]
    n = N - num_prefix
    assert 0 < k <= n, f"cannot reserve {k} of {n} tokens"
    order = scores.argsort(dim=1, descending=True)  # (B, n)
    reserved, pruned = order[:, :k], order[:, k:]  # (B, k), (B, n - k)
    patches = x[:, num_prefix:]  # (B, n, C)
    squeezed, match = squeeze(gather(patches, reserved), gather(patches, pruned), temperature)
    out = torch.cat([x[:, :num_prefix], squeezed], dim=1)  # (B, prefix + k, C)
    if size is None:
        return out, None
    patch_size = size[:, num_prefix:]  # (B, n, 1)
    share = match / match.sum(dim=-1, keepdim=True)  # (B, n - k, k) a guest split among ties
    summed = gather(patch_size, reserved) + share.transpose(1, 2) @ gather(patch_size, pruned)
    return out, torch.cat([size[:, :num_prefix], summed], dim=1)


class TokenPruneSqueeze:
    """The reducer: CLS attention of this block ranks the tokens, then `tps` keeps `k`."""

    def __init__(self, config: Config, k: int | None = None) -> None:
        self.config, self.k = config, k

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "TPS acts between attention and MLP"
        n = state.x.shape[1] - 1
        k = min(n, self.k) if self.k is not None else kept_count(n, self.config.keep_rate)
        return tps(state.x, cls_attention(state.attn), k, state.size, 1, self.config.temperature)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    n0 = model.config.num_patches
    mid = {
        block: TokenPruneSqueeze(config, config.kept(n0, stage))
        for stage, block in enumerate(sorted(config.blocks))
    }
    with attach(model, mid=mid) as patched:
        yield patched
