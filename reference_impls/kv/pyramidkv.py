"""PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling,
arXiv 2406.02069, record `pyramidkv-2024`.

Checked against the official repository Zefan-Cai/KVCache-Factory (formerly PyramidKV) at
commit c97f9d706d63 (pyramidkv/pyramidkv_utils.py, `PyramidKVCluster.update_kv`; run_longbench.py
for the settings: window 8, kernel 7, max pooling, budget optionally `round(ratio * T)`) and
NVIDIA/kvpress (pyramidkv_press.py); no code was taken from either. The official `update_kv` was
run in memory, outside the project, layer by layer against `PyramidKVPress.tokens` and `compress`
on 5632 seeded layer cases (2 seeds x float32/float16 x batch 1, 2 x T 40, 67 x window 4, 8 x
keep 0.3, 0.5, 0.7 x 3 and 5 layers x kernel 5, 7 x max/avg pooling x beta 20, 3; one KV head
per query head; budgets of at least twice the window): the same count in every layer, the same
entries kept in 3053, and in the other 2579 the kept sets differ only between positions of equal
pooled score (the official `topk` leaves ties to the backend, ours keeps the earlier position).
Before this check the per-layer counts differed: the official schedule is the default now.

Attention is spread widely in the lower layers and concentrates on a few tokens in the higher
ones, so PyramidKV gives the lower layers more of the cache and the higher ones less, about the
same total as a uniform budget:

1. every layer keeps the last `alpha` prompt tokens (the "instruction tokens", SnapKV's
   observation window; `Config.window`, the paper's and run_longbench.py's alpha = 8);
2. the rest of the uniform budget, `p = n - alpha` per layer with `n = Budget.tokens(T)`, is
   redistributed over the `m` layers as an arithmetic sequence from the bottom layer's
   `2p - p / beta` down to the top layer's `p / beta` (beta = 20); when the bottom layer would
   need the `T - alpha` prefix tokens or more it gets all of them and the top `2p - (T - alpha)`;
3. `schedule="official"` (the default) makes it integers as the official code does: the top
   gets `floor(p / beta)`, the step between layers is `floor((bottom - top) / (m - 1))`, so the
   total can exceed the uniform `m * n` (by a quarter with 30 layers and p = 42; with 30 layers
   and p < 29 the step is 0 and every layer gets the bottom's budget); and while the prompt is
   shorter than `2p` every layer gets the uniform `n` (the official middle branch).
   `schedule="exact"`, the paper's description (the total equals the uniform one): the exact
   rational sequence always, made integers by largest remainders (floors, then one more entry to
   the layers with the largest fractional parts, lower layers first on ties), every layer's
   count non-increasing with depth and the total exactly `m * n`;
4. each layer selects its entries by SnapKV's score rule (`snapkv.WindowVotePress`; as a
   function, `snapkv.snapkv_index`): the window's attention votes, summed over the window
   queries, max-pooled (kernel 7), averaged over the query heads of each KV head, the best prefix
   entries plus the window.

Decoding leaves the cache alone. The window is capped at half the uniform budget, as in
`snapkv` (`w = max(1, min(window, n // 2))`), and is the same in every layer (the official code
asserts the budget exceeds the window instead). As a `base.ScorerPress` the method is SnapKV's
score rule plus the `tokens` hook that gives each layer its count.

Simplified: grouped-query attention handled as in `snapkv` (votes averaged over the query heads
of a KV head after pooling; the official default repeats the KV heads so that each query head
keeps its own entries, and its opt-in `kv_cache_granularity="kv_head"` path averages the votes
before pooling); budgets are a share of the prompt (`ceil`, the official ratio option rounds);
no sinks; with one layer the official code divides by zero, ours keeps the uniform budget.

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T, T)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget
from .snapkv import POOLINGS, WindowVotePress, observation_window

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
        "the prompt; window capped at half the budget"
    ),
)


SCHEDULES = ("official", "exact")


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()  # the uniform budget whose total the pyramid redistributes
    window: int = 8  # alpha: last prompt tokens kept in every layer, capped at half the budget
    kernel: int = 7  # pooling kernel (odd; 1 = no pooling)
    pooling: str = "max"
    beta: float = 20.0  # the top layer gets 1/beta of the mean prefix budget
    schedule: str = "official"  # "official" integer schedule, or "exact" (see the docstring)

    def __post_init__(self) -> None:
        assert self.window >= 1, "window must be at least 1"
        assert self.kernel >= 1 and self.kernel % 2 == 1, "kernel must be odd and positive"
        assert self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}"
        assert self.beta >= 1.0, "beta must be at least 1 (the top layer gets p / beta <= p)"
        assert self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"
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


def official_budgets(prefix: int, available: int, depth: int, beta: float) -> list[int]:
    """Prefix entries per layer, bottom first, as the official `PyramidKVCluster` computes them:
    the top layer `floor(p / beta)`, the bottom `2p` minus that (capped at `available`, the top
    then `2p - available`), and a step of `floor((bottom - top) / (depth - 1))` between layers,
    so the total can exceed `depth * p` (`p = prefix`)."""
    assert 0 <= prefix <= available and depth >= 1 and beta >= 1.0
    if depth == 1:  # the official code divides by depth - 1; with one layer there is no pyramid
        return [prefix]
    top = math.floor(prefix / beta)
    bottom = 2 * prefix - top
    if bottom >= available:
        bottom = available
        top = 2 * prefix - bottom
    step = (bottom - top) // (depth - 1)
    return [bottom - layer * step for layer in range(depth)]


def pyramid_tokens(config: Config, T: int, depth: int) -> list[int]:
    """Entries each layer keeps out of a `T`-token prompt (window included), bottom first.

    Official schedule: the uniform budget in every layer while the prompt is shorter than twice
    the uniform prefix budget (`T < 2 (n - w)`, the official code's middle branch), the
    `official_budgets` pyramid beyond. Exact schedule: always `layer_budgets`."""
    n = config.budget.tokens(T)
    if n >= T:
        return [T] * depth
    w = observation_window(n, config.window)
    if config.schedule == "exact":
        return [w + b for b in layer_budgets(n - w, T - w, depth, config.beta)]
    if 2 * (n - w) > T:  # the official middle branch: T < 2p
        return [n] * depth
    return [w + b for b in official_budgets(n - w, T - w, depth, config.beta)]


class PyramidKVPress(WindowVotePress):
    """SnapKV's score rule with the pyramid's per-layer budgets; decoding appends as usual."""

    def __init__(self, config: Config) -> None:
        super().__init__(config.budget, config.window, config.kernel, config.pooling)
        self.config = config
        self._tokens: dict[tuple[int, int], list[int]] = {}  # (T, depth) -> per-layer entries

    def tokens(self, ctx: PressContext) -> int:
        key = (ctx.keys.shape[2], ctx.config.depth)
        if key not in self._tokens:
            self._tokens[key] = pyramid_tokens(self.config, *key)
        return self._tokens[key][ctx.layer]

    def observation(self, ctx: PressContext) -> int:
        """The same window in every layer, from the uniform budget."""
        return observation_window(self.budget.tokens(ctx.keys.shape[2]), self.window)


def make_press(config: Config = Config()) -> PyramidKVPress:
    return PyramidKVPress(config)
