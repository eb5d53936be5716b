"""Random KV eviction (baseline)."""

from __future__ import annotations

import torch

from reference_impls.kv import random as random_kv
from reference_impls.kv.base import Budget
from reference_impls.llm.llama import TINY_LLAMA, KVCache

from ..llm.common import prompt, tiny_llama


def test_exact_budget_and_protected_tokens() -> None:
    """40 tokens at keep 0.25 with 2 sinks and 3 window tokens: exactly 10 kept, those 5 among them."""
    model = tiny_llama()
    ids = prompt(40)
    press = random_kv.make_press(random_kv.Config(Budget(keep=0.25, sinks=2, window=3)))
    cache, plain = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, cache, press)
        model(ids, plain)
    for layer in range(TINY_LLAMA.depth):
        keys, full = cache.keys[layer], plain.keys[layer]
        assert keys.shape == (1, TINY_LLAMA.kv_heads, 10, TINY_LLAMA.head_dim)
        for position in (0, 1, 37, 38, 39):
            row = full[:, :, position : position + 1]
            assert ((keys - row).abs().sum(-1) == 0).any(dim=-1).all(), (layer, position)


def test_budget_rounding() -> None:
    assert Budget(keep=0.5).tokens(41) == 21
    assert Budget(keep=0.1, sinks=4, window=8).tokens(40) == 12  # never below the protected
    assert Budget(keep=1.0).tokens(7) == 7


def test_kept_entries_are_a_seeded_subset_in_order() -> None:
    """Kept rows are original rows, in order; the same seed keeps the same rows."""
    model = tiny_llama()
    ids = prompt(30)
    runs = []
    for _ in range(2):
        cache = KVCache()
        with torch.no_grad():
            model(ids, cache, random_kv.make_press(random_kv.Config(Budget(keep=0.5), seed=5)))
        runs.append(cache.keys[0])
    torch.testing.assert_close(runs[0], runs[1])


def test_matches_a_naive_loop() -> None:
    """Per KV head: the entries with the 15 largest draws, in original order."""
    model = tiny_llama()
    ids = prompt(30)
    full, cache = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, random_kv.make_press(random_kv.Config(Budget(keep=0.5), seed=9)))
    generator = torch.Generator().manual_seed(9)
    draws = torch.rand(1, TINY_LLAMA.kv_heads, 30, generator=generator)  # layer 0 draws first
    for head in range(TINY_LLAMA.kv_heads):
        order = sorted(range(30), key=lambda t: -float(draws[0, head, t]))[:15]
        expected = torch.stack([full.keys[0][0, head, t] for t in sorted(order)])
        torch.testing.assert_close(cache.keys[0][0, head], expected)
