"""Average pooling of the patch grid before the language model (a baseline).

No official code: a baseline written from its description, following no released
implementation.

Not a paper's method: the `g x g` grid of patch features of each view is average-pooled to
`s x s`, `s = max(1, round(g * sqrt(keep)))`, with PyTorch's adaptive average pooling (windows
`[floor(i g / s), ceil((i + 1) g / s))`, overlapping when `s` does not divide `g`), and the `s^2`
pooled tokens are projected. Equivalent to encoding at full resolution and downsampling the
feature map; it keeps every region and uses no content, and benchmarks find it hard to beat.

Shapes: patch features `(B, V*g*g, C_vis)` in row-major order per view; output
`(B, V*s*s, C_vis)` before the projector.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, VisualState, attach

IMPL = ImplInfo(
    name="downsample",
    title="Average pooling of the patch grid before the LLM (baseline)",
    papers=(),
    family="merging",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    keep: float = 0.25  # target share of tokens: the pooled side is round(g * sqrt(keep))

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(keep=min(1.0, keep))


def pooled_side(grid: int, keep: float) -> int:
    return max(1, min(grid, round(grid * math.sqrt(keep))))


def pool_grid(features: Tensor, views: int, grid: int, side: int) -> Tensor:
    """Pool each view's `grid x grid` patches of `features (B, V*g*g, C)` to `side x side`:
    `(B, V*side*side, C)`."""
    B, _, C = features.shape
    x = features.reshape(B * views, grid, grid, C).permute(0, 3, 1, 2)  # (B*V, C, g, g)
    pooled = F.adaptive_avg_pool2d(x, side)  # (B*V, C, s, s)
    return pooled.permute(0, 2, 3, 1).reshape(B, views * side * side, C)


class DownsampleReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        side = pooled_side(state.grid, self.config.keep)
        return state.project(pool_grid(state.features, state.views, state.grid, side))


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = DownsampleReducer(config) if config.keep < 1.0 else None
    with attach(model, visual=reducer) as patched:
        yield patched
