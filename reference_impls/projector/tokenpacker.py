"""TokenPacker, "TokenPacker: Efficient Visual Projector for Multimodal LLM", arXiv 2407.02392.

Official code: CircleRadon/TokenPacker@771a16e7462c3afb908a0c429513ba43f709f2c1
(`llava/model/multimodal_projector/builder.py: TokenPacker`, with `divide_feature`), run in
memory outside the project at its hard-coded widths (1024 query/attention channels, 4 x 1024
key/value channels, 8 heads) with our weights loaded into it (`load_state_dict(strict=True)`):
the same output token counts and outputs equal to float tolerance (max abs diff 9e-8) on 16
seeded cases (2 seeds; B 1 and 2; grid/scale 24/2, 24/3, 12/4, 8/1). Fixed to match it: the
LayerNorms' eps is 1e-6 (was PyTorch's 1e-5) and the point queries are interpolated in float32
and cast back (as officially, for fp16 inputs). No code was taken from it. Coarse to fine:

1. point queries: the `S x S` feature map is bilinearly downsampled by the integer factor `s` to
   `(S/s) x (S/s)` (with an integer factor and no corner alignment, each query is an average of
   points inside its own `s x s` region; for `s = 2` exactly the region's mean), projected
   (`Linear`, no bias) and layer-normalised;
2. region keys and values: the high-resolution features, optionally several encoder levels
   concatenated along the channels (the official key/value MLPs take 4 x 1024 channels), pass
   through `Linear, GELU, Linear` and a LayerNorm each;
3. point-to-region attention: each query attends only to the `s * s` keys of its own region
   (multi-head attention with its own in/out projections); the attention output is the token;
4. an MLP `Linear, GELU, Linear` maps it to the LLM width.

Output token `i` therefore depends on the tokens of its own region only.

Simplified: TokenPacker's dynamic image slicing for high resolutions is omitted; the multi-level
features are whatever the caller passes (by default the single-level input is used for the keys
and values too); random initial weights (the official init is a truncated normal, std 0.02).

Shapes: input `(B, N, C_vis)`, `N = S * S`, `S` divisible by `s`; optional multi-level features
`(B, N, L * C_vis)`; output `(B, N / s**2, C_llm)`.

Record: `tokenpacker-2024` in papers/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..families import patches_of
from ..registry import ImplInfo
from .grid import grid_side, mlp, nearest_divisor_scale, to_map, to_tokens

IMPL = ImplInfo(
    name="tokenpacker",
    title="TokenPacker: low-resolution point queries attend to their high-resolution region",
    papers=("tokenpacker-2024",),
    family="learned-compression",
    training_free=False,
    arxiv="2407.02392",
    simplified=(
        "no dynamic image slicing; multi-level features optional (single level by default); "
        "random initial weights"
    ),
)


@dataclass(frozen=True)
class Config:
    in_dim: int = 32  # C_vis
    out_dim: int = 64  # C_llm
    width: int = 32  # D, the attention width (official: 1024)
    heads: int = 4  # official: 8
    scale: int = 2  # s: each s x s region becomes one token (official: 2)
    levels: int = 1  # encoder levels concatenated in the keys and values (official: 4 x 1024)

    def __post_init__(self) -> None:
        assert self.in_dim > 0 and self.out_dim > 0, "dimensions must be positive"
        assert self.width % self.heads == 0, "width must be divisible by heads"
        assert self.scale >= 1 and self.levels >= 1


def config_for(keep: float, model_config: object = None, num_patches: int = 576) -> Config:
    """The factor `s` dividing the grid side whose share `1 / s**2` is closest to `keep`."""
    num_patches = patches_of(model_config, num_patches)
    return Config(scale=nearest_divisor_scale(grid_side(num_patches), keep))


def output_tokens(num_patches: int, config: Config) -> int:
    """M for an input of `num_patches` tokens."""
    side = grid_side(num_patches)
    if side % config.scale:
        raise ValueError(f"grid side {side} is not divisible by scale {config.scale}")
    return (side // config.scale) ** 2


def regions(x: Tensor, scale: int) -> Tensor:
    """Group the tokens of `x (B, N, C)` by `scale x scale` region: `(B * M, scale**2, C)`, regions
    in row-major order, tokens row-major inside a region."""
    B, N, C = x.shape
    side = grid_side(N)
    g = side // scale
    x = x.reshape(B, g, scale, g, scale, C).permute(0, 1, 3, 2, 4, 5)  # (B, i, j, dy, dx, C)
    return x.reshape(B * g * g, scale * scale, C)  # (B*M, s*s, C)


class TokenPacker(nn.Module):
    """Downsampled point queries, region keys/values, point-to-region attention, MLP."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        D, kv_dim = config.width, config.in_dim * config.levels
        self.q_proj = nn.Linear(config.in_dim, D, bias=False)
        self.k_proj = mlp(kv_dim, D, depth=2, act=nn.GELU)
        self.v_proj = mlp(kv_dim, D, depth=2, act=nn.GELU)
        self.q_norm = nn.LayerNorm(D, eps=1e-6)  # the official norm layer's eps
        self.k_norm = nn.LayerNorm(D, eps=1e-6)
        self.v_norm = nn.LayerNorm(D, eps=1e-6)
        self.attn = nn.MultiheadAttention(D, config.heads, batch_first=True)
        self.mlp = mlp(D, config.out_dim, depth=2, act=nn.GELU)

    def point_queries(self, x: Tensor) -> Tensor:
        """`x (B, N, C_vis)` bilinearly downsampled by `s`: `(B, N / s**2, C_vis)`."""
        side, s = grid_side(x.shape[1]), self.config.scale
        if side % s:
            raise ValueError(f"grid side {side} is not divisible by scale {s}")
        small = F.interpolate(to_map(x.float()), size=(side // s, side // s), mode="bilinear")
        return to_tokens(small).to(x.dtype)  # (B, M, C_vis), interpolated in float32

    def forward(self, x: Tensor, multi_level: Tensor | None = None) -> Tensor:
        """`x (B, N, C_vis)`, optional `multi_level (B, N, L * C_vis)` -> `(B, M, C_llm)`."""
        kv = x if multi_level is None else multi_level
        if kv.shape[-1] != self.config.in_dim * self.config.levels:
            raise ValueError(
                f"keys/values have {kv.shape[-1]} channels, expected "
                f"{self.config.in_dim * self.config.levels} (in_dim * levels)"
            )
        B, s = x.shape[0], self.config.scale
        query = self.q_norm(self.q_proj(self.point_queries(x)))  # (B, M, D)
        M, D = query.shape[1], query.shape[2]
        key = regions(self.k_norm(self.k_proj(kv)), s)  # (B*M, s*s, D)
        value = regions(self.v_norm(self.v_proj(kv)), s)  # (B*M, s*s, D)
        out = self.attn(query.reshape(B * M, 1, D), key, value, need_weights=False)[0]
        return self.mlp(out.reshape(B, M, D))  # (B, M, C_llm)


# The family's one name for this module's projector (`reference_impls.make_projector`).
Projector = TokenPacker
