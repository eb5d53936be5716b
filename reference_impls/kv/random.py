"""Random eviction: keep a uniformly random share of the prompt's KV entries (a baseline).

Not a paper's method: the control every KV-cache eviction comparison needs. Protected tokens
(sinks, window) are kept like everywhere else, so it differs from a method only in how it picks
the rest. Seeded: the same entries on every device.

Shapes: keys and values `(B, H_kv, T, D)`; scores `(B, H_kv, T)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget, ScorerPress

IMPL = ImplInfo(
    name="random",
    title="Random KV eviction (baseline)",
    papers=(),
    family="kv-eviction",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()
    seed: int = 0


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=keep))


class RandomPress(ScorerPress):
    def __init__(self, config: Config) -> None:
        super().__init__(config.budget)
        self.generator = torch.Generator().manual_seed(config.seed)

    def score(self, ctx: PressContext) -> Tensor:
        B, H, T, _ = ctx.keys.shape
        return torch.rand(B, H, T, generator=self.generator).to(ctx.keys.device)


def make_press(config: Config = Config()) -> RandomPress:
    return RandomPress(config)
