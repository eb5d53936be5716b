"""SnapKV: LLM Knows What You are Looking for Before Generation, arXiv 2404.14469, record
`snapkv-2024`.

Checked against the official repository FasterDecoding/SnapKV at commit e216ddc84c5b
(snapkv/monkeypatch/snapkv_utils.py, `SnapKVCluster.update_kv`; LongBench configs
experiments/LongBench/config/*_w32_k7_maxpool.json); no code was taken from it. The official
`update_kv` was run in memory, outside the project, against `SnapKVPress.compress` on 576 seeded
cases (3 seeds x float32/float16 x batch 1, 2 x T 24, 61 x window 4, 8 x capacity 16, 23 x
kernel 1, 5, 7 x max/avg pooling; one KV head per query head, as the official code repeats
them): the same entries kept in 396, and in the other 180 the kept sets differ only between
positions of equal score (max pooling makes ties; the official `topk` leaves them to the backend,
ours keeps the earlier position); no other difference. The official code stores the selected
entries in score order, ours in their original order (attention does not depend on it).

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

Decoding leaves the cache alone: new entries are appended as usual. As a `base.ScorerPress`, the
method is its score rule (`WindowVotePress`, shared with PyramidKV): the pooled votes over the
prefix, the window protected through the `protected` hook.

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

import torch.nn.functional as F
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from ..selection import top_in_order as top_in_order
from .base import Budget, ScorerPress, kv_head_scores, protect

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


def snapkv_scores(attn: Tensor, window: int, kernel: int, pooling: str, kv_heads: int) -> Tensor:
    """Scores `(B, H_kv, T)`: `window_scores` over the prefix, 0 over the window (which the
    press protects, so its score never matters)."""
    return F.pad(window_scores(attn, window, kernel, pooling, kv_heads), (0, window))


def snapkv_index(
    attn: Tensor, n: int, window: int, kernel: int, pooling: str, kv_heads: int, sinks: int = 0
) -> Tensor:
    """Positions `(B, H_kv, n)` kept out of `T`: the best `n - window` prefix positions by
    `window_scores` (the first `sinks` always among them) and the last `window` ones."""
    assert sinks + window <= n, "the budget must hold the sinks and the window"
    scores = protect(snapkv_scores(attn, window, kernel, pooling, kv_heads), sinks, window)
    return top_in_order(scores, n)  # (B, H_kv, n)


def gather(keys: Tensor, values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Entries `index (B, H_kv, n)` of keys and values `(B, H_kv, T, D)`."""
    expanded = index.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])  # (B, H_kv, n, D)
    return keys.gather(2, expanded), values.gather(2, expanded)


class WindowVotePress(ScorerPress):
    """The score rule SnapKV and PyramidKV share: the observation window's pooled attention votes,
    the window itself protected (with the first `sinks` entries, as far as the budget allows)."""

    def __init__(self, budget: Budget, window: int, kernel: int, pooling: str) -> None:
        super().__init__(budget)
        self.window, self.kernel, self.pooling = window, kernel, pooling

    def observation(self, ctx: PressContext) -> int:
        """Length of this layer's observation window."""
        return observation_window(self.tokens(ctx) - self.budget.sinks, self.window)

    def protected(self, ctx: PressContext, n: int) -> tuple[int, int]:
        w = self.observation(ctx)
        return min(self.budget.sinks, n - w), w

    def score(self, ctx: PressContext) -> Tensor:
        w = self.observation(ctx)
        return snapkv_scores(ctx.attn, w, self.kernel, self.pooling, ctx.config.kv_heads)


class SnapKVPress(WindowVotePress):
    """Compresses each layer once at prefill; decoding appends as usual."""

    def __init__(self, config: Config) -> None:
        super().__init__(config.budget, config.window, config.kernel, config.pooling)
        self.config = config


def make_press(config: Config = Config()) -> SnapKVPress:
    return SnapKVPress(config)
