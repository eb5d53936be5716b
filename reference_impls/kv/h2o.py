"""H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models,
arXiv 2306.14048, record `h2o-2023`.

Checked against the official repository FMInference/H2O (h2o_hf/utils_real_drop/modify_llama.py,
`H2OKVCache_LayerWise`, the variant that really drops entries); no code was taken from it.

A few tokens collect most of the attention ("heavy hitters"); their accumulated attention score
predicts that they will keep being attended. H2O keeps a fixed budget of entries per head: the
most recent tokens plus the heavy hitters among the older ones, the budget split in two (the
paper's default: equal halves).

1. Prefill: each KV entry's score is the attention it received from every prompt query (the
   column sums of the causal attention matrix), averaged over the query heads that share its KV
   head. With `n = Budget.tokens(T)` kept entries, the last `recent = n - floor(heavy * n)` are
   kept as the recent window and the `n - recent` best-scored older ones as heavy hitters.
2. Decode: the press keeps, per layer, the accumulated score of every cached entry, aligned with
   the cache (gathered on every eviction). Each step adds the new query's attention to the
   scores; when the cache exceeds `n`, the lowest-scored entry outside the recent window is
   evicted, so every step ends with exactly `n` entries (the paper's greedy one-in, one-out
   policy).

Each KV head chooses its own entries. At `keep >= 1` nothing is evicted, neither at prefill nor
later. `Budget.sinks` and `Budget.window` protect more tokens if asked (H2O itself uses none
besides the recent window, which is the larger of `Budget.window` and the recent share).

Simplified: grouped-query attention: scores are averaged over the query heads of a KV head (the
paper's models have one KV head per query head). The budget is a share of the prompt, fixed at
prefill (the paper states budgets as a share of the sequence length).

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; scores `(B, H_kv, T)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget, kv_head_scores, protect

IMPL = ImplInfo(
    name="h2o",
    title="H2O: heavy hitters by accumulated attention plus a recent window",
    papers=("h2o-2023",),
    family="kv-eviction",
    training_free=True,
    arxiv="2306.14048",
    simplified=(
        "scores averaged over the query heads of each KV head (GQA); the budget is a share of "
        "the prompt, fixed at prefill"
    ),
)


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()
    heavy: float = 0.5  # share of the budget given to heavy hitters; the rest is the recent window

    def __post_init__(self) -> None:
        assert 0.0 <= self.heavy <= 1.0, "heavy must be in [0, 1]"


def config_for(keep: float) -> Config:
    return Config(Budget(keep=min(keep, 1.0)))


def accumulated_attention(attn: Tensor, kv_heads: int) -> Tensor:
    """Attention `(B, H, T_q, T)` summed over the queries and averaged over the query heads of
    each KV head: `(B, H_kv, T)`."""
    return kv_head_scores(attn.sum(dim=2), attn.shape[1], kv_heads)


def recent_count(n: int, heavy: float, budget: Budget) -> int:
    """Entries of a budget of `n` kept as the recent window (never crowding out the sinks)."""
    recent = max(budget.window, n - math.floor(heavy * n))
    return min(recent, n - min(budget.sinks, n))


def heavy_hitter_index(scores: Tensor, n: int, recent: int, sinks: int) -> Tensor:
    """Per KV head, the `n` entries kept: the first `sinks`, the last `recent`, and the best-scored
    others; `(B, H_kv, n)` in original order."""
    protected = protect(scores, sinks, recent)
    return protected.topk(n, dim=-1).indices.sort(dim=-1).values


class H2OPress:
    """Keeps accumulated scores per layer; evicts at prefill and on every decode step."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # per layer: (budget n, recent window, accumulated scores (B, H_kv, T) aligned with the
        # cache); None when nothing is ever evicted
        self.state: dict[int, tuple[int, int, Tensor] | None] = {}

    def _evict(
        self, ctx: PressContext, scores: Tensor, n: int, recent: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        index = heavy_hitter_index(scores, n, recent, self.config.budget.sinks)  # (B, H_kv, n)
        expanded = index.unsqueeze(-1).expand(-1, -1, -1, ctx.keys.shape[-1])  # (B, H_kv, n, D)
        keys, values = ctx.keys.gather(2, expanded), ctx.values.gather(2, expanded)
        return keys, values, scores.gather(2, index)

    def step_scores(self, ctx: PressContext) -> Tensor:
        """This step's score of every cached entry `(B, H_kv, T)`, added to the running total:
        the attention it received (subclasses score differently, e.g. VATP)."""
        return accumulated_attention(ctx.attn, ctx.config.kv_heads)

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        n = self.config.budget.tokens(T)
        if n >= T:
            self.state[ctx.layer] = None
            return ctx.keys, ctx.values
        scores = self.step_scores(ctx)  # (B, H_kv, T)
        recent = recent_count(n, self.config.heavy, self.config.budget)
        keys, values, scores = self._evict(ctx, scores, n, recent)
        self.state[ctx.layer] = (n, recent, scores)
        return keys, values

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        state = self.state.get(ctx.layer)
        if state is None:
            return ctx.keys, ctx.values
        n, recent, scores = state
        new = ctx.keys.shape[2] - scores.shape[2]
        # (B, H_kv, T): the new entries start from zero
        scores = torch.cat([scores, scores.new_zeros(*scores.shape[:2], new)], dim=2)
        scores = scores + self.step_scores(ctx).to(scores.dtype)
        keys, values = ctx.keys, ctx.values
        if keys.shape[2] > n:
            keys, values, scores = self._evict(ctx, scores, n, recent)
        self.state[ctx.layer] = (n, recent, scores)
        return keys, values


def make_press(config: Config = Config()) -> H2OPress:
    return H2OPress(config)
