"""Random token drop: keep a uniformly random subset of patch tokens (a baseline).

No official code: a baseline written from its description, following no released
implementation.

Not a paper's method: the control that every pruning comparison needs (a method that cannot beat
random selection at the same budget has learned nothing about importance). Applied between
attention and MLP of the chosen blocks, like EViT, so budgets are comparable.

Shapes: tokens `(B, N, C)`, CLS at index 0 always kept; the same number of tokens is kept in
every image of the batch, a different random subset per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .adapter import attach
from .tokens import keep_topk, kept_count, three_stages
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="random_drop",
    title="Random token drop (baseline)",
    papers=(),
    family="pruning",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    keep_rate: float = 0.7  # share of the patch tokens kept at each chosen block
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based block indices
    seed: int = 0

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three equal pruning stages at 1/4, 1/2 and 3/4 depth leaving ~keep_rate of the patches."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    return Config(keep_rate=keep_rate ** (1 / 3), blocks=three_stages(depth))


def random_drop(
    x: Tensor,
    k: int,
    size: Tensor | None = None,
    generator: torch.Generator | None = None,
    num_prefix: int = 1,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Keep the prefix and `k` random other tokens of `x (B, N, C)`.

    Returns `(x (B, prefix + k, C), size or None, kept (B, k))`, kept in original order.
    """
    B, N, _ = x.shape
    # Drawn on the CPU from a seeded generator: the same subset on every device.
    scores = torch.rand(B, N - num_prefix, generator=generator).to(x.device)
    return keep_topk(x, scores, k, size, num_prefix)


class RandomDrop:
    """The reducer: one generator per patched model, so a run is reproducible from its seed."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        k = kept_count(state.x.shape[1] - 1, self.config.keep_rate)
        x, size, _ = random_drop(state.x, k, state.size, self.generator)
        return x, size


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    reducer = RandomDrop(config)
    with attach(model, mid=dict.fromkeys(config.blocks, reducer)) as patched:
        yield patched
