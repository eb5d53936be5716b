"""Scissorhands: Exploiting the Persistence of Importance Hypothesis for LLM KV Cache Compression
at Test Time, arXiv 2305.17118, record `scissorhands-2023`.

Official code: lzcemma/Scissorhands@d0bf444b7f78127b2052fe8edfd4d386efd33455,
`Decentralized_FM_alpha/modules/hf_opt_dropkv.py` (`OPTAttention.forward`, the `compress_flag`
branch); no code was taken from it. It does not hold a budgeted cache: it only simulates the
method at prefill with attention masks over OPT prompts (layers 5-35 of OPT-66B,
`start_compress_length = 100`, `LRU_WINDOW = 100`, `POSITION_WINDOW = 10` in
`run_infer_opt_66b_sparse_c4.sh`), and its importance test differs from the paper's: a key is
important for a query when its attention exceeds the row's 90th-percentile value (not the
average), and query `i` may attend only to keys important for at least one of the previous
`lru_window` queries or among the last `position_window` keys. `official_masked_attention`
reproduces that path: checked in memory against the official `OPTAttention.forward`
(fp32, random weights, `output_attentions=True`) on 19 seeded cases (batch 1-2, T 20-60,
2-4 heads, start 0-49, lru_window 1-100, position_window 0-5): equal exactly (max abs
difference 0.0). With `start >= T` ours returns plain causal attention (the official code
fails with an UnboundLocalError). The press below follows the paper's algorithm (a budgeted
cache compressed by counts of below-average attention in a history window), which the
official code does not implement.

Persistence of importance: a token that was pivotal (much attended) at one step tends to stay
pivotal at later steps. Scissorhands keeps the cache within a fixed budget `n` and, when it
overflows, drops the tokens that were most often unimportant in the recent past:

1. the attention of the last `history` queries is recorded; a cached token counts as
   unimportant for a query when it receives less than the average attention of that query,
   `1 / t` with `t` the number of entries the query attends to;
2. a token's count is the number of (query, query head) pairs in the history window for which
   it was unimportant, summed over the query heads that share its KV head;
3. compression drops the tokens with the highest counts, never one of the last `window` tokens
   (the recent window, `Budget.window`) nor one of the first `Budget.sinks`; each KV head
   chooses its own. On equal counts the older token goes first;
4. prefill compresses the prompt to exactly `n = Budget.tokens(T)` entries with the last
   `history` prompt queries as the history; during decoding the history rolls forward one query
   per step, and whenever the cache exceeds `n` the `drop` tokens with the highest counts are
   evicted at once (the paper amortises compression by dropping several tokens; `drop = 1`,
   the default, keeps the cache at exactly `n`).

At `keep >= 1` nothing is evicted, neither at prefill nor later.

Simplified: the paper's per-head counts are summed over the query heads sharing a KV head
(grouped-query attention); the default `history`, `window` and `drop` are ours, chosen for short
prompts; ties are broken by age (the paper does not say); the budget is a share of the prompt.

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; history
`(B, H_kv, R, T)` unimportance counts of the last `R <= history` queries; counts `(B, H_kv, T)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget, keep_top, protect

IMPL = ImplInfo(
    name="scissorhands",
    title="Scissorhands: drop the tokens most often below-average in a history window",
    papers=("scissorhands-2023",),
    family="kv-eviction",
    training_free=True,
    arxiv="2305.17118",
    simplified=(
        "per-head counts summed over the query heads of each KV head (GQA); default history, "
        "recent window and drop amount are ours; ties evict the older token; the budget is a "
        "share of the prompt"
    ),
)

WINDOW = 8  # default recent window r for config_for


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget(window=WINDOW)  # budget.window is the protected recent window r
    history: int = 16  # w: queries whose attention is remembered
    drop: int = 1  # m: tokens dropped at once when the cache overflows during decoding

    def __post_init__(self) -> None:
        assert self.history >= 1, "history must be >= 1"
        assert self.drop >= 1, "drop must be >= 1"


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0), window=WINDOW))


def unimportance(attn: Tensor, kv_heads: int) -> Tensor:
    """For attention `(B, H, T_q, T)` of the last `T_q` of `T` tokens (causal), whether each
    entry got less than the average attention `1 / t` of each query (`t` entries visible to it),
    counted over the query heads of each KV head: `(B, H_kv, T_q, T)` integers."""
    B, H, T_q, T = attn.shape
    visible = torch.arange(T - T_q + 1, T + 1, device=attn.device)  # (T_q,) entries seen per query
    below = attn.double() < (1.0 / visible.double())[:, None]  # (B, H, T_q, T)
    seen = torch.arange(T, device=attn.device)[None, :] < visible[:, None]  # (T_q, T)
    below = below & seen
    return below.view(B, kv_heads, H // kv_heads, T_q, T).sum(dim=2)  # (B, H_kv, T_q, T)


def official_masked_attention(
    scores: Tensor, lru_window: int, position_window: int, start: int = 100, quantile: float = 0.9
) -> Tensor:
    """The official evaluation path: prompt attention `(B, H, T, T)` with, for each query
    `i >= start`, the keys masked that were never important in the last `lru_window` queries and
    are older than the last `position_window` keys, from raw scores `(B, H, T, T)` (q . k scaled,
    before the causal mask).

    A key counts as important for a query when its attention exceeds the value at index
    `int(quantile * T)` of that query's ascending-sorted attention row (future entries count as
    zeros there); rows are computed in order, and a query's importance marks are read from the
    already masked rows of earlier queries, as in the official loop. The query's own key and
    the last `position_window` keys are always visible. Queries before `start` are unmasked."""
    T, S = scores.shape[-2:]  # scores (B, H, T, S); prefill: S == T
    low = torch.finfo(scores.dtype).min
    causal = torch.ones(T, S, dtype=torch.bool, device=scores.device).triu(S - T + 1)
    raw = scores.masked_fill(causal, low)  # (B, H, T, S)
    attn = raw.softmax(dim=-1)  # (B, H, T, S)
    k = int(quantile * S)
    threshold = attn.sort(dim=-1).values[..., k : k + 1]  # (B, H, T, 1), from the unmasked rows
    for i in range(start, T):
        lo = max(i - lru_window, 0)
        if lo < i:  # above the threshold for some query of the window (x - t > 0 iff x > t)
            important = (attn[..., lo:i, :i] - threshold[..., lo:i, :]).amax(dim=-2) > 0
        else:
            important = torch.zeros_like(attn[..., i, :i], dtype=torch.bool)  # (B, H, i)
        important[..., max(i - position_window, 0) :] = True
        row = torch.cat([raw[..., i, :i].masked_fill(~important, low), raw[..., i, i:]], dim=-1)
        attn[..., i, :] = row.softmax(dim=-1)  # row (B, H, S)
    return attn


def keep_scores(counts: Tensor) -> Tensor:
    """Scores `(B, H_kv, T)` for `keep_top` from counts: fewer unimportant marks is better, and on
    equal counts the newer token is better (all scores distinct, so the choice is exact)."""
    T = counts.shape[-1]
    position = torch.arange(T, device=counts.device, dtype=torch.float64)
    return -counts.double() * (T + 1) + position


class ScissorhandsPress:
    """Keeps a rolling attention history per layer; compresses at prefill and on overflow."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # per layer: (budget n, history (B, H_kv, R, T) aligned with the cache); None: no eviction
        self.state: dict[int, tuple[int, Tensor] | None] = {}

    def _compress(
        self, ctx: PressContext, history: Tensor, n: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        budget = self.config.budget
        scores = protect(keep_scores(history.sum(dim=2)), budget.sinks, budget.window)
        keys, values, index = keep_top(ctx.keys, ctx.values, scores, n)  # index (B, H_kv, n)
        rows = index.unsqueeze(2).expand(-1, -1, history.shape[2], -1)  # (B, H_kv, R, n)
        return keys, values, history.gather(3, rows)

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        n = self.config.budget.tokens(T)
        if n >= T:
            self.state[ctx.layer] = None
            return ctx.keys, ctx.values
        recent = ctx.attn[:, :, -self.config.history :]  # (B, H, R, T)
        history = unimportance(recent, ctx.config.kv_heads)  # (B, H_kv, R, T)
        keys, values, history = self._compress(ctx, history, n)
        self.state[ctx.layer] = (n, history)
        return keys, values

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        state = self.state.get(ctx.layer)
        if state is None:
            return ctx.keys, ctx.values
        n, history = state
        B, H_kv, R, T_old = history.shape
        T = ctx.keys.shape[2]
        padded = torch.cat([history, history.new_zeros(B, H_kv, R, T - T_old)], dim=3)
        rows = unimportance(ctx.attn, ctx.config.kv_heads)  # (B, H_kv, T_new, T)
        history = torch.cat([padded, rows], dim=2)[:, :, -self.config.history :]
        keys, values = ctx.keys, ctx.values
        if n < T:
            budget = self.config.budget
            kept = max(min(n, T - self.config.drop), min(T, budget.sinks + budget.window))
            keys, values, history = self._compress(ctx, history, kept)
        self.state[ctx.layer] = (n, history)
        return keys, values


def make_press(config: Config = Config()) -> ScissorhandsPress:
    return ScissorhandsPress(config)
