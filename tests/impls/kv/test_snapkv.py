"""SnapKV: exact budgets, the observation window kept, a naive loop, the real model."""

from __future__ import annotations

import pytest
import torch

from reference_impls.kv import recent, snapkv
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


def naive_snapkv(
    attn: torch.Tensor, n: int, window: int, kernel: int, kv_heads: int
) -> list[list[list[int]]]:
    """The paper's selection with plain loops: per batch row and KV head, the kept positions."""
    B, H, T, _ = attn.shape
    groups = H // kv_heads
    prefix = T - window
    kept = []
    for b in range(B):
        rows = []
        for g in range(kv_heads):
            pooled_per_head = []
            for h in range(g * groups, (g + 1) * groups):
                votes = []
                for j in range(prefix):
                    total = 0.0
                    for q in range(T - window, T):
                        total += float(attn[b, h, q, j])
                    votes.append(total)
                pooled = []
                for j in range(prefix):
                    lo, hi = max(0, j - kernel // 2), min(prefix, j + kernel // 2 + 1)
                    pooled.append(max(votes[lo:hi]))
                pooled_per_head.append(pooled)
            score = [sum(p[j] for p in pooled_per_head) / groups for j in range(prefix)]
            ranked = sorted(range(prefix), key=lambda j: (-score[j], j))
            rows.append(sorted(ranked[: n - window]) + list(range(prefix, T)))
        kept.append(rows)
    return kept


def test_observation_window_shrinks_with_the_budget() -> None:
    """32 tokens by default, never more than half the budget, at least one."""
    assert snapkv.observation_window(200, 32) == 32
    assert snapkv.observation_window(40, 32) == 20
    assert snapkv.observation_window(3, 32) == 1
    assert snapkv.observation_window(1, 32) == 1


@pytest.mark.parametrize(("length", "keep"), [(40, 0.25), (40, 0.5), (37, 0.75), (23, 0.1)])
def test_every_layer_keeps_exactly_the_budget(length: int, keep: float) -> None:
    """After prefill every layer and KV head holds exactly Budget.tokens(T) entries."""
    model = tiny_llama()
    cache = KVCache()
    with torch.no_grad():
        model(prompt(length), cache, snapkv.make_press(snapkv.config_for(keep)))
    n = Budget(keep=keep).tokens(length)
    for layer in range(TINY_LLAMA.depth):
        assert cache.keys[layer].shape == (1, TINY_LLAMA.kv_heads, n, TINY_LLAMA.head_dim)
        assert cache.values[layer].shape == cache.keys[layer].shape


def test_observation_window_is_kept_and_the_rest_is_a_subset() -> None:
    """The last w entries are the window; the others are prompt entries in their order."""
    model = tiny_llama()
    ids = prompt(40)
    full, cache = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, snapkv.make_press(snapkv.config_for(0.5)))
    w = snapkv.observation_window(20, 32)  # 10
    for layer in range(TINY_LLAMA.depth):
        kept, every = cache.keys[layer][0], full.keys[layer][0]
        torch.testing.assert_close(kept[:, -w:], every[:, -w:], rtol=0, atol=0)
        for head in range(TINY_LLAMA.kv_heads):
            where = [int((every[head] == row).all(dim=-1).nonzero()[0]) for row in kept[head, :-w]]
            assert where == sorted(where) and len(set(where)) == len(where)
            assert max(where) < 40 - w


def test_sinks_are_kept() -> None:
    """With Budget.sinks = 2 the first two entries survive in every head."""
    model = tiny_llama()
    ids = prompt(40)
    full, cache = KVCache(), KVCache()
    config = snapkv.Config(Budget(keep=0.25, sinks=2))
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, snapkv.make_press(config))
    for layer in range(TINY_LLAMA.depth):
        torch.testing.assert_close(cache.keys[layer][:, :, :2], full.keys[layer][:, :, :2])


def test_decoding_appends_to_the_compressed_cache() -> None:
    """Generation on the tiny model: n entries after prefill, one more per decoding step."""
    model = tiny_llama()
    tokens, cache = generate(
        model, prompt(40), max_new_tokens=5, press=snapkv.make_press(snapkv.config_for(0.5))
    )
    assert tokens.shape == (1, 5) and cache.seen == 44
    assert all(cache.length(layer) == 20 + 4 for layer in range(TINY_LLAMA.depth))


def test_scores_match_a_naive_loop_on_random_attention() -> None:
    """snapkv_index equals the loop version exactly, ties included (values on a 1/64 grid)."""
    generator = torch.Generator().manual_seed(0)
    B, H, kv_heads, T = 2, 6, 2, 30
    attn = torch.randint(0, 64, (B, H, T, T), generator=generator).double() / 64
    for n, window, kernel in [(12, 5, 7), (20, 8, 3), (9, 1, 1), (15, 6, 5)]:
        index = snapkv.snapkv_index(attn, n, window, kernel, "max", kv_heads)
        assert index.tolist() == naive_snapkv(attn, n, window, kernel, kv_heads)


def test_press_matches_a_naive_loop_on_the_tiny_model() -> None:
    """The press keeps the entries the loop version picks from the model's own attention."""
    model = tiny_llama()
    ids = prompt(33)
    spy, full, cache = Spy(), KVCache(), KVCache()
    with torch.no_grad():
        model(ids, full, spy)
        model(ids, cache, snapkv.make_press(snapkv.config_for(0.4)))
    n = Budget(keep=0.4).tokens(33)  # 14
    w = snapkv.observation_window(n, 32)  # 7
    for layer in range(TINY_LLAMA.depth):
        kept = naive_snapkv(spy.attn[layer], n, w, 7, TINY_LLAMA.kv_heads)[0]
        for head, positions in enumerate(kept):
            torch.testing.assert_close(
                cache.values[layer][0, head], full.values[layer][0, head, positions]
            )


def test_smollm2_exact_budget_and_attention_beats_recency(smollm2) -> None:  # noqa: F811
    """On the real model: exact counts in all 30 layers, and the pass key early in the prompt
    is better remembered than by a recent window of the same size (lower answer perplexity)."""
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
    cache = KVCache()
    with torch.no_grad():
        model(ids, cache, snapkv.make_press(snapkv.config_for(0.5)))
    n = Budget(keep=0.5).tokens(T)
    assert [cache.length(layer) for layer in range(30)] == [n] * 30
    assert cache.keys[0].shape[1] == 3  # per KV head, not per query head
    both = torch.cat([ids, answer], dim=1)
    attended = perplexity(model, both, T, snapkv.make_press(snapkv.config_for(0.5)))
    recency = perplexity(model, both, T, recent.make_press(recent.config_for(0.5)))
    assert attended < recency
