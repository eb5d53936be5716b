"""Shared machinery of the KV-cache methods: exact budgets, protected tokens, score-based eviction.

A score-based method (most eviction methods are one) only defines `score(ctx) -> (B, H_kv, T)`,
higher meaning more worth keeping; `ScorerPress` then keeps, per KV head, exactly
`Budget.tokens(T)` entries: the protected ones (the first `sinks` tokens and the last `window`
tokens: attention sinks, the recent window, the question) always, and the best-scored others.
Kept entries stay in their original order; among equal scores the earlier position wins
(`selection.top_in_order`). Nothing here knows a particular method.

Three hooks cover the methods that need more than a score, each defaulting to the plain rule:
`tokens(ctx)` (entries a layer keeps: PyramidKV's per-layer budgets), `protected(ctx, n)` (how
many leading and trailing entries are always kept: SnapKV's observation window, which depends on
the budget), and `evict_on_decode` (the prefill budget stays a hard cap while decoding: every
step that makes a layer's cache longer than its cap evicts by the same score, as TOVA and
StreamingLLM do; otherwise decoding appends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..llm.llama import PressContext
from ..selection import top_in_order


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
    """Per KV head, the `n` best-scored entries in original order, the earlier one first among
    equal scores: `(keys, values, index)`. Scores `(B, 1, T)` choose once for every KV head."""
    B, H_kv = keys.shape[:2]
    index = top_in_order(scores, n).expand(B, H_kv, n)  # scores (B, H_kv or 1, T)
    expanded = index.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])  # (B, H_kv, n, D)
    return keys.gather(2, expanded), values.gather(2, expanded), index


def kv_head_scores(per_query_head: Tensor, heads: int, kv_heads: int) -> Tensor:
    """Average `(B, H, T)` scores over the query heads that share a KV head: `(B, H_kv, T)`."""
    B, H, T = per_query_head.shape
    assert heads == H
    return per_query_head.view(B, kv_heads, heads // kv_heads, T).mean(dim=2)


class ScorerPress:
    """Evict to the budget by a score at prefill; decoding appends, or evicts back to the prefill
    budget by the same score when `evict_on_decode` is set."""

    evict_on_decode: ClassVar[bool] = False

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.cap: dict[int, int | None] = {}  # per layer: the budget fixed at prefill, if any

    def score(self, ctx: PressContext) -> Tensor:  # (B, H_kv, T), higher is kept first
        raise NotImplementedError

    def tokens(self, ctx: PressContext) -> int:
        """Entries this layer keeps out of the prompt's `T` (the same in every layer here)."""
        return self.budget.tokens(ctx.keys.shape[2])

    def protected(self, ctx: PressContext, n: int) -> tuple[int, int]:
        """Leading and trailing entries always kept under a budget of `n`."""
        return self.budget.sinks, self.budget.window

    def compress(self, ctx: PressContext, n: int) -> tuple[Tensor, Tensor]:
        """The `n` entries kept: the protected ones and the best-scored others, in order."""
        sinks, window = self.protected(ctx, n)
        scores = self.score(ctx)  # (B, H_kv, T)
        if scores.shape[1] > 1 and scores.stride(1) == 0:  # one row expanded over the KV heads
            scores = scores[:, :1]  # select once (the same entries as per head, one sort)
        keys, values, _ = keep_top(ctx.keys, ctx.values, protect(scores, sinks, window), n)
        return keys, values

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        n = self.tokens(ctx)
        if self.evict_on_decode:
            self.cap[ctx.layer] = n if n < T else None  # keep >= 1: no cap, ever
        return self.compress(ctx, n) if n < T else (ctx.keys, ctx.values)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        n = self.cap.get(ctx.layer)
        if n is None or ctx.keys.shape[2] <= n:
            return ctx.keys, ctx.values
        return self.compress(ctx, n)
