"""SnapKV: LLM Knows What You are Looking for Before Generation, arXiv 2404.14469, record
`snapkv-2024`.

Checked against the official repository FasterDecoding/SnapKV (snapkv/monkeypatch/snapkv_utils.py,
`SnapKVCluster.update_kv`, and the LongBench configs experiments/LongBench/config/*_w32_k7_maxpool
.json); no code was taken from it.

The queries at the end of the prompt already show which earlier tokens generation will attend.
Once, after the prompt has gone through a layer (prefill):

1. the observation window is the last `w` prompt tokens; the prefix is everything before it;
2. each query head votes for prefix positions with the attention its `w` window queries give
   them, summed over those queries (the rows of the prefill attention, whose softmax ran over the
   whole causal row, as in the official code);
3. the votes are pooled along the positions (1D max pooling, kernel 7, stride 1, same padding:
   the paper's clustering, so neighbours of a selected token come along);
4. grouped-query attention: the pooled votes of the query heads that share a KV head are averaged
   (`base.kv_head_scores`);
5. each KV head keeps its `n - w` best-scored prefix entries plus the whole window, `n =
   Budget.tokens(T)` entries in all, in their original order (ties go to the earlier position).

Decoding leaves the cache alone: new entries are appended as usual.

The window is `Config.window` (32, the official setting) but never more than half the budget, so
at least half of the kept entries are chosen by score: `w = max(1, min(window, (n - sinks) //
2))`. Short prompts and small budgets thus get a shorter window (the official code requires the
budget to exceed the window and does not compress prompts shorter than the budget).

The window should hold the question, not context: the official 32 suits LongBench's long
prompts and instruction tails. On our ~930-token passkey prompts, whose question and chat
template take about 16 tokens, a 32-token window also votes with the filler before the question
and finds the pass key less often than a 16-token one (`benchmarks/llm.py --windows 32 16`;
results in benchmarks/results/llm_snapkv_window.json).

Simplified: grouped-query attention: the official code repeats the KV heads so that each query
head keeps its own entries (a larger cache); here the cache stays per KV head and the pooled votes
are averaged over the group, as NVIDIA/kvpress does. The budget is a share of the prompt
(`Budget.keep`) rather than an absolute capacity; `Budget.sinks` protects leading tokens if asked
(SnapKV itself has none; with a one-token window they take the rest of the budget at most).

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T, T)`; votes `(B, H, P)` and scores
`(B, H_kv, P)` over the `P = T - w` prefix positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from ..selection import top_in_order as top_in_order
from .base import Budget, kv_head_scores

IMPL = ImplInfo(
    name="snapkv",
    title="SnapKV: observation-window attention votes, pooled, top-k per KV head",
    papers=("snapkv-2024",),
    family="kv-eviction",
    training_free=True,
    arxiv="2404.14469",
    simplified=(
        "GQA: pooled votes averaged over the query heads of a KV head instead of repeating the "
        "KV heads; budget as a share of the prompt; window capped at half the budget"
    ),
)

POOLINGS = ("max", "avg")


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()
    window: int = 32  # observation window (the last prompt tokens), capped at half the budget
    kernel: int = 7  # pooling kernel along the positions (odd; 1 = no pooling)
    pooling: str = "max"

    def __post_init__(self) -> None:
        assert self.window >= 1, "window must be at least 1"
        assert self.kernel >= 1 and self.kernel % 2 == 1, "kernel must be odd and positive"
        assert self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}"
        assert self.budget.window == 0, "SnapKV protects its own observation window: set window"


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0)))


def observation_window(n: int, window: int) -> int:
    """Window length for a budget of `n` entries: at most `window`, at most half the budget."""
    return max(1, min(window, n // 2))


def pool(votes: Tensor, kernel: int, pooling: str) -> Tensor:
    """Pool `(B, H, P)` along the positions: stride 1, same padding, same length."""
    if kernel == 1:
        return votes
    if pooling == "max":
        return F.max_pool1d(votes, kernel_size=kernel, stride=1, padding=kernel // 2)
    return F.avg_pool1d(votes, kernel_size=kernel, stride=1, padding=kernel // 2)


def window_scores(attn: Tensor, window: int, kernel: int, pooling: str, kv_heads: int) -> Tensor:
    """Scores `(B, H_kv, T - window)` of the prefix positions from the prefill attention
    `(B, H, T, T)`: window votes per query head, pooled, averaged over each KV head's group."""
    _, H, T, _ = attn.shape
    votes = attn[:, :, T - window :, : T - window].sum(dim=2)  # (B, H, P)
    return kv_head_scores(pool(votes, kernel, pooling), H, kv_heads)  # (B, H_kv, P)


def snapkv_index(
    attn: Tensor, n: int, window: int, kernel: int, pooling: str, kv_heads: int, sinks: int = 0
) -> Tensor:
    """Positions `(B, H_kv, n)` kept out of `T`: the best `n - window` prefix positions by
    `window_scores` (the first `sinks` always among them) and the last `window` ones."""
    B, _, T, _ = attn.shape
    scores = window_scores(attn, window, kernel, pooling, kv_heads)  # (B, H_kv, P)
    if sinks:
        scores = scores.clone()
        scores[..., :sinks] = float("inf")
    prefix = top_in_order(scores, n - window)  # (B, H_kv, n - w)
    tail = torch.arange(T - window, T, device=attn.device).expand(B, kv_heads, window)
    return torch.cat([prefix, tail], dim=-1)  # (B, H_kv, n)


def gather(keys: Tensor, values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Entries `index (B, H_kv, n)` of keys and values `(B, H_kv, T, D)`."""
    expanded = index.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])  # (B, H_kv, n, D)
    return keys.gather(2, expanded), values.gather(2, expanded)


class SnapKVPress:
    """Compresses each layer once at prefill; decoding appends as usual."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        c = self.config
        T = ctx.keys.shape[2]
        n = c.budget.tokens(T)
        if n >= T:
            return ctx.keys, ctx.values
        sinks = c.budget.sinks
        w = observation_window(n - sinks, c.window)
        index = snapkv_index(
            ctx.attn, n, w, c.kernel, c.pooling, ctx.config.kv_heads, min(sinks, n - w)
        )
        return gather(ctx.keys, ctx.values, index)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        return ctx.keys, ctx.values


def make_press(config: Config = Config()) -> SnapKVPress:
    return SnapKVPress(config)
