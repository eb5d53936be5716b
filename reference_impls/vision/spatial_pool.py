"""2x2 spatial pooling of patch tokens (a baseline).

No official code: a baseline written from its description, following no released
implementation.

Not a paper's method: average each 2x2 neighbourhood of the patch grid into one token, a 4x
reduction that uses no content at all; benchmarks of visual-token reduction keep finding it hard
to beat. Applied between attention and MLP of one block, on a full square patch grid. Sizes add
up (a pooled token stands for 4 patches), so later merging methods stay size-aware.

Shapes: tokens `(B, 1 + g*g, C)` with CLS first and the patches in row-major order, g even;
output `(B, 1 + (g/2)^2, C)`.
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
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="spatial_pool",
    title="2x2 average pooling of the patch grid (baseline)",
    papers=(),
    family="merging",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    blocks: tuple[int, ...] = (5,)  # pool once, after attention of block 6 (0-based 5)

    def __post_init__(self) -> None:
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"


def spatial_pool(
    x: Tensor, size: Tensor | None = None, num_prefix: int = 1
) -> tuple[Tensor, Tensor | None]:
    """Average 2x2 patch neighbourhoods; the size-weighted sum of tokens is conserved."""
    B, N, C = x.shape
    g = math.isqrt(N - num_prefix)
    if g * g != N - num_prefix or g % 2:
        raise ValueError(f"{N - num_prefix} patch tokens do not form an even square grid")
    prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
    w = size[:, num_prefix:] if size is not None else patches.new_ones(B, N - num_prefix, 1)
    grid = (patches * w).transpose(1, 2).reshape(B, C, g, g)  # (B, C, g, g)
    weights = w.transpose(1, 2).reshape(B, 1, g, g)  # (B, 1, g, g)
    summed = torch.nn.functional.avg_pool2d(grid, 2) * 4  # (B, C, g/2, g/2)
    counts = torch.nn.functional.avg_pool2d(weights, 2) * 4  # (B, 1, g/2, g/2)
    pooled = (summed / counts).flatten(2).transpose(1, 2)  # (B, g*g/4, C)
    new_size = counts.flatten(2).transpose(1, 2)  # (B, g*g/4, 1)
    out = torch.cat([prefix, pooled], dim=1)
    if size is None:
        return out, None
    return out, torch.cat([size[:, :num_prefix], new_size], dim=1)


def config_for(keep_rate: float, model_config: object) -> Config:
    """Pooling has one fixed ratio (1/4): at rate 1 no block pools, otherwise the middle one."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    return Config(blocks=() if keep_rate >= 1.0 else (depth // 2,))


class SpatialPool:
    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        return spatial_pool(state.x, state.size)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    with attach(model, mid=dict.fromkeys(config.blocks, SpatialPool())) as patched:
        yield patched
