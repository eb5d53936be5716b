"""Recent-window KV cache (baseline)."""

from __future__ import annotations

import torch

from reference_impls.kv import recent
from reference_impls.kv.base import Budget
from reference_impls.llm.llama import TINY_LLAMA, KVCache

from ..llm.common import prompt, tiny_llama


def test_keeps_exactly_the_last_entries() -> None:
    model = tiny_llama()
    ids = prompt(40)
    full, cache = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, recent.make_press(recent.config_for(0.25)))
    for layer in range(TINY_LLAMA.depth):
        torch.testing.assert_close(cache.keys[layer], full.keys[layer][:, :, -10:])
        torch.testing.assert_close(cache.values[layer], full.values[layer][:, :, -10:])


def test_sinks_are_kept_with_the_window() -> None:
    """With 4 sinks at keep 0.25 of 40: the first 4 and the last 6 entries."""
    model = tiny_llama()
    ids = prompt(40)
    full, cache = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, recent.make_press(recent.Config(Budget(keep=0.25, sinks=4))))
    expected = torch.cat([full.keys[1][:, :, :4], full.keys[1][:, :, -6:]], dim=2)
    torch.testing.assert_close(cache.keys[1], expected)


def test_matches_a_naive_loop() -> None:
    model = tiny_llama()
    ids = prompt(23)
    full, cache = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, recent.make_press(recent.config_for(0.5)))
    n = 12  # ceil(0.5 * 23)
    for head in range(TINY_LLAMA.kv_heads):
        rows = [full.values[2][0, head, t] for t in range(23 - n, 23)]
        torch.testing.assert_close(cache.values[2][0, head], torch.stack(rows))
