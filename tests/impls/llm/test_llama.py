"""Our LLaMA equals transformers' on the same weights; the cache and hooks behave."""

from __future__ import annotations

import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from reference_impls.llm.llama import TINY_LLAMA, KVCache, PressContext, generate, perplexity
from reference_impls.llm.smollm2 import from_transformers

from .common import prompt, smollm2, tiny_llama  # noqa: F401


def hf_tiny(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = HFConfig(
        vocab_size=TINY_LLAMA.vocab_size,
        hidden_size=TINY_LLAMA.width,
        intermediate_size=TINY_LLAMA.mlp_hidden,
        num_hidden_layers=TINY_LLAMA.depth,
        num_attention_heads=TINY_LLAMA.heads,
        num_key_value_heads=TINY_LLAMA.kv_heads,
        head_dim=TINY_LLAMA.head_dim,
        rope_theta=TINY_LLAMA.rope_theta,
        rms_norm_eps=TINY_LLAMA.rms_eps,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


def test_logits_match_transformers_exactly() -> None:
    """Same weights, same logits (minGPT's test_huggingface_import in spirit)."""
    reference = hf_tiny()
    ours = from_transformers(reference)
    ids = prompt(25)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, rtol=1e-4, atol=1e-4)


def test_incremental_decoding_equals_one_pass() -> None:
    """Prefill then token-by-token decoding with the cache gives the one-pass logits."""
    model = tiny_llama()
    ids = prompt(30)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache()
        steps = [model(ids[:, :20], cache)]
        for t in range(20, 30):
            steps.append(model(ids[:, t : t + 1], cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache.seen == 30 and cache.length(0) == 30 and len(cache) == TINY_LLAMA.depth
    assert cache.keys[0].shape == (1, TINY_LLAMA.kv_heads, 30, TINY_LLAMA.head_dim)


def test_press_hooks_see_the_layer() -> None:
    seen: list[tuple[str, int, tuple[int, ...], tuple[int, ...]]] = []

    class Spy:
        def prefill(self, ctx: PressContext) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(("prefill", ctx.layer, tuple(ctx.keys.shape), tuple(ctx.attn.shape)))
            return ctx.keys, ctx.values

        def decode(self, ctx: PressContext) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(("decode", ctx.layer, tuple(ctx.keys.shape), tuple(ctx.attn.shape)))
            return ctx.keys[:, :, 1:], ctx.values[:, :, 1:]  # evict the oldest token

    model = tiny_llama()
    tokens, cache = generate(model, prompt(12), max_new_tokens=3, press=Spy())
    assert tokens.shape == (1, 3)
    assert seen[0] == ("prefill", 0, (1, 2, 12, 8), (1, 6, 12, 12))
    assert ("decode", 2, (1, 2, 13, 8), (1, 6, 1, 13)) in seen
    assert cache.length(0) == 12  # 12 + two decode steps, one eviction each
    assert cache.seen == 14


def test_perplexity_is_finite_and_press_aware() -> None:
    model = tiny_llama()
    ids = prompt(30)
    assert 1.0 < perplexity(model, ids, prefix=10) < 1e6


def test_smollm2_is_genuinely_pretrained(smollm2) -> None:  # noqa: F811
    """Greedy "The capital of France is" continues with " Paris" (needs the real weights)."""
    model, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    tokens, _ = generate(model, ids, max_new_tokens=2)
    assert tokenizer.decode(tokens[0]).startswith(" Paris")
