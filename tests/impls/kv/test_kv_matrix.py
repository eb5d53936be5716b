"""One matrix over every registered KV-cache method, on the tiny LLaMA."""

from __future__ import annotations

import importlib

import pytest
import torch

from reference_impls.kv.base import Budget
from reference_impls.llm.llama import TINY_LLAMA, KVCache, generate
from reference_impls.registry import ImplInfo, discover, kv_config_for

from ..llm.common import prompt, tiny_llama

KV = [impl for impl in discover() if impl.module.startswith("reference_impls.kv.")]


@pytest.mark.parametrize("impl", KV, ids=lambda i: i.name)
def test_identity_at_full_budget(impl: ImplInfo) -> None:
    """keep = 1: logits, keys and values equal the run without a press, prefill and ten decoding
    steps alike."""
    module = importlib.import_module(impl.module)
    model = tiny_llama()
    ids = prompt(30)
    press = module.make_press(kv_config_for(module, 1.0, TINY_LLAMA.head_dim))
    plain, pressed = KVCache(), KVCache()
    with torch.no_grad():
        for chunk in (ids[:, :20], *ids[:, 20:].split(1, dim=1)):
            torch.testing.assert_close(
                model(chunk, pressed, press), model(chunk, plain), rtol=0, atol=0
            )
    for layer in range(TINY_LLAMA.depth):
        torch.testing.assert_close(pressed.keys[layer], plain.keys[layer], rtol=0, atol=0)
        torch.testing.assert_close(pressed.values[layer], plain.values[layer], rtol=0, atol=0)
    assert pressed.length(0) == 30


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
