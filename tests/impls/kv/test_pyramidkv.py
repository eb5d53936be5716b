"""PyramidKV: exact per-layer budgets in a pyramid, SnapKV selection per layer, the real model."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from reference_impls.kv import pyramidkv, recent
from reference_impls.kv.base import Budget
from reference_impls.llm.llama import TINY_LLAMA, KVCache, PressContext, generate, perplexity

from ..llm.common import prompt, smollm2, tiny_llama  # noqa: F401


class Spy:
    """Records each layer's prefill attention and leaves the cache alone."""

    def __init__(self) -> None:
        self.attn: dict[int, torch.Tensor] = {}

    def prefill(self, ctx: PressContext) -> tuple[torch.Tensor, torch.Tensor]:
        self.attn[ctx.layer] = ctx.attn
        return ctx.keys, ctx.values

    def decode(self, ctx: PressContext) -> tuple[torch.Tensor, torch.Tensor]:
        return ctx.keys, ctx.values


def naive_budgets(prefix: int, available: int, depth: int, beta: int) -> list[int]:
    """Section 4.2.1 with plain loops: top k/(beta m), bottom 2k/m - top, arithmetic between."""
    total = prefix * depth
    if depth == 1:
        return [prefix]
    top = Fraction(total, beta * depth)
    bottom = Fraction(2 * total, depth) - top
    if bottom > available:  # the official code's cap
        bottom = Fraction(available)
        top = Fraction(2 * total, depth) - bottom
    exact = []
    for layer in range(depth):
        step = (bottom - top) / (depth - 1)
        exact.append(bottom - step * layer)
    counts = [math.floor(x) for x in exact]
    while sum(counts) < total:  # one more entry to the largest remainder, lower layer first
        best = None
        for layer in range(depth):
            if counts[layer] == math.floor(exact[layer]) and exact[layer] > counts[layer]:
                remainder = exact[layer] - counts[layer]
                if best is None or remainder > exact[best] - counts[best]:
                    best = layer
        assert best is not None
        counts[best] += 1
    return counts


def naive_select(attn: torch.Tensor, n: int, window: int, kernel: int, kv_heads: int) -> list:
    """SnapKV's selection with plain loops (batch row 0): the kept positions per KV head."""
    _, H, T, _ = attn.shape
    groups, prefix = H // kv_heads, T - window
    kept = []
    for g in range(kv_heads):
        score = [0.0] * prefix
        for h in range(g * groups, (g + 1) * groups):
            votes = [sum(float(attn[0, h, q, j]) for q in range(prefix, T)) for j in range(prefix)]
            for j in range(prefix):
                lo, hi = max(0, j - kernel // 2), min(prefix, j + kernel // 2 + 1)
                score[j] += max(votes[lo:hi]) / groups
        ranked = sorted(range(prefix), key=lambda j: (-score[j], j))
        kept.append(sorted(ranked[: n - window]) + list(range(prefix, T)))
    return kept


def test_budgets_by_hand() -> None:
    """Exact schedule, T = 40, keep 0.5, depth 3: window 8, mean prefix 12 -> 23.4, 12, 0.6 ->
    23, 12, 1."""
    exact = pyramidkv.Config(Budget(keep=0.5), schedule="exact")
    assert pyramidkv.layer_budgets(12, 32, 3, 20) == [23, 12, 1]
    assert pyramidkv.pyramid_tokens(exact, 40, 3) == [31, 20, 9]
    # keep 0.9: the bottom layer would need 54.6 > 32 prefix tokens: capped, top 2*28 - 32 = 24
    exact = pyramidkv.Config(Budget(keep=0.9), schedule="exact")
    assert pyramidkv.pyramid_tokens(exact, 40, 3) == [40, 36, 32]
    assert pyramidkv.pyramid_tokens(pyramidkv.config_for(1.0), 40, 3) == [40, 40, 40]


def test_official_budgets_by_hand() -> None:
    """Official schedule: top floor(p / beta), bottom 2p - top, step floor((bottom - top) /
    (depth - 1)); uniform while T < 2p."""
    # p = 12: top 0, bottom 24, step 12
    assert pyramidkv.official_budgets(12, 32, 3, 20) == [24, 12, 0]
    assert pyramidkv.pyramid_tokens(pyramidkv.config_for(0.5), 40, 3) == [32, 20, 8]
    # 30 layers, p = 12: step floor(24 / 29) = 0, so every layer gets the bottom's 24
    assert pyramidkv.official_budgets(12, 32, 30, 20) == [24] * 30
    # p = 42 of 92, 30 layers: top 2, bottom 82, step 2: 82, 80, ..., 24 (sum 1590 > 30 * 42)
    assert pyramidkv.official_budgets(42, 92, 30, 20) == list(range(82, 23, -2))
    # bottom 2*28 - 1 = 55 >= 32 available: capped at 32, top 24, step 4
    assert pyramidkv.official_budgets(28, 32, 3, 20) == [32, 28, 24]
    # keep 0.75 of 50: n = 38, p = 30, T = 50 < 60: the uniform budget in every layer
    assert pyramidkv.pyramid_tokens(pyramidkv.config_for(0.75), 50, 3) == [38, 38, 38]
    # keep 0.7 of 40: n = 28, p = 20, T = 2p: the pyramid (the uniform branch needs T < 2p);
    # bottom 39 capped at 32, top 8, step 12
    assert pyramidkv.pyramid_tokens(pyramidkv.config_for(0.7), 40, 3) == [40, 28, 16]
    assert pyramidkv.official_budgets(5, 9, 1, 20) == [5]


@pytest.mark.parametrize(
    ("prefix", "available", "depth", "beta"),
    [
        (12, 32, 3, 20),
        (42, 92, 30, 20),
        (28, 32, 3, 20),
        (5, 9, 30, 2),
        (0, 10, 4, 20),
        (7, 7, 5, 20),
        (100, 150, 1, 20),
        (33, 80, 7, 3),
    ],
)
def test_budgets_are_exact_and_match_a_naive_loop(
    prefix: int, available: int, depth: int, beta: int
) -> None:
    """Sum exactly depth * prefix, non-increasing with depth, each within [0, available]."""
    counts = pyramidkv.layer_budgets(prefix, available, depth, beta)
    assert counts == naive_budgets(prefix, available, depth, beta)
    assert sum(counts) == depth * prefix
    assert counts == sorted(counts, reverse=True)
    assert all(0 <= c <= available for c in counts)


@pytest.mark.parametrize("schedule", pyramidkv.SCHEDULES)
def test_every_layer_keeps_exactly_its_budget(schedule: str) -> None:
    """On the tiny model, each layer holds its pyramid count; with the exact schedule the total
    is the uniform one."""
    model = tiny_llama()
    for length, keep in [(40, 0.5), (37, 0.3), (50, 0.75)]:
        config = pyramidkv.Config(Budget(keep=keep), schedule=schedule)
        cache = KVCache()
        with torch.no_grad():
            model(prompt(length), cache, pyramidkv.make_press(config))
        expected = pyramidkv.pyramid_tokens(config, length, TINY_LLAMA.depth)
        assert [cache.length(layer) for layer in range(TINY_LLAMA.depth)] == expected
        if schedule == "exact":
            assert sum(expected) == TINY_LLAMA.depth * Budget(keep=keep).tokens(length)
            assert expected[0] > expected[-1]


def test_window_is_kept_in_every_layer() -> None:
    """The last alpha = 8 prompt entries are in every layer's cache, even the smallest."""
    model = tiny_llama()
    ids = prompt(40)
    full, cache = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, pyramidkv.make_press(pyramidkv.config_for(0.5)))
    for layer in range(TINY_LLAMA.depth):
        torch.testing.assert_close(cache.keys[layer][:, :, -8:], full.keys[layer][:, :, -8:])


def test_selection_matches_a_naive_loop_and_decoding_appends() -> None:
    """Each layer keeps what the loop version picks with that layer's budget; generation then
    appends one entry per step."""
    model = tiny_llama()
    ids = prompt(40)
    spy, full = Spy(), KVCache()
    with torch.no_grad():
        model(ids, full, spy)
    press = pyramidkv.make_press(pyramidkv.config_for(0.5))
    tokens, cache = generate(model, ids, max_new_tokens=3, press=press)
    assert tokens.shape == (1, 3)
    for layer, n in enumerate([32, 20, 8]):
        assert cache.length(layer) == n + 2
        kept = naive_select(spy.attn[layer], n, 8, 7, TINY_LLAMA.kv_heads)
        for head, positions in enumerate(kept):
            torch.testing.assert_close(
                cache.values[layer][0, head, :n], full.values[layer][0, head, positions]
            )


def test_smollm2_pyramid_and_attention_beats_recency(smollm2) -> None:  # noqa: F811
    """On the real model (30 layers): exact decreasing counts summing to 30 uniform budgets,
    and a lower answer perplexity than a recent window of the same total size."""
    model, tokenizer = smollm2
    text = (
        "Remember this: the pass key is 48213. The weather was mild and the streets were quiet. "
        "A cat slept on the warm stones by the door. Someone in the next house was practising "
        "the piano. What is the pass key?"
    )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    answer = tokenizer("The pass key is 48213.", return_tensors="pt").input_ids
    T = ids.shape[1]
    config = pyramidkv.Config(Budget(keep=0.5), schedule="exact")  # the same total as recent
    cache = KVCache()
    with torch.no_grad():
        model(ids, cache, pyramidkv.make_press(config))
    counts = [cache.length(layer) for layer in range(30)]
    assert counts == pyramidkv.pyramid_tokens(config, T, 30)
    assert sum(counts) == 30 * Budget(keep=0.5).tokens(T)
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    both = torch.cat([ids, answer], dim=1)
    attended = perplexity(model, both, T, pyramidkv.make_press(config))
    recency = perplexity(model, both, T, recent.make_press(recent.config_for(0.5)))
    assert attended < recency
