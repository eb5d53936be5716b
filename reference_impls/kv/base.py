"""Shared machinery of the KV-cache methods: exact budgets, protected tokens, score-based eviction.

A score-based method (most eviction methods are one) only defines `score(ctx) -> (B, H_kv, T)`,
higher meaning more worth keeping; `ScorerPress` then keeps, per KV head, exactly
`budget_tokens(T)` entries: the protected ones (the first `sinks` tokens and the last `window`
tokens: attention sinks, the recent window, the question) always, and the best-scored others.
Kept entries stay in their original order. Nothing here knows a particular method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..llm.llama import PressContext


@dataclass(frozen=True)
class Budget:
    """How much of the prompt's cache to keep after prefill."""

    keep: float = 0.5  # share of the prompt tokens kept (0 < keep <= 1)
    sinks: int = 0  # first tokens always kept
    window: int = 0  # last tokens always kept

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.sinks >= 0 and self.window >= 0

    def tokens(self, length: int) -> int:
        """Entries kept out of `length`: ceil(keep * length), never fewer than the protected
        ones, never more than `length`."""
        wanted = math.ceil(self.keep * length - 1e-9)
        return min(length, max(wanted, min(length, self.sinks + self.window)))


def protect(scores: Tensor, sinks: int, window: int) -> Tensor:
    """Scores `(B, H_kv, T)` with the protected positions raised to +inf."""
    scores = scores.clone()
    T = scores.shape[-1]
    if sinks:
        scores[..., : min(sinks, T)] = float("inf")
    if window:
        scores[..., max(0, T - window) :] = float("inf")
    return scores


def keep_top(keys: Tensor, values: Tensor, scores: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per KV head, the `n` best-scored entries in original order: `(keys, values, index)`."""
    index = scores.topk(n, dim=-1).indices.sort(dim=-1).values  # (B, H_kv, n)
    expanded = index.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])  # (B, H_kv, n, D)
    return keys.gather(2, expanded), values.gather(2, expanded), index


def kv_head_scores(per_query_head: Tensor, heads: int, kv_heads: int) -> Tensor:
    """Average `(B, H, T)` scores over the query heads that share a KV head: `(B, H_kv, T)`."""
    B, H, T = per_query_head.shape
    assert heads == H
    return per_query_head.view(B, kv_heads, heads // kv_heads, T).mean(dim=2)


class ScorerPress:
    """Evict at prefill by a score; decoding leaves the cache alone unless a method overrides it."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    def score(self, ctx: PressContext) -> Tensor:  # (B, H_kv, T)
        raise NotImplementedError

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        n = self.budget.tokens(T)
        if n >= T:
            return ctx.keys, ctx.values
        scores = protect(self.score(ctx), self.budget.sinks, self.budget.window)
        keys, values, _ = keep_top(ctx.keys, ctx.values, scores, n)
        return keys, values

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        return ctx.keys, ctx.values
