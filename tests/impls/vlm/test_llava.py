"""The tiny LLaVA: cache, positions, hooks and counts; and one matrix over every VLM method."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import Tensor, nn

from reference_impls.llm.llama import KVCache
from reference_impls.registry import ImplInfo, discover
from reference_impls.vlm import llava
from reference_impls.vlm.llava import LlmState, VisualState, attach, keep_visual

from ..common import DEVICES
from .common import DEPTH, PREFIX, SUFFIX, N, images, inputs, prompt, run, tiny_llava

VLM = [impl for impl in discover() if impl.module.startswith("reference_impls.vlm.")]


class Spy:
    """An LLM reducer that records what it sees and changes nothing."""

    def __init__(self) -> None:
        self.states: list[LlmState] = []

    def __call__(self, state: LlmState) -> tuple[Tensor, Tensor, int]:
        self.states.append(state)
        return state.hidden, state.positions, state.visual_len


@torch.no_grad()
def test_unreduced_counts_and_shapes() -> None:
    model = tiny_llava()
    prefix, image, suffix = inputs()
    logits = model.prefill(prefix, image, suffix)
    assert logits.shape == (2, PREFIX + N + SUFFIX, 97)
    assert model.counts.encoder == N and model.counts.llm_input == N
    assert model.counts.visual == [N] * DEPTH
    assert model.counts.text == [PREFIX + SUFFIX] * DEPTH


@torch.no_grad()
def test_decoding_with_the_cache_equals_recomputing() -> None:
    """Each greedy step on the cache gives the logits of a fresh prefill of the longer prompt."""
    model = tiny_llava()
    prefix, image, suffix = inputs()
    cache = KVCache()
    logits = model.prefill(prefix, image, suffix, cache)
    text = suffix
    for _ in range(3):
        token = logits[:, -1].argmax(dim=-1, keepdim=True)
        text = torch.cat([text, token], dim=1)
        logits = model.step(token, cache)
        fresh = model.prefill(prefix, image, text)
        torch.testing.assert_close(logits[:, -1], fresh[:, -1], rtol=1e-4, atol=1e-4)
    assert cache.seen == PREFIX + N + text.shape[1]


def test_generate_is_greedy_decoding_on_the_cache() -> None:
    model = tiny_llava()
    last, tokens = run(model, steps=4)
    out, cache = llava.generate(model, *inputs(), max_new_tokens=4)
    assert torch.equal(out, tokens)
    assert cache.seen == PREFIX + N + SUFFIX + 3  # the last token is returned, not fed back
    assert torch.equal(out[:, 0], last.argmax(dim=-1))


@torch.no_grad()
def test_a_kv_press_runs_alongside_an_llm_reducer() -> None:
    """The KV method sees each layer's (already reduced) prompt and compresses its cache."""
    from reference_impls.kv import recent
    from reference_impls.vlm import fastv

    model = tiny_llava()
    budget = recent.config_for(0.5).budget
    press = recent.make_press(recent.config_for(0.5))
    with fastv.patch(model, fastv.Config(layer=2, ratio=0.5)):
        tokens, cache = llava.generate(model, *inputs(), max_new_tokens=3, press=press)
    full, pruned = PREFIX + N + SUFFIX, PREFIX + N // 2 + SUFFIX
    lengths = [cache.length(i) for i in range(DEPTH)]
    kept = [budget.tokens(full)] * 2 + [budget.tokens(pruned)] * (DEPTH - 2)
    assert lengths == [n + 2 for n in kept]  # two decoded tokens appended to each layer
    assert tokens.shape == (2, 3)


@torch.no_grad()
def test_text_only_prompt_equals_the_llama() -> None:
    """With no visual token the prefill is the LLaMA's own forward on the text."""
    model = tiny_llava()
    prefix, image, suffix = inputs()

    def nothing(state: VisualState) -> Tensor:
        return state.features.new_zeros(state.features.shape[0], 0, 48)

    with attach(model, visual=nothing):
        logits = model.prefill(prefix, image, suffix)
    assert model.counts.llm_input == 0 and model.counts.visual == [0] * DEPTH
    expected = model.llm(torch.cat([prefix, suffix], dim=1))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


class PoolingProjector(nn.Module):
    """A compressing projector (M = N / 4): 2x2 average pooling, then a linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 48)

    def forward(self, x: Tensor) -> Tensor:
        B, n, C = x.shape
        g = int(n**0.5)
        grid = x.transpose(1, 2).reshape(B, C, g, g)  # (B, C, g, g)
        pooled = nn.functional.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # (B, n/4, C)
        return self.linear(pooled)


@torch.no_grad()
def test_any_projector_plugs_in() -> None:
    model = tiny_llava(projector=PoolingProjector())
    last, tokens = run(model)
    assert model.counts.encoder == N and model.counts.llm_input == N // 4
    assert model.counts.visual == [N // 4] * DEPTH
    assert torch.isfinite(last).all() and tokens.shape == (2, 3)


def test_anyres_views() -> None:
    big = images(batch=1, size=64)  # 2x2 crops of 32x32
    views = llava.anyres_views(big, (2, 2), 32)
    assert views.shape == (1, 5, 3, 32, 32)
    torch.testing.assert_close(views[0, 0], nn.functional.avg_pool2d(big, 2)[0])
    torch.testing.assert_close(views[0, 2], big[0, :, :32, 32:])  # row 0, column 1
    torch.testing.assert_close(views[0, 3], big[0, :, 32:, :32])  # row 1, column 0
    model = tiny_llava()
    prefix, suffix = prompt(batch=1)
    with torch.no_grad():
        model.prefill(prefix, views, suffix)
    assert model.counts.encoder == 5 * N and model.counts.visual == [5 * N] * DEPTH


@torch.no_grad()
def test_encoder_attention_and_block_qk_agree() -> None:
    """The recorded attention is softmax(q k^T / sqrt(d)) per head of `block_qk`'s q and k."""
    model = tiny_llava()
    out = model.encode(images())
    block = model.vision.blocks[1]
    q, k = llava.block_qk(block, out.hidden[1])  # (B, 1+n, C)
    B, T, C = q.shape
    H = model.config.vision.heads
    qh = q.view(B, T, H, C // H).transpose(1, 2)
    kh = k.view(B, T, H, C // H).transpose(1, 2)
    attn = (qh @ kh.transpose(-2, -1) * (C // H) ** -0.5).softmax(dim=-1)
    torch.testing.assert_close(attn, out.attn[1])
    torch.testing.assert_close(kh.mean(dim=1), out.keys[1])
    assert len(out.hidden) == model.config.feature_block + 2  # blocks after it are not run


@torch.no_grad()
def test_query_attention_is_the_layers_attention() -> None:
    """`query_attention` recomputes the row a layer computes for its last token."""
    model = tiny_llava()
    spy_in, spy_next = Spy(), Spy()
    with attach(model, llm={3: spy_in, 4: spy_next}):
        model.prefill(*inputs())
    state = spy_in.states[0]
    row = llava.query_attention(model, 3, state.hidden, state.positions, -1)
    attn = spy_next.states[0].attn
    assert attn is not None
    torch.testing.assert_close(row, attn[:, :, -1], rtol=1e-5, atol=1e-6)
    # The naive definition: softmax over earlier keys of q . k / sqrt(d), GQA heads shared.
    c = model.config.llm
    layer = model.llm.layers[3]
    x = layer.input_layernorm(state.hidden)
    q = layer.self_attn.q_proj(x).view(2, -1, c.heads, c.head_dim).transpose(1, 2)
    k = layer.self_attn.k_proj(x).view(2, -1, c.kv_heads, c.head_dim).transpose(1, 2)
    cos, sin = llava.rotary_for(state.positions, c)
    q, k = llava.rotate(q, cos, sin), llava.rotate(k, cos, sin)
    for b in range(2):
        for h in range(c.heads):
            kv = h // (c.heads // c.kv_heads)
            scores = [float(q[b, h, -1] @ k[b, kv, j]) / c.head_dim**0.5 for j in range(q.shape[2])]
            expected = torch.tensor(scores).softmax(dim=0)
            torch.testing.assert_close(row[b, h], expected, rtol=1e-4, atol=1e-6)


def test_keep_visual_keeps_every_text_token() -> None:
    B, P, V, S, C = 2, 3, 6, 4, 5
    T = P + V + S
    hidden = torch.arange(B * T * C, dtype=torch.float32).view(B, T, C)
    positions = torch.arange(T).expand(B, T)
    state = LlmState(1, hidden, positions, P, V, None, hidden, V, tiny_llava())
    kept = torch.tensor([[0, 4], [1, 5]])
    extra = torch.full((B, 1, C), -1.0)
    out, pos, v = keep_visual(state, kept, extra, torch.tensor([[7], [8]]))
    assert v == 3 and out.shape == (B, P + 3 + S, C)
    assert pos.tolist() == [
        [0, 1, 2, 3, 7, 7, 9, 10, 11, 12],
        [0, 1, 2, 4, 8, 8, 9, 10, 11, 12],
    ]
    torch.testing.assert_close(out[:, :P], hidden[:, :P])
    torch.testing.assert_close(out[:, -S:], hidden[:, -S:])
    assert (out[:, P + 2] == -1).all()


def test_attach_checks_layers_and_restores() -> None:
    model = tiny_llava()
    with pytest.raises(ValueError, match="out of range"), attach(model, llm={DEPTH: Spy()}):
        pass
    with (
        pytest.raises(RuntimeError, match="boom"),
        attach(model, visual=lambda s: s.features, llm={1: Spy()}),
    ):
        raise RuntimeError("boom")
    assert model.visual_reducer is None and model.llm_reducers == {}
    assert "visual_reducer" not in model._modules


# --- the matrix over every registered VLM method ------------------------------------------------


def config_for(module: object, keep: float) -> object:
    return module.config_for(keep, depth=DEPTH)  # type: ignore[attr-defined]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", VLM, ids=lambda i: i.name)
def test_matrix(impl: ImplInfo, device: str) -> None:
    """Fewer visual tokens at 0.5 and never more later, text intact, exact identity at 1.0,
    the model restored."""
    module = importlib.import_module(impl.module)
    model = tiny_llava().to(device)
    reference = run(model, device=device)
    with module.patch(model, config_for(module, 0.5)):
        last, tokens = run(model, device=device)
        counts = model.counts
    assert torch.isfinite(last).all() and tokens.shape == reference[1].shape
    assert counts.text == [PREFIX + SUFFIX] * DEPTH, "text tokens were dropped"
    assert counts.visual == sorted(counts.visual, reverse=True), counts.visual
    assert counts.llm_input <= counts.encoder == N and counts.visual[-1] < N
    with module.patch(model, config_for(module, 1.0)):
        same = run(model, device=device)
        assert model.counts.visual == [N] * DEPTH
    for got, want in zip(same, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    after = run(model, device=device)
    for got, want in zip(after, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert model.visual_reducer is None and model.llm_reducers == {}


@pytest.mark.parametrize("impl", VLM, ids=lambda i: i.name)
def test_restored_after_an_exception(impl: ImplInfo) -> None:
    module = importlib.import_module(impl.module)
    model = tiny_llava()
    with pytest.raises(RuntimeError, match="boom"), module.patch(model, config_for(module, 0.5)):
        raise RuntimeError("boom")
    assert model.visual_reducer is None and model.llm_reducers == {}
