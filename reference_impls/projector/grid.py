"""Shared machinery of the projectors: square patch grids, token <-> feature-map reshapes, MLPs.

Every projector takes the patch tokens of a vision encoder, `(B, N, C_vis)` with `N = S * S` on a
row-major square grid (the caller drops the CLS token, as LLaVA and InternVL do), and returns
`(B, M, C_llm)`. This module holds what they share; it implements no projector itself.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def grid_side(num_tokens: int) -> int:
    """The side `S` of a square grid of `num_tokens = S * S` tokens; ValueError otherwise."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or side == 0:
        raise ValueError(f"{num_tokens} tokens do not form a square patch grid")
    return side


def to_map(x: Tensor) -> Tensor:
    """Tokens `(B, N, C)` on a square grid -> feature map `(B, C, S, S)` (row-major)."""
    B, N, C = x.shape
    side = grid_side(N)
    return x.transpose(1, 2).reshape(B, C, side, side)  # (B, C, S, S)


def to_tokens(x: Tensor) -> Tensor:
    """Feature map `(B, C, H, W)` -> tokens `(B, H * W, C)` in row-major order."""
    return x.flatten(2).transpose(1, 2)  # (B, H*W, C)


def mlp(in_dim: int, out_dim: int, depth: int = 2, act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """`Linear(in, out)` followed by `depth - 1` times `act, Linear(out, out)` (LLaVA's mlp2x)."""
    assert depth >= 1, "an MLP has at least one layer"
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [act(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def nearest_divisor_scale(side: int, keep: float) -> int:
    """The integer downsampling factor `s` dividing `side` whose kept share `1 / s**2` is closest
    to `keep` (ties go to the larger factor): the budget rule of pixel shuffle and TokenPacker."""
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    divisors = [s for s in range(1, side + 1) if side % s == 0]
    return min(divisors, key=lambda s: (abs(1.0 / (s * s) - keep), -s))
