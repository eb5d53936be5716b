"""Analytic multiply-accumulate counts for the ViT, following the actual token counts.

Per block with `n` tokens into attention, `m` into the MLP, width C and MLP ratio r:
qkv `3nC^2`, scores `n^2 C`, attention-weighted values `n^2 C`, projection `nC^2`, MLP `2 m r C^2`.
Plus the patch embedding and the head. Layer norms, softmax and the reducers' own work are not
counted (they are small; a method with a learned predictor reports its extra MACs itself).
"""

from __future__ import annotations

from collections.abc import Sequence

from .vit import ViTConfig


def block_macs(n_attn: int, n_mlp: int, width: int, mlp_ratio: float) -> int:
    c = width
    attention = 3 * n_attn * c * c + 2 * n_attn * n_attn * c + n_attn * c * c
    mlp = 2 * n_mlp * int(mlp_ratio * c) * c
    return attention + mlp


def vit_macs(config: ViTConfig, counts: Sequence[tuple[int, int]] | None = None) -> int:
    """MACs of one image through the model; `counts` per block (default: no reduction)."""
    if counts is None:
        counts = [(config.num_tokens, config.num_tokens)] * config.depth
    assert len(counts) == config.depth, "one (attention, mlp) token count per block"
    embed = config.num_patches * config.patch_size**2 * config.in_chans * config.width
    head = config.width * config.num_classes
    blocks = sum(block_macs(n, m, config.width, config.mlp_ratio) for n, m in counts)
    return embed + blocks + head


def schedule_counts(config: ViTConfig, mlp_tokens: Sequence[int]) -> list[tuple[int, int]]:
    """Per-block counts when block i's MLP sees `mlp_tokens[i]` tokens and the next block's
    attention sees what the previous MLP saw (reduction between attention and MLP)."""
    counts = []
    n = config.num_tokens
    for m in mlp_tokens:
        counts.append((n, m))
        n = m
    return counts
