"""MiniCache: adjacent layers share a SLERP direction, keep their magnitudes, retain distinct tokens."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.kv import minicache
from reference_impls.llm.llama import TINY_LLAMA, KVCache, generate

from ..llm.common import prompt, smollm2, tiny_llama  # noqa: F401

H, D = TINY_LLAMA.kv_heads, TINY_LLAMA.head_dim
ALL = minicache.Config(start=0.0)  # the tiny model (3 layers): pair (0, 1), layer 2 as it is


def random_pair(T: int = 24, seed: int = 0, batch: int = 2, dtype: torch.dtype = torch.float32):
    """Two layers' states, correlated as adjacent layers are, `(B, H_kv, T, D)` each."""
    generator = torch.Generator().manual_seed(seed)
    xa = torch.randn(batch, H, T, D, generator=generator, dtype=dtype)
    noise = torch.randn(batch, H, T, D, generator=generator, dtype=dtype)
    spread = torch.rand(batch, H, T, 1, generator=generator, dtype=dtype)  # some pairs far apart
    xb = 1.5 * xa + 2 * spread * noise
    return xa, xb


def prefill_caches(config: minicache.Config, length: int = 21):
    """The cache after prefill with the press, the press, and the cache without it."""
    model = tiny_llama()
    ids = prompt(length)
    press = minicache.make_press(config)
    pressed, plain = KVCache(), KVCache()
    with torch.no_grad():
        model(ids, pressed, press)
        model(ids, plain)
    return pressed, press, plain


# --- (i) invariants ---------------------------------------------------------------------------


def test_retained_tokens_restored_exactly() -> None:
    """Retained tokens are both layers' own vectors, bit for bit; the others are not."""
    xa, xb = random_pair()
    threshold = minicache.retention_threshold(minicache.angles(xa, xb) / math.pi, 0.7)
    restored_a, restored_b, retained = minicache.merge_pair(xa, xb, 0.6, threshold)
    assert 0 < int(retained.sum()) < retained.numel()
    assert torch.equal(restored_a[retained], xa[retained])
    assert torch.equal(restored_b[retained], xb[retained])
    assert (restored_a[~retained] != xa[~retained]).any(-1).all()


def test_reconstruction_error_is_the_chord_and_bounded() -> None:
    """A merged token moves by the chord of its angle to the shared direction: |x_a| 2 sin(t W / 2)
    and |x_b| 2 sin((1 - t) W / 2), so at most 2 |x| sin(max(t, 1 - t) pi tau / 2)."""
    xa, xb = random_pair()
    t, gamma = 0.6, 0.5
    omega = minicache.angles(xa, xb)
    tau = minicache.retention_threshold(omega / math.pi, gamma)
    restored_a, restored_b, retained = minicache.merge_pair(xa, xb, t, tau)
    merged = ~retained
    for restored, x, share in ((restored_a, xa, t), (restored_b, xb, 1 - t)):
        error = (restored - x).norm(dim=-1)
        chord = 2 * x.norm(dim=-1) * (share * omega / 2).sin()
        torch.testing.assert_close(error[merged], chord[merged], rtol=1e-4, atol=1e-5)
        bound = 2 * x.norm(dim=-1) * (max(t, 1 - t) * math.pi * tau[..., None] / 2).sin()
        assert (error[merged] <= bound[merged] + 1e-5).all()
        torch.testing.assert_close(restored.norm(dim=-1), x.norm(dim=-1))  # magnitudes kept


def test_identical_layers_reconstruct_exactly() -> None:
    """Two equal layers merge into themselves: nothing retained, no error."""
    xa, _ = random_pair()
    tau = minicache.retention_threshold(minicache.angles(xa, xa) / math.pi, 0.9)
    restored_a, restored_b, retained = minicache.merge_pair(xa, xa.clone(), 0.6, tau)
    assert not retained.any()
    torch.testing.assert_close(restored_a, xa, rtol=0, atol=1e-5)
    torch.testing.assert_close(restored_b, xa, rtol=0, atol=1e-5)


def test_parallel_states_share_direction_exactly() -> None:
    """Vectors of one direction and different lengths: the shared direction is that direction."""
    xa, _ = random_pair()
    direction = minicache.slerp(xa, 3 * xa, 0.6)
    torch.testing.assert_close(direction, xa / xa.norm(dim=-1, keepdim=True), rtol=0, atol=1e-6)


def test_prefill_rewrites_the_first_layer_of_a_pair() -> None:
    """After prefill both layers of the pair are restored from one shared direction (retained
    tokens as computed), the unpaired layer is untouched, every layer keeps every token."""
    pressed, press, plain = prefill_caches(ALL)
    assert [pressed.length(layer) for layer in range(3)] == [21, 21, 21]
    assert torch.equal(pressed.keys[2], plain.keys[2]) and torch.equal(
        pressed.values[2], plain.values[2]
    )
    for i, (a, b) in enumerate(
        ((pressed.keys[0], pressed.keys[1]), (pressed.values[0], pressed.values[1]))
    ):
        original_a = (plain.keys, plain.values)[i][0]
        original_b = (plain.keys, plain.values)[i][1]
        retained = press.pairs[0].retained[i]
        assert torch.equal(a[retained], original_a[retained]) and torch.equal(
            b[retained], original_b[retained]
        )
        ua, ub = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(ua[~retained], ub[~retained], rtol=0, atol=1e-5)
        torch.testing.assert_close(a.norm(dim=-1), original_a.norm(dim=-1))


def test_decoded_tokens_are_merged_too() -> None:
    """While decoding, new tokens of a pair share one direction unless retained; masks follow."""
    model = tiny_llama()
    press = minicache.make_press(ALL)
    _, cache = generate(model, prompt(21), max_new_tokens=7, press=press)
    assert [cache.length(layer) for layer in range(3)] == [27, 27, 27]
    for i, (a, b) in enumerate(
        ((cache.keys[0], cache.keys[1]), (cache.values[0], cache.values[1]))
    ):
        retained = press.pairs[0].retained[i]
        assert retained.shape == (1, H, 27)
        ua, ub = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(ua[~retained], ub[~retained], rtol=0, atol=1e-5)
        assert (ua[retained] - ub[retained]).norm(dim=-1).min() > 1e-3  # retained pairs differ


def test_packed_bytes_hand_computed() -> None:
    """Shared directions + two magnitudes per token + retained vectors and indices, in fp16."""
    T = 21
    unpaired = 2 * H * T * D * 2  # layer 2: keys and values in fp16
    shared = H * T * (D + 2) * 2  # per tensor of the pair: directions and two magnitudes
    # gamma = 1: nothing is above the largest distance, nothing is retained.
    pressed, press, _ = prefill_caches(minicache.Config(start=0.0, gamma=1.0), T)
    assert press.packed_bytes(pressed) == 2 * shared + unpaired == 1680 + 1344
    # gamma = 0: everything but the closest token of each head is retained (2 heads, 20 tokens).
    pressed, press, _ = prefill_caches(minicache.Config(start=0.0, gamma=0.0), T)
    assert [int(r.sum()) for r in press.pairs[0].retained] == [2 * 20, 2 * 20]
    retained = 2 * (2 * 20) * (2 * D * 2 + 4)  # keys and values: both layers' vectors + index
    assert press.packed_bytes(pressed) == 2 * shared + unpaired + retained == 1680 + 1344 + 2880
    # No pair: the fp16 size of the cache.
    pressed, press, _ = prefill_caches(minicache.config_for(1.0), T)
    assert press.packed_bytes(pressed) == pressed.nbytes() // 2


def test_identity_at_keep_one() -> None:
    """config_for(1.0) merges no layer: same logits as no press, prefill and decode."""
    config = minicache.config_for(1.0)
    assert config.pairs(TINY_LLAMA.depth) == [] and config.pairs(30) == []
    model = tiny_llama()
    ids = prompt(30)
    with torch.no_grad():
        plain, pressed, press = KVCache(), KVCache(), minicache.make_press(config)
        for start, stop in ((0, 20), *((t, t + 1) for t in range(20, 30))):
            assert torch.equal(
                model(ids[:, start:stop], plain), model(ids[:, start:stop], pressed, press)
            )


def test_pairs_and_config_for() -> None:
    """Half depth on (the paper's setting): SmolLM2's 30 layers give pairs (15, 16) ... (27, 28)."""
    assert minicache.Config().pairs(30) == [(a, a + 1) for a in range(15, 29, 2)]
    assert minicache.Config(start=0.0).pairs(3) == [(0, 1)]
    assert [minicache.config_for(k).start for k in (1.0, 0.75, 0.5, 0.2)] == [1.0, 0.5, 0.0, 0.0]
    with pytest.raises(AssertionError):
        minicache.Config(t=1.5)


# --- (ii) on the models -------------------------------------------------------------------------


def test_smollm2_answers_from_merged_layers(smollm2) -> None:  # noqa: F811
    """The real model, its second half merged in pairs, still answers; the cache shrinks to
    about 80% of fp16 (half the layers halved, plus magnitudes and retained tokens)."""
    model, tokenizer = smollm2
    text = (
        "Paris is the capital and largest city of France. Berlin is the capital of Germany. "
        "Question: What is the capital of France? Answer: The capital of France is"
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    press = minicache.make_press(minicache.Config())
    tokens, cache = generate(model, ids, max_new_tokens=2, press=press)
    assert tokenizer.decode(tokens[0]).startswith(" Paris")
    assert sorted(press.pairs) == list(range(15, 29, 2))
    retained = torch.cat([r.flatten() for pair in press.pairs.values() for r in pair.retained])
    assert 0 < retained.float().mean() < 0.2
    assert 0.75 < press.packed_bytes(cache) / (cache.nbytes() / 2) < 0.85


# --- (iii) equivalence with a naive loop ---------------------------------------------------------


def naive_merge(xa: torch.Tensor, xb: torch.Tensor, t: float, gamma: float):
    """The paper's merge with plain loops over batch, heads and tokens, in Python floats."""
    Bn, Hn, T, _ = xa.shape
    out_a, out_b = xa.clone(), xb.clone()
    retained = torch.zeros(Bn, Hn, T, dtype=torch.bool)
    for b in range(Bn):
        for h in range(Hn):
            rows = []
            for i in range(T):
                u = [float(v) for v in xa[b, h, i]]
                w = [float(v) for v in xb[b, h, i]]
                nu, nw = math.sqrt(sum(v * v for v in u)), math.sqrt(sum(v * v for v in w))
                cos = max(-1.0, min(1.0, sum(p * q for p, q in zip(u, w, strict=True)) / (nu * nw)))
                rows.append((u, w, nu, nw, math.acos(cos)))
            distances = [omega / math.pi for *_, omega in rows]
            tau = min(distances) + gamma * (max(distances) - min(distances))
            for i, (u, w, nu, nw, omega) in enumerate(rows):
                if omega / math.pi > tau:
                    retained[b, h, i] = True
                    continue
                wa = math.sin((1 - t) * omega) / math.sin(omega)
                wb = math.sin(t * omega) / math.sin(omega)
                e = [wa * p / nu + wb * q / nw for p, q in zip(u, w, strict=True)]
                out_a[b, h, i] = torch.tensor([nu * v for v in e], dtype=xa.dtype)
                out_b[b, h, i] = torch.tensor([nw * v for v in e], dtype=xa.dtype)
    return out_a, out_b, retained


@pytest.mark.parametrize("t", [0.6, 0.3])
def test_matches_naive_loop(t: float) -> None:
    """Merged states and retention masks equal the naive loop (float64, to rounding)."""
    xa, xb = random_pair(T=16, seed=int(10 * t), dtype=torch.float64)
    threshold = minicache.retention_threshold(minicache.angles(xa, xb) / math.pi, 0.7)
    restored_a, restored_b, retained = minicache.merge_pair(xa, xb, t, threshold)
    naive_a, naive_b, naive_retained = naive_merge(xa, xb, t, 0.7)
    assert torch.equal(retained, naive_retained) and retained.any() and not retained.all()
    torch.testing.assert_close(restored_a, naive_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(restored_b, naive_b, rtol=1e-12, atol=1e-12)
