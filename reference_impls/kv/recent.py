"""Recent-only: keep the most recent share of the prompt's KV entries (a baseline).

Not a paper's method: a sliding window over the prompt, the control that shows what attention
sinks (StreamingLLM) and importance scores add. With `sinks=0` it is plain window attention.

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
    name="recent",
    title="Recent-window KV cache (baseline)",
    papers=(),
    family="kv-eviction",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=keep))


class RecentPress(ScorerPress):
    def score(self, ctx: PressContext) -> Tensor:
        B, H, T, _ = ctx.keys.shape
        position = torch.arange(T, device=ctx.keys.device, dtype=torch.float32)  # exact to 2^24
        return position.expand(B, H, T)  # later is better


def make_press(config: Config = Config()) -> RecentPress:
    return RecentPress(config.budget)
