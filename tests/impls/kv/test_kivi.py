"""KIVI: per-channel keys, per-token values, a full-precision residual, the packed size."""

from __future__ import annotations

import pytest
import torch

from reference_impls.kv import kivi
from reference_impls.llm.llama import TINY_LLAMA, KVCache, PressContext, generate

from ..llm.common import prompt, smollm2, tiny_llama  # noqa: F401

B, H, D = 1, TINY_LLAMA.kv_heads, TINY_LLAMA.head_dim
SMALL = kivi.Config(bits=2, group=4, residual=8)


def random_kv(T: int, seed: int = 0, batch: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(batch, H, T, D, generator=generator)
    keys[..., 1] *= 20  # an outlier channel, as KIVI observes in keys
    return keys, torch.randn(batch, H, T, D, generator=generator)


def context(
    layer: int, keys: torch.Tensor, values: torch.Tensor, new: int, seen: int
) -> PressContext:
    """What the model hands a press: everything the layer holds, `new` tokens last."""
    batch, T = keys.shape[0], keys.shape[2]
    return PressContext(
        layer=layer,
        keys=keys,
        values=values,
        queries=torch.zeros(batch, TINY_LLAMA.heads, new, D),
        attn=torch.zeros(batch, TINY_LLAMA.heads, new, T),
        hidden=torch.zeros(batch, new, TINY_LLAMA.width),
        cache=KVCache(),
        seen=seen,
        config=TINY_LLAMA,
    )


def run_press(press: kivi.KiviPress, keys: torch.Tensor, values: torch.Tensor, prefill: int):
    """Prefill with the first `prefill` tokens, then decode the rest one at a time, as the model
    would (stored cache + the new token); yields what the press stores after every step."""
    stored_k, stored_v = press.prefill(
        context(0, keys[:, :, :prefill], values[:, :, :prefill], prefill, 0)
    )
    yield stored_k, stored_v
    for t in range(prefill, keys.shape[2]):
        k = torch.cat([stored_k, keys[:, :, t : t + 1]], dim=2)
        v = torch.cat([stored_v, values[:, :, t : t + 1]], dim=2)
        stored_k, stored_v = press.decode(context(0, k, v, 1, t))
        yield stored_k, stored_v


# --- (i) invariants ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dim", [2, 3])
def test_quantization_error_within_half_a_step(bits: int, dim: int) -> None:
    """|x - deq(q(x))| <= scale / 2 per entry, scale = (max - min) / (2^bits - 1) of its group."""
    x, _ = random_kv(16, seed=bits)
    codes, scale, zero = kivi.quantize(x, bits, 4, dim)
    assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 2**bits - 1
    back = kivi.dequantize(codes, scale, zero, 4, dim)
    # The bound, group by group, from the group's own min and max.
    moved = x.movedim(dim, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, 4)  # (..., n/G, G)
    step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / (2**bits - 1)
    bound = step.expand_as(groups).reshape(moved.shape).movedim(-1, dim) / 2
    assert ((x - back).abs() <= bound * (1 + 1e-5) + 1e-7).all()
    assert ((x - back).abs() > 0).any()  # it does quantize


def test_keys_per_channel_values_per_token() -> None:
    """Keys share a scale within a channel over G tokens; values within a token over G channels."""
    keys, values = random_kv(8)
    _, key_scale, _ = kivi.quantize(keys, 2, 4, dim=2)
    _, value_scale, _ = kivi.quantize(values, 2, 4, dim=3)
    assert key_scale.shape == (B, H, 2, D, 1)  # two groups of 4 tokens, one per channel
    assert value_scale.shape == (B, H, 8, 2, 1)  # per token, two groups of 4 channels
    # The outlier channel gets its own, wider range; no other channel pays for it.
    assert (key_scale[:, :, :, 1] > 5 * key_scale[:, :, :, 0]).all()


def test_constant_group_is_exact() -> None:
    x = torch.full((1, 1, 4, 4), 0.3)
    assert torch.equal(kivi.fake_quantize(x, 2, 4, dim=2), x)


def test_prefill_split_residual_exact() -> None:
    """After prefill: keys quantized in whole blocks of R, the T % R rest and the last R values exact."""
    keys, values = random_kv(21)
    press = kivi.make_press(SMALL)
    k, v = press.prefill(context(0, keys, values, 21, 0))
    assert press.splits[0] == kivi.LayerSplit(keys=16, values=13)
    assert torch.equal(k[:, :, 16:], keys[:, :, 16:]) and torch.equal(
        v[:, :, 13:], values[:, :, 13:]
    )
    assert torch.equal(k[:, :, :16], kivi.quantize_keys(keys[:, :, :16], 2, 4))
    assert torch.equal(v[:, :, :13], kivi.quantize_values(values[:, :, :13], 2, 4))
    assert (k[:, :, :16] != keys[:, :, :16]).any() and (v[:, :, :13] != values[:, :, :13]).any()


def test_decode_keeps_the_split() -> None:
    """Each step: the key residual is quantized when it reaches R, one value leaves the window,
    what was quantized before is not touched again, the residual stays exact."""
    keys, values = random_kv(40)
    press = kivi.make_press(SMALL)
    previous = None
    for T, (k, v) in enumerate(run_press(press, keys, values, prefill=13), start=13):
        split = press.splits[0]
        assert k.shape[2] == v.shape[2] == T
        assert split.keys == T - T % 8 and split.values == max(0, T - 8)
        assert torch.equal(k[:, :, split.keys :], keys[:, :, split.keys : T])
        assert torch.equal(v[:, :, split.values :], values[:, :, split.values : T])
        if previous is not None:
            old_k, old_v, old_split = previous
            assert torch.equal(k[:, :, : old_split.keys], old_k[:, :, : old_split.keys])
            assert torch.equal(v[:, :, : old_split.values], old_v[:, :, : old_split.values])
        previous = (k, v, split)
    assert press.splits[0] == kivi.LayerSplit(keys=40, values=32)


def test_packed_bytes_hand_computed() -> None:
    """2-bit codes, an fp16 scale and zero per group, fp16 residual, summed exactly."""
    model = tiny_llama()
    press = kivi.make_press(SMALL)
    cache = KVCache()
    with torch.no_grad():
        model(prompt(21), cache, press)
    # Per layer and KV head (D = 8, G = 4, R = 8, T = 21):
    keys = 16 * 8 * 2 // 8 + (16 // 4) * 8 * 2 * 2 + 5 * 8 * 2  # codes, scale+zero, residual
    values = 13 * 8 * 2 // 8 + 13 * (8 // 4) * 2 * 2 + 8 * 8 * 2
    assert (keys, values) == (240, 258)
    assert press.packed_bytes(cache) == TINY_LLAMA.depth * H * (keys + values) == 2988
    full = kivi.make_press(kivi.config_for(1.0))
    assert full.packed_bytes(cache) == cache.nbytes() // 2  # fp16 of our fp32 cache


def test_identity_at_keep_one() -> None:
    """config_for(1.0) switches quantization off: same logits as no press, prefill and decode."""
    config = kivi.config_for(1.0)
    assert config.bits == 16
    model = tiny_llama()
    ids = prompt(30)
    with torch.no_grad():
        plain, pressed, press = KVCache(), KVCache(), kivi.make_press(config)
        for start, stop in ((0, 20), *((t, t + 1) for t in range(20, 30))):
            a = model(ids[:, start:stop], plain)
            b = model(ids[:, start:stop], pressed, press)
            assert torch.equal(a, b)
    assert all(
        torch.equal(x, y)
        for x, y in zip(plain.keys + plain.values, pressed.keys + pressed.values, strict=True)
    )


def test_config_for_reads_keep_as_bits() -> None:
    assert [kivi.config_for(k).bits for k in (1.0, 0.9, 0.5, 0.3, 0.25, 0.2, 0.05)] == [
        16,
        8,
        8,
        4,
        4,
        2,
        2,
    ]


def test_config_ranges_checked() -> None:
    with pytest.raises(AssertionError):
        kivi.Config(bits=3)
    with pytest.raises(AssertionError):
        kivi.Config(group=4, residual=6)
    with pytest.raises(ValueError, match="head_dim"):
        kivi.make_press(kivi.Config(group=16, residual=16)).prefill(
            context(0, *random_kv(20), 20, 0)
        )


# --- (ii) on the models -------------------------------------------------------------------------


def test_generate_on_tiny_model() -> None:
    """Cache lengths stay exact (KIVI evicts nothing) and the split follows decoding."""
    model = tiny_llama()
    press = kivi.make_press(SMALL)
    tokens, cache = generate(model, prompt(21), max_new_tokens=6, press=press)
    assert tokens.shape == (1, 6)
    assert [cache.length(layer) for layer in range(TINY_LLAMA.depth)] == [26] * TINY_LLAMA.depth
    assert all(split == kivi.LayerSplit(24, 18) for split in press.splits.values())
    assert press.packed_bytes(cache) < 0.75 * cache.nbytes() / 2  # tiny heads: G = 4 costs a lot


def test_smollm2_answers_with_a_2bit_cache(smollm2) -> None:  # noqa: F811
    """The real model still answers from a 2-bit cache at about 45% of the fp16 size."""
    model, tokenizer = smollm2
    text = (
        "Paris is the capital and largest city of France. Berlin is the capital of Germany. "
        "Question: What is the capital of France? Answer: The capital of France is"
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    press = kivi.make_press(kivi.Config(bits=2, group=16, residual=16))
    tokens, cache = generate(model, ids, max_new_tokens=2, press=press)
    assert tokenizer.decode(tokens[0]).startswith(" Paris")
    assert press.splits[0].keys == 32 and press.splits[0].values == cache.length(0) - 16
    assert press.packed_bytes(cache) < 0.5 * cache.nbytes() / 2
    # the real packed cache: the same next token, int32 words of 16 codes; 40% of fp32 here (33
    # tokens: the 16 full-precision values and the fp32 scales weigh on so short a prompt)
    packed = kivi.KiviCache(kivi.Config(bits=2, group=16, residual=16))
    with torch.no_grad():
        logits = model(ids, packed)
    assert int(logits[0, -1].argmax()) == int(tokens[0, 0])
    assert packed.keys.layers[0].quantized.words.dtype == torch.int32  # type: ignore[attr-defined]
    full = sum(2 * 3 * packed.length(layer) * 64 * 4 for layer in range(len(packed)))
    assert packed.nbytes() < 0.45 * full


# --- real packed storage: KiviCache ------------------------------------------------------------


def test_pack_codes_hand_computed() -> None:
    """Code j of a word sits at bits [j * bits, (j + 1) * bits), the official layout."""
    codes = torch.zeros(1, 16, dtype=torch.long)
    codes[0, 0], codes[0, 15] = 3, 1  # 2 bits: 3 + (1 << 30)
    assert kivi.pack_codes(codes, 2, dim=1).tolist() == [[3 + 2**30]]
    codes[0, 15] = 2  # bit 31 set: the int32 word reads negative, its bits are the same
    word = kivi.pack_codes(codes, 2, dim=1)
    assert word.dtype == torch.int32 and word.tolist() == [[3 + 2**31 - 2**32]]
    assert torch.equal(kivi.unpack_codes(word, 2, dim=1).long(), codes)
    small = kivi.pack_codes(torch.tensor([[1, 2, 3, 0]]), 2, dim=1, word_bits=8)
    assert small.dtype == torch.uint8 and small.tolist() == [[1 + (2 << 2) + (3 << 4)]]
    with pytest.raises(ValueError, match="words"):
        kivi.pack_codes(torch.zeros(1, 8, dtype=torch.long), 2, dim=1)  # 8 codes, 16 per word


@pytest.mark.parametrize(
    ("bits", "word_bits", "dim"), [(2, 32, 2), (4, 32, 3), (8, 8, 2), (2, 8, 3)]
)
def test_pack_roundtrip(bits: int, word_bits: int, dim: int) -> None:
    generator = torch.Generator().manual_seed(bits + dim)
    codes = torch.randint(0, 2**bits, (2, 3, 32, 16), generator=generator)
    words = kivi.pack_codes(codes, bits, dim, word_bits)
    assert words.shape[dim] == codes.shape[dim] * bits // word_bits
    assert torch.equal(kivi.unpack_codes(words, bits, dim).long(), codes)


def test_kivi_cache_equals_the_press_on_the_model() -> None:
    """Same logits at prefill and every decoding step as the press form, entry for entry; the
    split and the bytes held equal what the press reports (fp32 model: float_bytes 4)."""
    config = kivi.Config(bits=2, group=4, residual=8, float_bytes=4, word_bits=8)
    model = tiny_llama()
    ids = prompt(30)
    plain, packed, press = KVCache(), kivi.KiviCache(config), kivi.make_press(config)
    with torch.no_grad():
        for start, stop in ((0, 21), *((t, t + 1) for t in range(21, 30))):
            a = model(ids[:, start:stop], plain, press)
            b = model(ids[:, start:stop], packed)
            assert torch.equal(a, b)
    assert packed.seen == 30 and packed.length(0) == 30 and packed.length(5) == 0
    for layer in range(TINY_LLAMA.depth):
        assert packed.quantized(layer) == press.splits[layer] == kivi.LayerSplit(24, 22)
        assert torch.equal(packed.keys[layer], plain.keys[layer])
        assert torch.equal(packed.values[layer], plain.values[layer])
    # tiny heads: a float32 scale and zero per 4 entries cost more than the 2-bit codes save
    assert packed.nbytes() == press.packed_bytes(plain) == 7656 < plain.nbytes() == 11520


def test_kivi_cache_holds_packed_words() -> None:
    """What is stored is integer words, scales, zero points and the residual, nothing else."""
    config = kivi.Config(bits=4, group=4, residual=8, word_bits=8)
    cache = kivi.KiviCache(config)
    with torch.no_grad():
        tiny_llama()(prompt(21), cache)
    side = cache.keys
    stored = side.layers[0]  # type: ignore[attr-defined]
    assert stored.quantized.words.dtype == torch.uint8
    assert stored.quantized.words.shape == (1, H, 16 // 2, D)  # 2 codes of 4 bits per byte
    assert stored.residual.shape == (1, H, 5, D)
    values = cache.values.layers[0]  # type: ignore[attr-defined]
    assert values.quantized.words.shape == (1, H, 13, D // 2) and values.residual.shape[2] == 8
    # nothing else is held behind a view: every stored tensor owns exactly its bytes
    held = 0
    for side in (cache.keys, cache.values):
        for layer in side.layers:  # type: ignore[attr-defined]
            tensors = (layer.quantized.words, layer.quantized.scale, layer.quantized.zero)
            for t in (*tensors, layer.residual):
                assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
                held += t.untyped_storage().nbytes()
    assert held == cache.nbytes()


def test_kivi_cache_bytes_against_fp16() -> None:
    """One layer, 3 KV heads, 1024 tokens, head_dim 64, float16, 2 bits, G = 32, R = 128 (the
    official settings): 187,392 bytes held, 23.8% of the 786,432 of the float16 cache.
    Keys: 1024 quantized: 1024 * 64 / 16 words * 4 B + 32 groups * 64 * 2 * 2 B, per head;
    values: 896 quantized: 896 * 4 words * 4 B + 896 * 2 groups * 2 * 2 B, 128 fp16 rows."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 3, 1024, 64, generator=generator).half()
    values = torch.randn(1, 3, 1024, 64, generator=generator).half()
    cache = kivi.KiviCache(kivi.Config())
    cache.keys.append(keys)
    cache.values.append(values)
    per_head = (16384 + 8192) + (14336 + 7168 + 16384)
    assert cache.nbytes() == 3 * per_head == 187_392
    assert (keys.numel() + values.numel()) * 2 == 786_432
    assert cache.quantized(0) == kivi.LayerSplit(1024, 896)
    # what the model reads back is KIVI's quantized cache
    assert torch.equal(cache.keys[0], kivi.quantize_keys(keys, 2, 32))
    assert torch.equal(cache.values[0][:, :, :896], kivi.quantize_values(values[:, :, :896], 2, 32))
    assert torch.equal(cache.values[0][:, :, 896:], values[:, :, 896:])


def test_kivi_cache_checks_word_fit_and_is_plain_at_16_bits() -> None:
    model = tiny_llama()
    with pytest.raises(ValueError, match="word_bits=8"):  # head_dim 8 < 16 codes per int32
        model(prompt(10), kivi.KiviCache(kivi.Config(bits=2, group=4, residual=16)))
    assert kivi.config_for(0.2, head_dim=8).word_bits == 8
    assert kivi.config_for(0.2, head_dim=64).word_bits == 32
    ids = prompt(12)
    with torch.no_grad():
        plain, full = KVCache(), kivi.KiviCache(kivi.config_for(1.0))
        assert torch.equal(model(ids, plain), model(ids, full))
    assert full.nbytes() == plain.nbytes()


# --- (iii) equivalence with a naive loop ---------------------------------------------------------


def naive_quantize(group: list[torch.Tensor], bits: int) -> list[torch.Tensor]:
    """One group of scalars, asymmetric min/max quantization, entry by entry."""
    low, high = min(group), max(group)
    levels = 2**bits - 1
    scale = (high - low) / levels
    if scale == 0:
        return [low.clone() for _ in group]
    return [((x - low) / scale).round().clamp(0, levels) * scale + low for x in group]


def naive_kivi(keys: torch.Tensor, values: torch.Tensor, prefill: int, c: kivi.Config):
    """KIVI's prefill and decoding (the paper's Algorithm 1) with plain loops over heads,
    tokens and channels; yields the stored keys and values after every step."""
    Bn, Hn, T, Dn = keys.shape
    out_k, out_v = keys.clone(), values.clone()
    quantized_k = quantized_v = 0
    for length in range(prefill, T + 1):
        while length - quantized_k >= c.residual:  # a full residual block of keys
            for b in range(Bn):
                for h in range(Hn):
                    for start in range(quantized_k, quantized_k + c.residual, c.group):
                        for d in range(Dn):
                            group = [keys[b, h, t, d] for t in range(start, start + c.group)]
                            for i, q in enumerate(naive_quantize(group, c.bits)):
                                out_k[b, h, start + i, d] = q
            quantized_k += c.residual
        while length - quantized_v > c.residual:  # the oldest value leaves the window
            t = quantized_v
            for b in range(Bn):
                for h in range(Hn):
                    for start in range(0, Dn, c.group):
                        group = [values[b, h, t, d] for d in range(start, start + c.group)]
                        for i, q in enumerate(naive_quantize(group, c.bits)):
                            out_v[b, h, t, start + i] = q
            quantized_v += 1
        yield out_k[:, :, :length].clone(), out_v[:, :, :length].clone()


@pytest.mark.parametrize("bits", [2, 4])
def test_matches_naive_loop(bits: int) -> None:
    """Prefill and 15 decoding steps equal the naive loop exactly, entry for entry."""
    config = kivi.Config(bits=bits, group=4, residual=8)
    keys, values = random_kv(28, seed=bits, batch=2)
    steps = zip(
        run_press(kivi.make_press(config), keys, values, 13),
        naive_kivi(keys, values, 13, config),
        strict=True,
    )
    for (k, v), (naive_k, naive_v) in steps:
        assert torch.equal(k, naive_k) and torch.equal(v, naive_v)
