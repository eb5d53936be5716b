"""Pixel shuffle (space-to-depth) projector, as in InternVL 1.5 / 2: "How Far Are We to GPT-4V?
Closing the Gap to Commercial Multimodal Models with Open-Source Suites", arXiv 2404.16821.

Official code: OpenGVLab/InternVL@2410d1dbf208f0e799459aff9376e5747dbf41a2
(`internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py:
InternVLChatModel.pixel_shuffle` and `mlp1`, as `extract_feature` chains them), run in memory
outside the project with our weights loaded into `mlp1` (`load_state_dict(strict=True)`): the
same output token counts and equal outputs (max abs diff 0) on 48 seeded cases (2 seeds; B 1 and
3; grids 8, 16 and 32 squared; scale 2 and 4, i.e. `downsample_ratio` 0.5 and 0.25), with
`ps_version` "v2" and "v1" (24 each). Option (official name): `ps_version`, "v2" by default (the
released InternVL2 checkpoints; the configuration class's own default is "v1", whose blocks come
out transposed, column-major, as its warning says). No code was taken from it.

The ViT's patch tokens (CLS dropped) are laid out on their `S x S` grid; every `s x s` block of
neighbouring tokens is folded into one token whose channels are the block's `s * s` feature vectors
concatenated in row-major order inside the block (`(dy, dx) = (0, 0), (0, 1), (1, 0), (1, 1)` for
`s = 2`, the order the official view/permute sequence produces). An MLP
(`LayerNorm(s*s*C_vis)`, `Linear`, `GELU`, `Linear`) maps the folded tokens to the LLM width.
InternVL uses `s = 2` (downsample ratio 0.5): 1024 tokens of a 448 px tile become 256.

Output token `i` depends on its own `s x s` block only (the MLP acts per token).

Simplified: the ViT, dynamic high-resolution tiling and the thumbnail tile are not part of this
module; it is the projector alone, with random initial weights.

Shapes: input `(B, N, C_vis)`, `N = S * S`, `S` divisible by `s`; output `(B, N / s**2, C_llm)`.

Record: `internvl-1-5-2024` in papers/.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..families import patches_of
from ..registry import ImplInfo
from .grid import grid_side, mlp, nearest_divisor_scale

IMPL = ImplInfo(
    name="pixel_shuffle",
    title="Pixel shuffle: fold each s x s block of patch tokens into one token, then an MLP",
    papers=("internvl-1-5-2024",),
    family="learned-compression",
    training_free=False,
    arxiv="2404.16821",
    simplified="projector only (no ViT, no dynamic tiling); random initial weights",
)


@dataclass(frozen=True)
class Config:
    in_dim: int = 32  # C_vis
    out_dim: int = 64  # C_llm
    scale: int = 2  # s: each s x s block becomes one token (InternVL: 2)
    ps_version: str = "v2"  # official: "v2" row-major blocks; "v1" transposed (column-major)

    def __post_init__(self) -> None:
        assert self.in_dim > 0 and self.out_dim > 0, "dimensions must be positive"
        assert self.scale >= 1, "scale must be >= 1"
        assert self.ps_version in ("v1", "v2"), "ps_version must be 'v1' or 'v2'"


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


def space_to_depth(x: Tensor, scale: int) -> Tensor:
    """Fold every `scale x scale` block of the square grid of `x (B, N, C)` into one token.

    Returns `(B, N / scale**2, scale**2 * C)`; output tokens in row-major block order, channels
    `[(dy * scale + dx) * C + c]` for the token at `(scale * i + dy, scale * j + dx)`.
    """
    B, N, C = x.shape
    side = grid_side(N)
    if side % scale:
        raise ValueError(f"grid side {side} is not divisible by scale {scale}")
    g = side // scale
    x = x.reshape(B, g, scale, g, scale, C)  # (B, i, dy, j, dx, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, i, j, dy, dx, C)
    return x.reshape(B, g * g, scale * scale * C)  # (B, M, s*s*C)


class PixelShuffleProjector(nn.Module):
    """Space-to-depth then `LayerNorm, Linear, GELU, Linear` (InternVL's `mlp1`)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        folded = config.scale**2 * config.in_dim
        self.norm = nn.LayerNorm(folded)
        self.mlp = mlp(folded, config.out_dim, depth=2, act=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        """`x (B, N, C_vis)` -> `(B, N / s**2, C_llm)`."""
        folded = space_to_depth(x, self.config.scale)  # (B, M, s*s*C_vis)
        if self.config.ps_version == "v1":  # the blocks in column-major order
            B, M, D = folded.shape
            g = grid_side(M)
            folded = folded.view(B, g, g, D).transpose(1, 2).reshape(B, M, D)
        return self.mlp(self.norm(folded))


# The family's one name for this module's projector (`reference_impls.make_projector`).
Projector = PixelShuffleProjector
