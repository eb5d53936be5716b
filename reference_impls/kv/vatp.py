"""VATP: Attention Score is not All You Need for Token Importance Indicator in KV Cache Reduction:
Value Also Matters, arXiv 2406.12335, record `vatp-2024`.

Checked against the official repository guozhiyu/vatp (`utils_hh/modify_llama.py`,
`LlamaAttention_heavy_hitter` with `--h2o --apval`, the "H2O w/ VATP" variant); no code was taken
from it. Attention-only eviction misjudges tokens whose value vectors are small: attention sinks
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
(the paper's models have one KV head per query head); the budget is a share of the prompt, fixed
at prefill; four sinks by default (the official runs keep 20 on 4k-token prompts); the
Scissorhands variant of VATP (an attention window of the last prompt queries) is not included.

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; norms and scores
`(B, H_kv, T)`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    budget: Budget = Budget(sinks=SINKS)
    heavy: float = 0.5  # share of the budget given to the best-scored entries; the rest is recent

    def __post_init__(self) -> None:
        assert 0.0 <= self.heavy <= 1.0, "heavy must be in [0, 1]"


def config_for(keep: float) -> Config:
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
        return value_aware_scores(ctx.attn, ctx.values)  # (B, H_kv, T)


def make_press(config: Config = Config()) -> VATPPress:
    return VATPPress(config)
