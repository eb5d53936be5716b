"""LDPv2, the lightweight downsample projector of "MobileVLM V2: Faster and Stronger Baseline for
Vision Language Model", arXiv 2402.03766.

Official code: Meituan-AutoML/MobileVLM@688fdec914810485c8766da96c63d9d2ce15f750
(`mobilevlm/model/vision_projector.py: LDPNetV2Projector`, `FeatureIRLayer`, `TokenDownLayer`,
`PosInjectLayer`), run in memory outside the project with our weights loaded into it
(`load_state_dict(strict=True)`): equal outputs (max abs diff 0) and the same 144 output tokens
on 32 seeded cases (4 seeds; B 1 and 3; input grids 24, 16, 12 and 30 squared). The official
output grid is fixed at 12 x 12 (`Config.output_side`, default 12). No code was taken from it.
Three steps:

1. feature transformation: a per-token MLP `Linear(C_vis, C_llm), GELU, Linear(C_llm, C_llm)`
   (the paper's two pointwise convolutions);
2. token reduction: average pooling of the `S x S` map to `m x m` (adaptive average pooling as
   officially, to 12 x 12, i.e. 2 x 2 windows on LLaVA's 24 x 24 grid);
3. positional information: a depthwise 3x3 convolution (with bias, padding 1) added back as a
   residual, `y = DWConv(x) + x` (a positional encoding generator; the official code cites
   Meituan-AutoML/Twins for it).

Output token `(i, j)` depends only on the input tokens of the pooling windows of cells
`(i + di, j + dj)`, `di, dj` in `{-1, 0, 1}`: the projector is local.

Simplified: the projector alone with random initial weights; MobileVLM V2's training recipe is
not reproduced.

Shapes: input `(B, N, C_vis)`, `N = S * S`; map `(B, C_llm, S, S)`; output `(B, m * m, C_llm)`.

Record: `mobilevlm-v2-2024` in papers/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from ..families import patches_of
from ..registry import ImplInfo
from .grid import grid_side, mlp, to_map, to_tokens

IMPL = ImplInfo(
    name="ldp_v2",
    title="LDPv2: pointwise MLP, 2x2 average pooling, depthwise-conv positional residual",
    papers=("mobilevlm-v2-2024",),
    family="learned-compression",
    training_free=False,
    arxiv="2402.03766",
    simplified="projector only, random initial weights",
)


@dataclass(frozen=True)
class Config:
    in_dim: int = 32  # C_vis
    out_dim: int = 64  # C_llm
    output_side: int = 12  # m: the pooled grid (MobileVLM V2: 12, 144 tokens from 576)

    def __post_init__(self) -> None:
        assert self.in_dim > 0 and self.out_dim > 0, "dimensions must be positive"
        assert self.output_side >= 1, "output_side must be >= 1"


def config_for(keep: float, model_config: object = None, num_patches: int = 576) -> Config:
    """`m = round(S * sqrt(keep))` (at least 1) for an `S x S` input grid."""
    num_patches = patches_of(model_config, num_patches)
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    return Config(output_side=max(1, round(grid_side(num_patches) * math.sqrt(keep))))


def output_tokens(num_patches: int, config: Config) -> int:
    """M: `m * m`, whatever the input grid."""
    grid_side(num_patches)
    return config.output_side**2


class LDPv2(nn.Module):
    """MLP, adaptive average pooling to `m x m`, `x + DWConv3x3(x)`."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.mlp = mlp(config.in_dim, config.out_dim, depth=2, act=nn.GELU)
        self.pool = nn.AdaptiveAvgPool2d((config.output_side, config.output_side))
        C = config.out_dim
        self.peg = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """`x (B, N, C_vis)` -> `(B, m * m, C_llm)`."""
        pooled = self.pool(to_map(self.mlp(x)))  # (B, C_llm, m, m)
        return to_tokens(self.peg(pooled) + pooled)  # (B, m*m, C_llm)


# The family's one name for this module's projector (`reference_impls.make_projector`).
Projector = LDPv2
