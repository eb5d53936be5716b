"""One matrix over every registered KV-cache method, on the tiny LLaMA."""

from __future__ import annotations

import importlib

import pytest
import torch

from reference_impls.kv.base import Budget
from reference_impls.llm.llama import TINY_LLAMA, KVCache, generate
from reference_impls.registry import ImplInfo, discover, kv_config_for

from .common import prompt, tiny_llama

KV = [impl for impl in discover() if impl.module.startswith("reference_impls.kv.")]


@pytest.mark.parametrize("impl", KV, ids=lambda i: i.name)
def test_identity_at_full_budget(impl: ImplInfo) -> None:
    """keep = 1: the cache and the logits are exactly those of the model without a press."""
    module = importlib.import_module(impl.module)
    model = tiny_llama()
    ids = prompt(40)
    with torch.no_grad():
        plain_cache, pressed_cache = KVCache(), KVCache()
        plain = model(ids, plain_cache)
        pressed = model(
            ids, pressed_cache, module.make_press(kv_config_for(module, 1.0, TINY_LLAMA.head_dim))
        )
        next_plain = model(ids[:, -1:], plain_cache)
        next_pressed = model(
            ids[:, -1:],
            pressed_cache,
            module.make_press(kv_config_for(module, 1.0, TINY_LLAMA.head_dim)),
        )
    torch.testing.assert_close(pressed, plain, rtol=0, atol=0)
    torch.testing.assert_close(next_pressed, next_plain, rtol=0, atol=0)
    for layer in range(TINY_LLAMA.depth):
        torch.testing.assert_close(
            pressed_cache.keys[layer], plain_cache.keys[layer], rtol=0, atol=0
        )


@pytest.mark.parametrize("impl", KV, ids=lambda i: i.name)
def test_compresses_and_generates(impl: ImplInfo) -> None:
    """keep = 0.5: generation runs; eviction and merging methods hold no more than the budget."""
    module = importlib.import_module(impl.module)
    model = tiny_llama()
    tokens, cache = generate(
        model,
        prompt(40),
        max_new_tokens=4,
        press=module.make_press(kv_config_for(module, 0.5, TINY_LLAMA.head_dim)),
    )
    assert tokens.shape == (1, 4)
    assert cache.seen == 43
    if impl.family in ("kv-eviction",):
        total = sum(cache.length(layer) for layer in range(len(cache)))
        assert total <= TINY_LLAMA.depth * (Budget(keep=0.5).tokens(40) + 3)
        assert total < TINY_LLAMA.depth * 43
