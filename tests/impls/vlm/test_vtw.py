"""VTW: no visual token from layer K on, text intact, identity past the depth, decoding continues,
the prefill against a plain loop over the layers."""

from __future__ import annotations

import pytest
import torch

from reference_impls.llm.llama import KVCache, Layer
from reference_impls.vlm import vtw
from reference_impls.vlm.llava import Llava, LlmState, attach, rotary_for

from .common import DEPTH, PREFIX, SUFFIX, N, inputs, run, tiny_llava

FULL = PREFIX + N + SUFFIX
TEXT = PREFIX + SUFFIX


@pytest.mark.parametrize("layer", [0, 1, 3, DEPTH - 1])
@torch.no_grad()
def test_no_visual_token_from_layer_k_on(layer: int) -> None:
    """Counts per layer and cache lengths per layer, before and after three decode steps."""
    model = tiny_llava()
    cache = KVCache()
    prefix, images, suffix = inputs()
    with vtw.patch(model, vtw.Config(layer=layer)):
        logits = model.prefill(prefix, images, suffix, cache=cache)
        assert model.counts.visual == [N] * layer + [0] * (DEPTH - layer)
        assert model.counts.text == [TEXT] * DEPTH
        assert logits.shape[1] == TEXT
        lengths = [FULL] * layer + [TEXT] * (DEPTH - layer)
        assert [cache.length(i) for i in range(DEPTH)] == lengths
        assert cache.seen == FULL  # the next token's position, as if nothing was withdrawn
        for step in range(3):
            token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            logits = model.step(token, cache)
            assert logits.shape[:2] == (2, 1) and torch.isfinite(logits).all()
            assert [cache.length(i) for i in range(DEPTH)] == [n + step + 1 for n in lengths]
        assert cache.seen == FULL + 3


@pytest.mark.parametrize("layer", [DEPTH, DEPTH + 5])
def test_identity_when_k_reaches_the_depth(layer: int) -> None:
    model = tiny_llava()
    reference = run(model)
    with vtw.patch(model, vtw.Config(layer=layer)):
        same = run(model)
        assert model.counts.visual == [N] * DEPTH
        assert model.llm_reducers == {}
    for got, want in zip(same, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@torch.no_grad()
def naive_prefill(model: Llava, layer: int) -> tuple[torch.Tensor, list[int]]:
    """The paper's rule with a plain loop: run the layers one by one on the embedded prompt; just
    before layer `layer`, rebuild the sequence from the text tokens only (index by index), each
    keeping its original position. Returns the last token's logits `(B, vocab)` and the tokens
    (by original position) that layers `layer..` saw."""
    prefix, images, suffix = inputs()
    llm = model.llm
    visual = model.projector(model.encode(images).hidden[-1][:, 1:])  # (B, N, C)
    x = torch.cat([llm.embed_tokens(prefix), visual, llm.embed_tokens(suffix)], dim=1)
    B = x.shape[0]
    positions = list(range(FULL))
    cache = KVCache()
    for index, block in enumerate(llm.layers):
        assert isinstance(block, Layer)
        if index == layer:
            text = [i for i, p in enumerate(positions) if not PREFIX <= p < PREFIX + N]
            x = torch.stack([torch.stack([x[b, i] for i in text]) for b in range(B)])
            positions = [positions[i] for i in text]
        cos, sin = rotary_for(torch.tensor([positions] * B), llm.config)
        x = x + block.self_attn(block.input_layernorm(x), index, cache, cos, sin, None, 0)
        x = x + block.mlp(block.post_attention_layernorm(x))
    return llm.lm_head(llm.norm(x))[:, -1], positions


@pytest.mark.parametrize("layer", [1, 4])
@torch.no_grad()
def test_prefill_equals_the_naive_loop(layer: int) -> None:
    model = tiny_llava()
    expected, seen = naive_prefill(model, layer)
    assert seen == [*range(PREFIX), *range(PREFIX + N, FULL)]
    with vtw.patch(model, vtw.Config(layer=layer)):
        got = model.prefill(*inputs())[:, -1]
    torch.testing.assert_close(got, expected)


@torch.no_grad()
def test_text_hidden_states_are_untouched_by_the_cut() -> None:
    """The withdrawal keeps every text token's hidden state and position, bit for bit."""
    model = tiny_llava()
    seen: list[LlmState] = []

    def spy(state: LlmState) -> tuple[torch.Tensor, torch.Tensor, int]:
        seen.append(state)
        return vtw.withdraw_visual(state)

    with attach(model, llm={2: spy}):
        model.prefill(*inputs())
    state = seen[0]
    hidden, positions, visual = vtw.withdraw_visual(state)
    assert visual == 0 and hidden.shape == (2, TEXT, state.hidden.shape[2])
    text = [*range(PREFIX), *range(PREFIX + N, FULL)]
    assert positions.tolist() == [text, text]
    torch.testing.assert_close(hidden, state.hidden[:, text], rtol=0, atol=0)


@torch.no_grad()
def test_kl_search_picks_the_first_layer_under_the_threshold() -> None:
    model = tiny_llava()
    kl = vtw.withdrawal_kl(model, *inputs())
    assert len(kl) == DEPTH - 1 and all(value >= -1e-6 for value in kl)
    # the divergence at K is that of the prefill withdrawn at K, measured directly
    with vtw.patch(model, vtw.Config(layer=3)):
        cut = model.prefill(*inputs())[:, -1].log_softmax(dim=-1)
    full = model.prefill(*inputs())[:, -1].log_softmax(dim=-1)
    direct = float((cut.exp() * (cut - full)).sum(dim=-1).mean())
    assert kl[2] == pytest.approx(direct, rel=1e-5, abs=1e-7)
    assert vtw.choose_layer([0.9, 0.5, 0.05, 0.2, 0.01], 0.1) == 3
    assert vtw.choose_layer([0.9, 0.5], 0.1) == 3  # none: no withdrawal (K = depth)
    assert vtw.choose_layer(kl, max(kl)) == 1


def test_config_for() -> None:
    assert vtw.config_for(0.5, depth=8) == vtw.Config(layer=4)
    assert vtw.config_for(1.0, depth=8).layer == 8  # identity
    assert vtw.config_for(2.0, depth=8).layer == 8
    assert vtw.config_for(0.25) == vtw.Config(layer=8)
    with pytest.raises(AssertionError):
        vtw.Config(layer=-1)
