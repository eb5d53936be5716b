"""TOVA: the current query's head-averaged attention decides the one state dropped per step."""

from __future__ import annotations

import pytest
import torch

from reference_impls.kv import recent as recent_baseline
from reference_impls.kv.base import Budget
from reference_impls.kv.tova import Config, config_for, last_query_scores, make_press
from reference_impls.llm.llama import TINY_LLAMA, KVCache, generate

from ..llm.common import (
    H_KV,
    TEXT,
    H,
    causal_attention,
    continuation_perplexity,
    prompt,
    run_press,
    smollm2,  # noqa: F401 (a fixture)
    tiny_llama,
)


def row_attention(B: int, L: int, generator: torch.Generator) -> torch.Tensor:
    """One decode query's random attention over `L` entries: `(B, H, 1, L)`."""
    return (3 * torch.randn(B, H, 1, L, generator=generator, dtype=torch.float64)).softmax(-1)


def test_config_for_maps_keep() -> None:
    assert config_for(0.2) == Config(Budget(keep=0.2))
    assert config_for(2.0).budget.keep == 1.0


def test_scores_are_the_last_query_averaged_over_all_heads() -> None:
    attn = causal_attention(1, 6, torch.Generator().manual_seed(0))
    scores = last_query_scores(attn, H_KV)
    assert scores.shape == (1, H_KV, 6)
    for g in range(H_KV):
        torch.testing.assert_close(scores[:, g], attn[:, :, -1].mean(dim=1))


def test_prefill_and_decode_keep_exact_budget_in_every_layer() -> None:
    """Every layer holds exactly Budget.tokens(T) entries per KV head after prefill and after
    each decode step of a generation on the tiny model."""
    model = tiny_llama()
    cache = KVCache()
    with torch.no_grad():
        model(prompt(40), cache, make_press(config_for(0.25)))
    assert [cache.length(layer) for layer in range(TINY_LLAMA.depth)] == [10] * TINY_LLAMA.depth
    tokens, cache = generate(
        model, prompt(40), max_new_tokens=8, press=make_press(config_for(0.25))
    )
    assert tokens.shape == (1, 8) and cache.seen == 47
    assert [cache.keys[layer].shape for layer in range(TINY_LLAMA.depth)] == [
        (1, H_KV, 10, TINY_LLAMA.head_dim)
    ] * TINY_LLAMA.depth


def test_cache_size_is_a_fixed_number_of_states() -> None:
    """The official `cache_size`: a 3-token prompt stays whole, then decoding grows the cache to
    5 states and holds it there; a 9-token prompt is cut to 5 at prefill."""
    model = tiny_llama()
    for length, expected in [(3, [3, 4, 5, 5]), (9, [5, 5, 5, 5])]:
        press = make_press(Config(Budget(keep=1.0), cache_size=5))
        cache = KVCache()
        seen = []
        with torch.no_grad():
            model(prompt(length), cache, press)
            seen.append(cache.length(0))
            for step in range(3):
                model(prompt(1, seed=step), cache, press)
                seen.append(cache.length(0))
        assert seen == expected
        assert all(cache.length(layer) == 5 for layer in range(TINY_LLAMA.depth))
    with pytest.raises(AssertionError, match="cache_size"):
        Config(Budget(sinks=3, window=3), cache_size=5)


def test_all_kv_heads_of_a_layer_keep_the_same_states() -> None:
    """TOVA averages over all heads of the layer, so its KV heads hold the same positions."""
    generator = torch.Generator().manual_seed(5)
    rows = [row_attention(2, 13, generator) for _ in range(5)]
    for positions in run_press(
        make_press(config_for(0.3)), causal_attention(2, 40, generator), rows
    ):
        assert torch.equal(positions[:, 0], positions[:, 1])
        assert not torch.equal(positions[0], positions[1])  # the batch rows choose separately


def test_the_new_token_itself_can_be_dropped() -> None:
    """The newest state competes like any other: ignored by its own query, it is dropped."""
    generator = torch.Generator().manual_seed(6)
    row = torch.ones(1, H, 1, 11, dtype=torch.float64)
    row[..., -1] = 0.01  # the new token gets the least attention
    held = run_press(
        make_press(config_for(0.25)), causal_attention(1, 40, generator), [row / 10.01]
    )
    assert held[1].shape == (1, H_KV, 10)
    assert torch.equal(held[1], held[0])  # the cache is as before the step


def test_configured_sinks_and_window_are_never_evicted() -> None:
    """Sinks and a recent window, when configured, survive even with the least attention."""
    generator = torch.Generator().manual_seed(7)
    T = 30
    attn = causal_attention(1, T, generator)
    attn[:, :, -1, [0, T - 2, T - 1]] = 0.0  # the protected tokens get no attention at all
    rows = []
    for _ in range(4):
        row = row_attention(1, 16, generator)
        row[..., [0, -2, -1]] = 0.0
        rows.append(row)
    config = Config(Budget(keep=0.5, sinks=1, window=2))
    for step, positions in enumerate(run_press(make_press(config), attn, rows)):
        kept = set(positions[0, 0].tolist())
        assert {0, T - 2 + step, T - 1 + step} <= kept


def naive_tova(
    prefill_attn: torch.Tensor, rows: list[torch.Tensor], n: int, sinks: int, window: int
) -> list[list[list[list[int]]]]:
    """The paper's policy with plain loops: score each state by the current query's attention
    averaged over all heads of the layer; keep the best `n` of the prompt, then after each new
    token drop the lowest-scored unprotected state. Returns held[step][b][g] -> positions."""
    B, _, T, _ = prefill_attn.shape

    def head_mean(attn: torch.Tensor, b: int, q: int, k: int) -> float:
        total = 0.0
        for h in range(H):
            total += float(attn[b, h, q, k])
        return total / H

    caches = []
    for b in range(B):
        score = {j: head_mean(prefill_attn, b, T - 1, j) for j in range(T)}
        protected = set(range(sinks)) | set(range(T - window, T))
        others = sorted((j for j in range(T) if j not in protected), key=lambda j: -score[j])
        caches.append(sorted(protected | set(others[: n - len(protected)])))
    held = [[[list(cache) for _ in range(H_KV)] for cache in caches]]
    for step, row in enumerate(rows):
        for b in range(B):
            cache = [*caches[b], T + step]
            score = {p: head_mean(row, b, 0, k) for k, p in enumerate(cache)}
            if len(cache) > n:
                cache.remove(min(cache[sinks : len(cache) - window], key=lambda p: score[p]))
            caches[b] = cache
        held.append([[list(cache) for _ in range(H_KV)] for cache in caches])
    return held


@pytest.mark.parametrize(
    ("T", "keep", "sinks", "window", "seed"),
    [(30, 0.5, 0, 0, 0), (41, 0.3, 0, 0, 1), (25, 0.4, 2, 3, 2), (12, 0.1, 0, 0, 3)],
)
def test_matches_naive_loop(T: int, keep: float, sinks: int, window: int, seed: int) -> None:
    """Prefill and 8 decode steps keep exactly the states of the naive loop."""
    generator = torch.Generator().manual_seed(seed)
    config = Config(Budget(keep=keep, sinks=sinks, window=window))
    n = config.budget.tokens(T)
    prefill_attn = causal_attention(2, T, generator)
    rows = [row_attention(2, n + 1, generator) for _ in range(8)]
    ours = run_press(make_press(config), prefill_attn, rows)
    assert [p.tolist() for p in ours] == naive_tova(prefill_attn, rows, n, sinks, window)


def test_smollm2_keeps_quality_at_a_quarter_of_the_cache(smollm2) -> None:  # noqa: F811
    """On the real model, TOVA at a quarter of the prompt beats the recent-only window of the
    same budget, stays near the full cache, and decoding holds the budget in all 30 layers."""
    model, tokenizer = smollm2
    ids = tokenizer(TEXT, return_tensors="pt").input_ids

    full = continuation_perplexity(model, ids, 30)
    window = continuation_perplexity(
        model, ids, 30, recent_baseline.make_press(recent_baseline.config_for(0.25))
    )
    tova = continuation_perplexity(model, ids, 30, make_press(config_for(0.25)))
    assert tova < 0.7 * window
    assert tova < 1.35 * full

    _, cache = generate(model, ids[:, :60], max_new_tokens=4, press=make_press(config_for(0.5)))
    assert {tuple(k.shape) for k in cache.keys} == {(1, 3, 30, 64)}
    assert cache.seen == 63
