"""Random visual-token dropping before the language model (a baseline).

No official code: a baseline written from its description, following no released
implementation.

Not a paper's method: keep `round(keep * n)` of the `n` patch tokens chosen uniformly at random
(a seeded generator, so runs repeat), in their original order, and project only those. Benchmarks
of visual-token reduction keep finding random and uniform dropping hard to beat.

Shapes: patch features `(B, n, C_vis)`; kept `(B, k)`, each image its own draw.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, VisualState, attach
from .select import gather, top_in_order

IMPL = ImplInfo(
    name="random_visual",
    title="Random visual tokens kept before the LLM (baseline)",
    papers=(),
    family="pruning",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    keep: float = 0.25  # share of the patch tokens kept
    seed: int = 0

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(keep=min(1.0, keep))


def kept_count(n: int, keep: float) -> int:
    return max(1, min(n, round(keep * n)))


def random_keep(batch: int, n: int, k: int, generator: torch.Generator) -> Tensor:
    """`k` distinct random positions of `n` per row, ascending: `(B, k)`. The draw is a random
    score per token and the `k` largest, so each k-subset is equally likely."""
    return top_in_order(torch.rand(batch, n, generator=generator), k)


class RandomReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        B, n, _ = state.features.shape
        generator = torch.Generator().manual_seed(self.config.seed)
        kept = random_keep(B, n, kept_count(n, self.config.keep), generator)
        return state.project(gather(state.features, kept.to(state.features.device)))


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = RandomReducer(config) if config.keep < 1.0 else None
    with attach(model, visual=reducer) as patched:
        yield patched
