"""Shared pieces for the LLM tests: a tiny random LLaMA, prompts, the real SmolLM2 (once)."""

from __future__ import annotations

import pytest
import torch

from reference_impls.llm.llama import TINY_LLAMA, KVCache, Llama, PressContext

H, H_KV = TINY_LLAMA.heads, TINY_LLAMA.kv_heads

# A paragraph written for these tests (no dataset text), for perplexity on the real model.
TEXT = (
    "The old observatory stands on a hill above the town, and on clear nights its dome opens "
    "slowly with a sound like a distant train. Volunteers run it now. They keep a logbook by the "
    "door where every visitor writes the date, the weather and what they hoped to see. Most come "
    "for the moon or for Saturn, whose rings surprise almost everyone the first time. In winter "
    "the telescope is pointed at the great nebula in Orion, a faint green cloud where new stars "
    "are still forming. The volunteers explain that the light reaching the eyepiece left the "
    "nebula more than a thousand years ago, before the observatory, the town or even the old "
    "road below it existed. Children usually ask whether anyone lives there. The answer is always "
    "the same: nobody knows, but it is a good question, and good questions are why the dome opens "
    "at all. On cloudy nights the volunteers drink tea, repair the clock drive and wait."
)


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(TINY_LLAMA).eval()
    for p in model.parameters():  # a larger init than nn.Linear's, so attention is not uniform
        torch.nn.init.normal_(p, std=0.3)
    return model


def prompt(length: int = 40, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_LLAMA.vocab_size, (1, length), generator=generator)


@pytest.fixture(scope="session")
def smollm2():  # type: ignore[no-untyped-def]
    """The real pretrained model and tokenizer, loaded once per test session."""
    from reference_impls.llm.smollm2 import load_smollm2

    return load_smollm2()


def fake_context(
    layer: int, positions: torch.Tensor, attn: torch.Tensor, seen: int
) -> PressContext:
    """A layer's context whose keys and values carry their token position in channel 0."""
    B, _, T = positions.shape
    keys = torch.zeros(B, H_KV, T, TINY_LLAMA.head_dim, dtype=attn.dtype)
    keys[..., 0] = positions.to(attn.dtype)
    T_new = attn.shape[2]
    queries = torch.zeros(B, H, T_new, TINY_LLAMA.head_dim, dtype=attn.dtype)
    hidden = torch.zeros(B, T_new, TINY_LLAMA.width, dtype=attn.dtype)
    return PressContext(
        layer, keys, keys.clone(), queries, attn, hidden, KVCache(), seen, TINY_LLAMA
    )


def causal_attention(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """Random peaked causal attention probabilities `(B, H, T, T)` in float64."""
    logits = 3 * torch.randn(B, H, T, T, generator=generator, dtype=torch.float64)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    return logits.masked_fill(mask, float("-inf")).softmax(dim=-1)


@torch.no_grad()
def continuation_perplexity(
    model: Llama, ids: torch.Tensor, tail: int, press: object = None
) -> float:
    """Perplexity of the last `tail` tokens of `ids (1, T)`: the prefix goes through the press
    at prefill, then the tail is read in one pass against the compressed cache."""
    prefix = ids.shape[1] - tail
    cache = KVCache()
    first = model(ids[:, :prefix], cache, press)[:, -1:]  # type: ignore[arg-type]
    rest = model(ids[:, prefix:-1], cache, press)  # type: ignore[arg-type]
    logits = torch.cat([first, rest], dim=1)[0]
    return float(torch.nn.functional.cross_entropy(logits, ids[0, prefix:]).exp())


def run_press(press, prefill_attn: torch.Tensor, rows: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Drive a press with fake contexts on layer 0. Positions `(B, H_kv, n)` held after prefill and after each decode step."""
    B, _, T, _ = prefill_attn.shape
    positions = torch.arange(T).expand(B, H_KV, T)
    keys, _ = press.prefill(fake_context(0, positions, prefill_attn, seen=0))
    held = [keys[..., 0].long()]
    for step, row in enumerate(rows):
        positions = torch.cat([held[-1], torch.full((B, H_KV, 1), T + step)], dim=2)
        assert row.shape[-1] == positions.shape[2]
        keys, _ = press.decode(fake_context(0, positions, row, seen=T + step))
        held.append(keys[..., 0].long())
    return held
