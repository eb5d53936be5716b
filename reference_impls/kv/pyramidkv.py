"""PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling,
arXiv 2406.02069, record `pyramidkv-2024`.

Checked against the official repository Zefan-Cai/KVCache-Factory (formerly PyramidKV;
pyramidkv/pyramidkv_utils.py, `PyramidKVCluster`) and NVIDIA/kvpress (pyramidkv_press.py); no
code was taken from either.

Attention is spread widely in the lower layers and concentrates on a few tokens in the higher
ones, so PyramidKV gives the lower layers more of the cache and the higher ones less, with the
same total as a uniform budget:

1. every layer keeps the last `alpha` prompt tokens (the "instruction tokens", SnapKV's
   observation window; `Config.window`, the paper's alpha = 8);
2. the rest of the uniform budget, `p = n - alpha` per layer with `n = Budget.tokens(T)`, is
   redistributed over the `m` layers as an arithmetic sequence: the top layer gets `p / beta`
   (the paper's beta = 20), the bottom layer `2p - p / beta`, the layers between decrease
   linearly, so the sum is `m * p`. As in the official code, when the bottom layer would need more
   than the `T - alpha` prefix tokens it gets all of them and the top layer `2p - (T - alpha)`;
3. the budgets are made integers by largest remainders (floors, then one more entry to the layers
   with the largest fractional parts, lower layers first on ties), so every layer's count is
   exact, non-increasing with depth, and the total is exactly `m * n`;
4. each layer selects its entries like SnapKV (`snapkv.snapkv_index`): the window's attention
   votes, summed over the window queries, max-pooled (kernel 7), averaged over the query heads of
   each KV head, the best prefix entries plus the window.

Decoding leaves the cache alone. The window is capped at half the uniform budget, as in
`snapkv` (`w = max(1, min(window, n // 2))`), and is the same in every layer.

Simplified: grouped-query attention handled as in `snapkv` (votes averaged over the query heads
of a KV head after pooling; the official code has both a repeated-KV path and a path that
averages before pooling); budgets are a share of the prompt and exact integers (the official code
floors the top budget and the step between layers, so its total can exceed the uniform one: by a
quarter with 30 layers and a mean prefix budget of 42); no sinks.

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T, T)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget
from .snapkv import POOLINGS, gather, observation_window, snapkv_index

ALSO_CITES = ("2404.14469",)  # SnapKV, whose selection each layer uses

IMPL = ImplInfo(
    name="pyramidkv",
    title="PyramidKV: per-layer budgets in an arithmetic pyramid, SnapKV selection",
    papers=("pyramidkv-2024",),
    family="kv-eviction",
    training_free=True,
    arxiv="2406.02069",
    simplified=(
        "GQA: pooled votes averaged over the query heads of a KV head; budget as a share of "
        "the prompt, made exact integers by largest remainders; window capped at half the budget"
    ),
)


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()  # the uniform budget whose total the pyramid redistributes
    window: int = 8  # alpha: last prompt tokens kept in every layer, capped at half the budget
    kernel: int = 7  # pooling kernel (odd; 1 = no pooling)
    pooling: str = "max"
    beta: float = 20.0  # the top layer gets 1/beta of the mean prefix budget

    def __post_init__(self) -> None:
        assert self.window >= 1, "window must be at least 1"
        assert self.kernel >= 1 and self.kernel % 2 == 1, "kernel must be odd and positive"
        assert self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}"
        assert self.beta >= 1.0, "beta must be at least 1 (the top layer gets p / beta <= p)"
        assert self.budget.sinks == 0 and self.budget.window == 0, (
            "PyramidKV has no sinks and protects its own window: set window"
        )


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0)))


def layer_budgets(prefix: int, available: int, depth: int, beta: float) -> list[int]:
    """Prefix entries per layer, bottom first: an arithmetic sequence from `2p - p/beta` down to
    `p/beta` (`p = prefix`), the bottom capped at `available`, made integers by largest
    remainders; the sum is exactly `depth * prefix`."""
    assert 0 <= prefix <= available and depth >= 1 and beta >= 1.0
    if depth == 1:  # no pyramid with one layer
        return [prefix]
    p = Fraction(prefix)
    top = p / Fraction(beta)
    bottom = 2 * p - top
    if bottom > available:
        bottom = Fraction(available)
        top = 2 * p - bottom
    step = (bottom - top) / (depth - 1)
    exact = [bottom - step * layer for layer in range(depth)]
    counts = [math.floor(x) for x in exact]
    missing = depth * prefix - sum(counts)  # 0 <= missing < depth: the sum of `exact` is depth*p
    by_remainder = sorted(range(depth), key=lambda layer: (counts[layer] - exact[layer], layer))
    for layer in by_remainder[:missing]:
        counts[layer] += 1
    return counts


def pyramid_tokens(config: Config, T: int, depth: int) -> list[int]:
    """Entries each layer keeps out of a `T`-token prompt (window included), bottom first."""
    n = config.budget.tokens(T)
    if n >= T:
        return [T] * depth
    w = observation_window(n, config.window)
    return [w + b for b in layer_budgets(n - w, T - w, depth, config.beta)]


class PyramidKVPress:
    """Compresses each layer once at prefill to its pyramid budget; decoding appends as usual."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tokens: dict[tuple[int, int], list[int]] = {}  # (T, depth) -> per-layer entries

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        c = self.config
        T, depth = ctx.keys.shape[2], ctx.config.depth
        key = (T, depth)
        if key not in self._tokens:
            self._tokens[key] = pyramid_tokens(c, T, depth)
        n = self._tokens[key][ctx.layer]
        if n >= T:
            return ctx.keys, ctx.values
        w = observation_window(c.budget.tokens(T), c.window)
        index = snapkv_index(ctx.attn, n, w, c.kernel, c.pooling, ctx.config.kv_heads)
        return gather(ctx.keys, ctx.values, index)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        return ctx.keys, ctx.values


def make_press(config: Config = Config()) -> PyramidKVPress:
    return PyramidKVPress(config)
