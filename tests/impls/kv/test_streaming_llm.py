"""StreamingLLM: sinks plus recent window, exact budget at prefill and during decoding."""

from __future__ import annotations

import pytest
import torch

from reference_impls.kv import recent
from reference_impls.kv.base import Budget
from reference_impls.kv.streaming_llm import Config, config_for, make_press, sink_window_index
from reference_impls.llm.llama import TINY_LLAMA, KVCache, generate

from ..llm.common import (
    TEXT,
    continuation_perplexity,
    fake_context,
    prompt,
    smollm2,  # noqa: F401 (a fixture)
    tiny_llama,
)


def uniform_attention(T_new: int, T: int) -> torch.Tensor:
    """StreamingLLM ignores attention: any causal probabilities do. `(1, H, T_new, T)`."""
    scores = torch.zeros(1, TINY_LLAMA.heads, T_new, T)
    mask = torch.ones(T_new, T, dtype=torch.bool).triu(T - T_new + 1)
    return scores.masked_fill(mask, float("-inf")).softmax(dim=-1)


def stream(press, T: int, steps: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """Positions held (KV head 0) after prefill of `T` tokens and after each decode step."""
    positions = torch.arange(T).expand(1, TINY_LLAMA.kv_heads, T)
    keys, _ = press.prefill(fake_context(0, positions, uniform_attention(T, T), seen=0))
    held = [keys[0, 0, :, 0].long().tolist()]
    for step in range(steps):
        kept = keys[..., 0].long()  # (1, H_kv, n)
        new = torch.full((1, TINY_LLAMA.kv_heads, 1), T + step)
        positions = torch.cat([kept, new], dim=2)
        ctx = fake_context(0, positions, uniform_attention(1, positions.shape[2]), seen=T + step)
        keys, _ = press.decode(ctx)
        assert torch.equal(keys[:, 0], keys[:, 1]), "every KV head keeps the same positions"
        held.append(keys[0, 0, :, 0].long().tolist())
    return held


def test_config_needs_a_sink() -> None:
    """A StreamingLLM config without attention sinks is rejected."""
    with pytest.raises(AssertionError):
        Config(Budget(keep=0.5, sinks=0))


def test_config_for_maps_keep_and_keeps_four_sinks() -> None:
    assert config_for(0.3).budget == Budget(keep=0.3, sinks=4)
    assert config_for(1.7).budget.keep == 1.0


def test_prefill_keeps_exact_budget_in_every_layer() -> None:
    """After prefill every layer holds exactly Budget.tokens(T) entries per KV head."""
    model = tiny_llama()
    cache = KVCache()
    with torch.no_grad():
        model(prompt(40), cache, make_press(config_for(0.3)))
    assert [cache.length(layer) for layer in range(TINY_LLAMA.depth)] == [12] * TINY_LLAMA.depth
    assert cache.keys[0].shape == (1, TINY_LLAMA.kv_heads, 12, TINY_LLAMA.head_dim)


def test_decode_never_exceeds_the_budget() -> None:
    """Generation on the tiny model: each decode step evicts one entry, the size stays at n."""
    model = tiny_llama()
    tokens, cache = generate(model, prompt(40), max_new_tokens=8, press=make_press(config_for(0.3)))
    assert tokens.shape == (1, 8)
    assert cache.seen == 47
    assert [cache.length(layer) for layer in range(TINY_LLAMA.depth)] == [12] * TINY_LLAMA.depth


def test_sinks_and_recent_window_are_kept() -> None:
    """The first 4 tokens and the most recent ones are held after prefill and every step."""
    held = stream(make_press(config_for(0.3)), T=40, steps=6)
    for step, positions in enumerate(held):
        last = 39 + step
        assert positions == [0, 1, 2, 3, *range(last - 7, last + 1)]


def test_sink_window_index_keeps_everything_under_the_cap() -> None:
    assert sink_window_index(5, 8, 4, torch.device("cpu")).tolist() == [0, 1, 2, 3, 4]
    assert sink_window_index(9, 6, 4, torch.device("cpu")).tolist() == [0, 1, 2, 3, 7, 8]


def naive_streaming(T: int, steps: int, n: int, sinks: int) -> list[list[int]]:
    """The paper's streaming cache token by token: append, and when over the cap, drop the
    oldest token that is not an attention sink."""
    cache: list[int] = []
    held = []
    for token in range(T + steps):
        cache.append(token)
        if len(cache) > n:
            del cache[sinks]
        if token >= T - 1:
            held.append(list(cache))
    return held


@pytest.mark.parametrize(("T", "keep", "sinks"), [(40, 0.3, 4), (25, 0.5, 1), (17, 0.1, 4)])
def test_matches_token_by_token_streaming(T: int, keep: float, sinks: int) -> None:
    """Prefill-then-trim and per-step eviction give the positions of a token-by-token stream."""
    config = Config(Budget(keep=keep, sinks=sinks))
    n = config.budget.tokens(T)
    assert stream(make_press(config), T, steps=7) == naive_streaming(T, 7, n, sinks)


def test_smollm2_sinks_beat_a_plain_window(smollm2) -> None:  # noqa: F811
    """On the real model, the 4 sinks cut the perplexity of a plain window of the same budget
    (the paper's central observation), stay near the full cache, and decoding holds the budget."""
    model, tokenizer = smollm2
    ids = tokenizer(TEXT, return_tensors="pt").input_ids

    full = continuation_perplexity(model, ids, 30)
    window = continuation_perplexity(model, ids, 30, recent.make_press(recent.config_for(0.25)))
    streaming = continuation_perplexity(model, ids, 30, make_press(config_for(0.25)))
    assert streaming < 0.6 * window
    assert streaming < 2.0 * full  # a quarter of the cache: no collapse (1.76x on this text)

    _, cache = generate(model, ids[:, :60], max_new_tokens=4, press=make_press(config_for(0.5)))
    assert {cache.length(layer) for layer in range(len(cache))} == {30}
    assert cache.seen == 63
