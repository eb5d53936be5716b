"""The tiny text encoder, its padding, hook points, adapter and token-selection helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reference_impls.text.encoder import (
    TINY_ENCODER,
    Block,
    RouteState,
    TextEncoder,
    TextTokenState,
    attach,
    attention_received,
    compact,
    gather,
)

from .common import LENGTHS, device_param, inputs, random_attention, tiny_encoder


@device_param
@pytest.mark.parametrize("pre_norm", [False, True])
def test_shapes_and_token_records(device: str, pre_norm: bool) -> None:
    """Logits (B, classes); every block sees all N tokens and each sample's real length."""
    model = tiny_encoder(device=device, pre_norm=pre_norm)
    ids, mask = inputs(device=device)
    with torch.no_grad():
        logits = model(ids, mask)
        tokens, out_mask = model.forward_tokens(ids, mask)
    assert logits.shape == (3, TINY_ENCODER.num_classes) and torch.isfinite(logits).all()
    assert tokens.shape == (3, 32, TINY_ENCODER.width) and torch.equal(out_mask, mask)
    assert model.token_counts() == [(32, 32)] * TINY_ENCODER.depth
    assert model.token_lengths() == [(tuple(LENGTHS), tuple(LENGTHS))] * TINY_ENCODER.depth


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padded_batch_equals_each_sample_alone(pre_norm: bool) -> None:
    """Padding is invisible: a sample's logits do not depend on the batch it is padded into."""
    model = tiny_encoder(pre_norm=pre_norm)
    ids, mask = inputs()
    with torch.no_grad():
        batched = model(ids, mask)
        for b, n in enumerate(LENGTHS):
            alone = model(ids[b : b + 1, :n], mask[b : b + 1, :n])
            torch.testing.assert_close(batched[b : b + 1], alone, rtol=1e-5, atol=1e-6)


def test_padding_ids_do_not_reach_real_tokens() -> None:
    """Whatever sits in the padding, the real tokens' outputs are bit-identical."""
    model = tiny_encoder()
    ids, mask = inputs()
    other = ids.masked_fill(~mask, 7)
    with torch.no_grad():
        a, _ = model.forward_tokens(ids, mask)
        b, _ = model.forward_tokens(other, mask)
    torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=0)


def test_bad_inputs_are_refused() -> None:
    model = tiny_encoder()
    ids, mask = inputs()
    with pytest.raises(ValueError, match="CLS"):
        model(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, TINY_ENCODER.max_len + 1, dtype=torch.long))


def test_a_missing_mask_means_all_real() -> None:
    model = tiny_encoder()
    ids, _ = inputs([12, 12])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids, torch.ones_like(ids, dtype=torch.bool)))


def test_hooks_see_attention_and_are_restored() -> None:
    """The mid hook sees (B, H, N, N) attention with rows summing to one and zero padding
    columns; hooks and routers are removed on exit, also after an exception."""
    model = tiny_encoder()
    ids, mask = inputs()
    seen: list[TextTokenState] = []

    def spy(state: TextTokenState) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(state)
        return state.x, state.mask

    with torch.no_grad():
        reference = model(ids, mask)
        with attach(model, mid={1: spy}, post={2: spy}):
            same = model(ids, mask)
    torch.testing.assert_close(same, reference, rtol=0, atol=0)
    assert [s.index for s in seen] == [1, 2] and all(s.input_len == 32 for s in seen)
    attn = seen[0].attn
    assert attn.shape == (3, TINY_ENCODER.heads, 32, 32)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, TINY_ENCODER.heads, 32))
    assert (attn * ~mask[:, None, None, :]).abs().max() == 0
    with pytest.raises(RuntimeError, match="boom"), attach(model, mid={0: spy}, post={3: spy}):
        raise RuntimeError("boom")
    blocks = [b for b in model.blocks if isinstance(b, Block)]
    assert all(
        b.mid_reducer is None and b.post_reducer is None and b.router is None for b in blocks
    )
    with pytest.raises(ValueError, match="out of range"), attach(model, mid={4: spy}):
        pass


def test_a_router_replaces_the_block() -> None:
    """A router that runs the block on every token is the plain block."""
    model = tiny_encoder()
    ids, mask = inputs()

    def everything(state: RouteState) -> tuple[torch.Tensor, torch.Tensor]:
        return state.x + state.block.residual(state.x, state.mask), state.mask

    with torch.no_grad():
        reference = model(ids, mask)
        with attach(model, routers={0: everything, 2: everything}):
            routed = model(ids, mask)
    torch.testing.assert_close(routed, reference, rtol=1e-5, atol=1e-6)


# --- helpers ----------------------------------------------------------------------------------


def test_compact_keeps_order_and_pads() -> None:
    x = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    keep = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    out, mask = compact(x, keep)
    assert out.shape == (2, 3, 1)
    assert out[..., 0].tolist() == [[0.0, 2.0, 3.0], [5.0, 6.0, 0.0]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]


def test_gather_rows() -> None:
    x = torch.randn(2, 6, 3)
    index = torch.tensor([[0, 5], [2, 3]])
    torch.testing.assert_close(gather(x, index), torch.stack([x[0, [0, 5]], x[1, [2, 3]]]))
    assert gather(x[..., 0] > 0, index).shape == (2, 2)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_attention_received_matches_a_loop(exclude_self: bool) -> None:
    """Sum over heads and real queries j of A[j, i] (j != i with exclude_self)."""
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    attn = random_attention(2, 3, mask, seed=0)
    got = attention_received(attn, mask, exclude_self)
    for b in range(2):
        for i in range(5):
            total = 0.0
            for h in range(3):
                for j in range(5):
                    if mask[b, j] and not (exclude_self and i == j):
                        total += float(attn[b, h, j, i])
            assert math.isclose(float(got[b, i]), total, abs_tol=1e-12)


# --- equivalence with a naive per-token BERT layer ----------------------------------------------


def _naive_bert(model: TextEncoder, ids: list[int]) -> torch.Tensor:
    """Post-LN BERT for one unpadded sequence, token by token and head by head: logits (classes,)."""
    c = model.config
    d = c.width // c.heads

    def ln(v: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
        return F.layer_norm(v, (c.width,), norm.weight, norm.bias, 1e-12)

    xs = [
        ln(model.tok_embed.weight[t] + model.pos_embed.weight[p], model.embed_norm)
        for p, t in enumerate(ids)
    ]
    for block in model.blocks:
        w, bias = block.attn.qkv.weight, block.attn.qkv.bias
        q = [w[: c.width] @ x + bias[: c.width] for x in xs]
        k = [w[c.width : 2 * c.width] @ x + bias[c.width : 2 * c.width] for x in xs]
        v = [w[2 * c.width :] @ x + bias[2 * c.width :] for x in xs]
        hs = []
        for i in range(len(xs)):
            heads = []
            for h in range(c.heads):
                s = slice(h * d, (h + 1) * d)
                scores = torch.stack([q[i][s] @ k[j][s] / math.sqrt(d) for j in range(len(xs))])
                p = scores.softmax(0)
                heads.append(sum(p[j] * v[j][s] for j in range(len(xs))))
            attended = block.attn.proj(torch.cat(heads))
            hs.append(ln(xs[i] + attended, block.norm1))
        xs = [ln(h + block.mlp.fc2(F.gelu(block.mlp.fc1(h))), block.norm2) for h in hs]
    return model.head(xs[0])


def test_matches_a_naive_bert() -> None:
    model = tiny_encoder()
    ids, mask = inputs([7, 5])
    with torch.no_grad():
        logits = model(ids, mask)
        for b, n in enumerate([7, 5]):
            expected = _naive_bert(model, ids[b, :n].tolist())
            torch.testing.assert_close(logits[b], expected, rtol=1e-4, atol=1e-5)
