"""C-Abstractor, the convolutional abstractor of "Honeybee: Locality-enhanced Projector for
Multimodal LLM", arXiv 2312.06742.

Official code: kakaobrain/honeybee@68a8d843404b00be65ff16bb149f6a0107c66dff
(`honeybee/projectors/projectors.py: CAbstractor`, `ConvProjector`, `Projector`, `build_mlp`,
on timm 1.0.31's `RegStage` and `LayerNorm2d`), run in memory outside the project (timm loaded
from a scratch directory with torchvision stubbed out, einops' two `rearrange` patterns written
as reshapes) with our weights copied into it parameter by parameter: the same output token
counts and equal outputs (max abs diff 0) on 36 seeded cases (depth 0, 1 and 3; 2 seeds; B 1
and 3; input/output grids 8/4, 12/6, 6/4). The official forward adds the positional embedding
in place (`x += pos_emb`, changing the caller's tensor); ours does not. No code was taken from
it. The patch tokens (CLS dropped) get a learned positional embedding, are laid out on their
`S x S` grid, and pass through

1. `depth` ResNet bottleneck blocks (`C_vis -> D`),
2. adaptive average pooling to an `m x m` grid (the locality-preserving resampling: output cell
   `(i, j)` averages input rows `floor(i S / m) .. ceil((i + 1) S / m) - 1`, columns likewise),
3. `depth` more ResNet bottleneck blocks (`D -> D`),
4. a readout MLP with `mlp_depth` linear layers and SiLU (`D -> C_llm`).

The official blocks are timm's RegNet bottleneck (`RegStage` with LayerNorm2d and SiLU): a 1x1
conv, a depthwise 3x3 conv, squeeze-and-excitation (reduced to a quarter of the block's input
channels), a 1x1 conv, a shortcut (1x1 conv + norm when the width changes) and SiLU after the
sum; the blocks here are written to that description. Honeybee's released setting
(`c-abs.yaml`): depth 3, readout depth 2, 144 output tokens.

Locality: the convolutions and the pooling are local, but squeeze-and-excitation rescales
channels with a global average, so an output token depends weakly on every input token.

Simplified: random initial weights (timm's RegNet init and Honeybee's training are not
reproduced); no end-of-sequence tokens (`num_eos_tokens = 0`, the released setting).

Shapes: input `(B, N, C_vis)`, `N = S * S` (`S = Config.input_side` when the positional embedding
is on); feature maps `(B, C, H, W)`; output `(B, m * m, C_llm)`.

Record: `honeybee-2023` in papers/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..families import patches_of
from ..registry import ImplInfo
from .grid import grid_side, mlp, to_map, to_tokens

IMPL = ImplInfo(
    name="c_abstractor",
    title="C-Abstractor: ResNet blocks, adaptive average pooling, ResNet blocks, MLP",
    papers=("honeybee-2023",),
    family="learned-compression",
    training_free=False,
    arxiv="2312.06742",
    simplified="random initial weights; RegNet blocks rewritten from their description",
)


@dataclass(frozen=True)
class Config:
    in_dim: int = 32  # C_vis
    out_dim: int = 64  # C_llm
    hidden: int = 32  # D, the width of the convolutional stages
    depth: int = 1  # bottleneck blocks per stage (Honeybee: 3)
    mlp_depth: int = 2  # readout layers (Honeybee: 2)
    output_side: int = 12  # m: m * m output tokens (Honeybee: 12, 144 tokens)
    input_side: int = 24  # S of the learned positional embedding (LLaVA-1.5's 24 x 24 grid)
    pos_emb: bool = True

    def __post_init__(self) -> None:
        assert self.in_dim > 0 and self.out_dim > 0 and self.hidden > 0
        assert self.depth >= 0 and self.mlp_depth >= 1
        assert self.output_side >= 1 and self.input_side >= 1


def config_for(keep: float, model_config: object = None, num_patches: int = 576) -> Config:
    """`m = round(S * sqrt(keep))` (at least 1) for an `S x S` input grid."""
    num_patches = patches_of(model_config, num_patches)
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    side = grid_side(num_patches)
    return Config(output_side=max(1, round(side * math.sqrt(keep))), input_side=side)


def output_tokens(num_patches: int, config: Config) -> int:
    """M: `m * m`, whatever the input grid."""
    grid_side(num_patches)
    return config.output_side**2


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a feature map `(B, C, H, W)`."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    """Channel gates from the global average: `x * sigmoid(W2 silu(W1 mean(x)))`."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.expand(nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)  # (B, C, H, W)


class Bottleneck(nn.Module):
    """RegNet-style bottleneck: 1x1, depthwise 3x3, SE, 1x1; shortcut; SiLU after the sum."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, 1, bias=False), LayerNorm2d(out_dim), nn.SiLU()
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim, bias=False),
            LayerNorm2d(out_dim),
            nn.SiLU(),
        )
        self.se = SqueezeExcite(out_dim, max(1, round(in_dim * 0.25)))
        self.conv3 = nn.Sequential(nn.Conv2d(out_dim, out_dim, 1, bias=False), LayerNorm2d(out_dim))
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_dim == out_dim
            else nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, bias=False), LayerNorm2d(out_dim))
        )
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C_in, H, W)` -> `(B, C_out, H, W)`."""
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act(y + self.shortcut(x))


def stage(depth: int, in_dim: int, out_dim: int) -> nn.Sequential:
    """`depth` bottlenecks, the first changing the width (timm's `RegStage` with stride 1)."""
    return nn.Sequential(
        *(Bottleneck(in_dim if i == 0 else out_dim, out_dim) for i in range(depth))
    )


class CAbstractor(nn.Module):
    """Positional embedding, ResNet stage, adaptive average pooling, ResNet stage, MLP."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.pos_emb = (
            nn.Parameter(torch.randn(1, config.input_side**2, config.in_dim) * 0.02)
            if config.pos_emb
            else None
        )
        m = config.output_side
        width = config.hidden if config.depth else config.in_dim
        self.net = nn.Sequential(
            stage(config.depth, config.in_dim, config.hidden),
            nn.AdaptiveAvgPool2d((m, m)),
            stage(config.depth, config.hidden, config.hidden),
        )
        self.readout = mlp(width, config.out_dim, depth=config.mlp_depth, act=nn.SiLU)

    def forward(self, x: Tensor) -> Tensor:
        """`x (B, N, C_vis)` -> `(B, m * m, C_llm)`."""
        if self.pos_emb is not None:
            if x.shape[1] != self.pos_emb.shape[1]:
                raise ValueError(
                    f"{x.shape[1]} tokens, but the positional embedding is for "
                    f"{self.pos_emb.shape[1]} (Config.input_side = {self.config.input_side})"
                )
            x = x + self.pos_emb
        features = self.net(to_map(x))  # (B, D, m, m)
        return self.readout(to_tokens(features))  # (B, m*m, C_llm)


# The family's one name for this module's projector (`reference_impls.make_projector`).
Projector = CAbstractor
