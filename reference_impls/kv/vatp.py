"""VATP: Attention Score is not All You Need for Token Importance Indicator in KV Cache Reduction:
Value Also Matters, arXiv 2406.12335, record `vatp-2024`.

Official code: guozhiyu/vatp@39ea686c9e5d038d9ffbea883218bfdbc9c28807 (`utils_hh/modify_llama.py`,
`LlamaAttention_heavy_hitter` with `--h2o --apval`, the "H2O w/ VATP" variant); no code was taken
from it. It simulates eviction with a mask on the next query's attention; the official form here
(`Config(heavy_ratio=..., recent_ratio=..., sink_len=...)`, official names; the README's run is
`--heavy_ratio 0.25 --sink_len 20`, and pred.py sets recent_ratio = heavy_ratio) drops for real
what that mask hides: `int(heavy_ratio * T)` heavy hitters and `int(recent_ratio * T)` recent
entries of a T-token prompt, fixed at prefill; the prompt scores of the first `sink_len` tokens
pinned to the dtype's maximum (so the sinks take heavy-hitter slots); when the cache holds more
than heavy + recent, the last `recent` stay and the best-scored others fill the heavy slots; with
`int(recent_ratio * T) == 0` nothing is ever evicted (the official mask then stays all ones).
Checked in memory against the official `forward` (stub rotary embedding, random fp32 weights,
batch 1, 4 heads): prefill plus 10 decode steps on 45 seeded cases (T in {12, 30, 57},
heavy/recent ratios (0.1, =), (0.25, =), (0.2, 0.1), (0.3, 0), (0, 0.2), sink_len in {0, 2,
20}): the visible set after every step equal in the 36 cases with sink_len <= the heavy budget,
and the accumulated scores equal to 7e-6 relative; in the 9 others (more pinned sinks than heavy
slots) the choice among equal maximal scores is left to `topk` in both, and differs. The share
form (`budget`, `heavy`, what `config_for` builds) stays the default, as for H2O.
Attention-only eviction misjudges tokens whose value vectors are small: attention sinks
collect much attention but carry little (a small value norm), so the output barely depends on
them. Value-aware token pruning scores a KV entry by its accumulated attention *times the L1
norm of its value vector* and evicts by that score, under H2O's rules
(`reference_impls.kv.h2o`):

1. Prefill: each entry's score is `||v_j||_1 * sum_i a_ij`, the column sums of the causal
   attention averaged over the query heads of the entry's KV head, times the L1 norm of the
   entry's value in that KV head. With `n = Budget.tokens(T)` entries kept, the last
   `recent = n - floor(heavy * n)` form the recent window, the first `Budget.sinks` are always
   kept (the paper keeps the initial attention-sink tokens, whose value norms are tiny; the
   official code pins the first `sink_len` scores to the maximum), and the best-scored others
   fill the budget.
2. Decode: as in H2O the score accumulates: each step adds `||v_j||_1 * a_j` of the new query to
   every cached entry (the official code multiplies every step's attention by the value norms
   before adding it, which is the accumulated attention times the fixed norm); when the cache
   exceeds `n`, the lowest-scored entry outside the sinks and the recent window is evicted, so
   every step ends with exactly `n` entries.

Each KV head chooses its own entries; at `keep >= 1` nothing is evicted. The norm is the L1 norm
over the head dimension, as in the paper and the official code (`torch.norm(v, p=1, dim=-1)`).

Simplified: grouped-query attention: the attention is averaged over the query heads of a KV head
(the paper's models have one KV head per query head); batches: the official code sums scores
over the batch with the value norms of sample 0 and runs with batch 1, here each sample chooses;
in the share form the budget is a share of the prompt, fixed at prefill, with four protected
sinks by default; the Scissorhands variant of VATP (the official code without `--h2o`: scores
from the last 400 prompt queries, a 10-token recent window) is not included.

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; norms and scores
`(B, H_kv, T)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget
from .h2o import Config as H2OConfig
from .h2o import H2OPress, accumulated_attention

IMPL = ImplInfo(
    name="vatp",
    title="VATP: H2O eviction scored by accumulated attention times the value's L1 norm",
    papers=("vatp-2024",),
    family="kv-eviction",
    training_free=True,
    arxiv="2406.12335",
    simplified=(
        "attention averaged over the query heads of each KV head (GQA); the budget is a share of "
        "the prompt, fixed at prefill; 4 sinks by default; the Scissorhands variant is left out"
    ),
)

SINKS = 4  # attention-sink tokens always kept (the official runs keep 20 of 4k-token prompts)


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget(sinks=SINKS)  # the share form (ignored when heavy_ratio is set)
    heavy: float = 0.5  # share of the budget given to the best-scored entries; the rest is recent
    # The official form (`--h2o --apval`), official names: keep int(heavy_ratio * T) heavy
    # hitters and int(recent_ratio * T) recent entries of a T-token prompt (recent_ratio None:
    # equal to heavy_ratio, as pred.py sets it), the first sink_len pinned to the largest score.
    heavy_ratio: float | None = None
    recent_ratio: float | None = None
    sink_len: int = 20  # the README's runs; official form only

    def __post_init__(self) -> None:
        assert 0.0 <= self.heavy <= 1.0, "heavy must be in [0, 1]"
        for ratio in (self.heavy_ratio, self.recent_ratio):
            assert ratio is None or 0.0 <= ratio <= 1.0, "heavy_ratio and recent_ratio in [0, 1]"
        assert self.heavy_ratio is not None or self.recent_ratio is None, (
            "recent_ratio needs heavy_ratio"
        )
        assert self.sink_len >= 0, "sink_len must be >= 0"

    def official_budgets(self, length: int) -> tuple[int, int]:
        """`(heavy, recent)` entries of the official form for a prompt of `length` tokens."""
        assert self.heavy_ratio is not None, "only in the official form"
        recent_ratio = self.heavy_ratio if self.recent_ratio is None else self.recent_ratio
        return int(self.heavy_ratio * length), int(recent_ratio * length)


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0), sinks=SINKS))


def value_norms(values: Tensor) -> Tensor:
    """L1 norm of every value vector `(B, H_kv, T, D) -> (B, H_kv, T)`."""
    return values.abs().sum(dim=-1)


def value_aware_scores(attn: Tensor, values: Tensor) -> Tensor:
    """This step's importance of every entry: the attention `(B, H, T_q, T)` summed over the
    queries and averaged over the query heads of each KV head, times the L1 norm of the entry's
    value `(B, H_kv, T, D)`: `(B, H_kv, T)`."""
    attention = accumulated_attention(attn, values.shape[1]).to(values.dtype)
    return attention * value_norms(values)


class VATPPress(H2OPress):
    """H2O's press with value-aware scores; the state holds the accumulated value-aware score of
    every cached entry, aligned with the cache."""

    def __init__(self, config: Config) -> None:
        super().__init__(H2OConfig(config.budget, config.heavy))
        self.vatp = config

    def step_scores(self, ctx: PressContext) -> Tensor:
        scores = value_aware_scores(ctx.attn, ctx.values)  # (B, H_kv, T)
        if self.vatp.heavy_ratio is not None and ctx.seen == 0:
            # official: the sinks' prompt scores pinned to the maximum, so they stay heavy
            scores = scores.clone()
            scores[..., : self.vatp.sink_len] = torch.finfo(scores.dtype).max
        return scores

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        if self.vatp.heavy_ratio is None:
            return super().prefill(ctx)
        heavy, recent = self.vatp.official_budgets(ctx.keys.shape[2])
        if recent == 0:  # the official mask then keeps every entry visible, at every step
            self.state[ctx.layer] = None
            return ctx.keys, ctx.values
        self.config = H2OConfig(hh_size=heavy, recent_size=recent)
        return super().prefill(ctx)


def make_press(config: Config = Config()) -> VATPPress:
    return VATPPress(config)
