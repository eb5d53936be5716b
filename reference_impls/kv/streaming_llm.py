"""Efficient Streaming Language Models with Attention Sinks (StreamingLLM), arXiv 2309.17453,
record `streamingllm-2024`.

Checked against the official repository mit-han-lab/streaming-llm (streaming_llm/kv_cache.py,
`StartRecentKVCache`; streaming_llm/pos_shift/); no code was taken from it.

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
from .base import Budget

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


class StreamingLLMPress:
    """Sinks plus recent window at prefill; one eviction of the oldest non-sink per decode step."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.cap: dict[int, int | None] = {}  # per layer: the budget fixed at prefill

    def _trim(self, ctx: PressContext, n: int) -> tuple[Tensor, Tensor]:
        index = sink_window_index(ctx.keys.shape[2], n, self.config.budget.sinks, ctx.keys.device)
        return ctx.keys.index_select(2, index), ctx.values.index_select(2, index)

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        n = self.config.budget.tokens(T)
        self.cap[ctx.layer] = n if n < T else None  # keep >= 1: no cap, ever
        return self._trim(ctx, n) if n < T else (ctx.keys, ctx.values)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        n = self.cap.get(ctx.layer)
        if n is None or ctx.keys.shape[2] <= n:
            return ctx.keys, ctx.values
        return self._trim(ctx, n)


def make_press(config: Config = Config()) -> StreamingLLMPress:
    return StreamingLLMPress(config)
