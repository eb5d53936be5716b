"""Efficient Streaming Language Models with Attention Sinks (StreamingLLM), arXiv 2309.17453,
record `streamingllm-2024`.

Checked against the official repository mit-han-lab/streaming-llm at commit 2e5042606d69
(streaming_llm/kv_cache.py, `StartRecentKVCache`; streaming_llm/pos_shift/); no code was taken
from it. `StartRecentKVCache(start_size, recent_size)` was run in memory, outside the project:
its `__call__` on the prompt's cache, then six rounds of `evict_for_space(cache, 1)` and an
append, against our prefill and six decoding steps with `sinks = start_size` and a budget of
`start_size + recent_size`, on 56 seeded cases (2 seeds x batch 1, 2 x T 5, 17, 40 x 1 or 4
sinks x caps 4, 6, 16 below T): equal keys and values at every step in 44; the other 12 have
`recent_size = 0`, where the official slice `seq_len - recent_size + 1 : seq_len` keeps the
newest token beside the sinks (a cache of `cache_size + 1`); ours holds the cap and keeps only
the sinks. The official evicts before appending, ours after the new token has attended to the
full cache; the entries kept are the same.

LLMs put a large share of attention on the first few tokens whatever they say ("attention
sinks"), so a plain sliding window breaks down as soon as they leave the cache. StreamingLLM
keeps the KV entries of the first `sinks` tokens (4 in the paper) and a rolling window of the
most recent ones:

1. after prefill, each layer keeps the first `sinks` entries and the last `n - sinks`, where
   `n = Budget.tokens(T)` is the exact budget for a prompt of `T` tokens;
2. during decoding the budget `n` is a hard cap: whenever a new token would make the cache
   longer than `n`, the oldest non-sink entry is evicted, so the cache never holds more than `n`
   entries. Every layer and KV head keeps the same positions.

At `keep >= 1` nothing is evicted, neither at prefill nor later (the cache is untouched).
As a `base.ScorerPress` the method is a score rule: the position (later is better), with the
sinks protected and `evict_on_decode`; `sink_window_index` states the same choice in closed form.

Simplified: positions. Our cache stores keys already rotated at their original positions
(`reference_impls.llm.llama`), whereas StreamingLLM assigns positions by place inside the cache
(it caches keys before rotation and rotates them at attention time, so the window never runs past
the positions seen in training). Also, the prompt is prefilled in one pass with full attention and
then trimmed, where the official streaming evaluation feeds tokens one by one and evicts before
each; and the paper's variant pre-trained with a dedicated learnable sink token is not covered.

Shapes: keys and values `(B, H_kv, T, D)`; kept index `(n,)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget, ScorerPress

IMPL = ImplInfo(
    name="streaming_llm",
    title="StreamingLLM: attention sinks plus a rolling window of recent tokens",
    papers=("streamingllm-2024",),
    family="kv-eviction",
    training_free=True,
    arxiv="2309.17453",
    simplified=(
        "keys stay rotated at their original positions (StreamingLLM re-assigns positions by "
        "place in the cache); the prompt is prefilled in one pass and then trimmed; no "
        "pre-trained learnable sink token"
    ),
)

SINKS = 4  # the paper's default number of initial tokens kept


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget(sinks=SINKS)  # budget.sinks are the attention sinks

    def __post_init__(self) -> None:
        assert self.budget.sinks >= 1, "StreamingLLM keeps at least one attention sink"


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0), sinks=SINKS))


def sink_window_index(length: int, n: int, sinks: int, device: torch.device) -> Tensor:
    """Positions kept out of `length` entries under a cap of `n`: the first `sinks` and the last
    `n - sinks`, in order; all of them when `length <= n`. Returns `(min(length, n),)`."""
    if length <= n:
        return torch.arange(length, device=device)
    assert n >= sinks, "the cap must hold the sinks"
    head = torch.arange(min(sinks, n), device=device)
    tail = torch.arange(length - (n - len(head)), length, device=device)
    return torch.cat([head, tail])


class StreamingLLMPress(ScorerPress):
    """Sinks plus recent window at prefill; one eviction of the oldest non-sink per decode step:
    the score is the position (later is better) and the sinks are the protected leading
    entries, so `ScorerPress` keeps exactly `sink_window_index`."""

    evict_on_decode = True

    def __init__(self, config: Config) -> None:
        super().__init__(config.budget)
        self.config = config

    def score(self, ctx: PressContext) -> Tensor:
        B, H_kv, T, _ = ctx.keys.shape
        position = torch.arange(T, device=ctx.keys.device, dtype=torch.float32)
        return position.expand(B, H_kv, T)


def make_press(config: Config = Config()) -> StreamingLLMPress:
    return StreamingLLMPress(config)
