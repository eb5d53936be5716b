"""One conformance matrix over every registered method, through the one way to apply it.

For each method of the registry (a new module is covered without touching this file): its
module conforms to its family's protocol; at keep 1 it is the identity (same tokens, same output);
at keep 0.5 fewer tokens reach the model (or, for KV quantization and merging, the cache holds
changed entries); after an in-model method's `with` block the model is bit-identical to what it
was (outputs, parameters, attributes, no hooks left). CPU always, CUDA where present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import reference_impls
from reference_impls import registry
from reference_impls.diffusion.dit import DiT, DiTConfig
from reference_impls.families import FAMILIES, family_of
from reference_impls.llm.llama import KVCache
from reference_impls.methods import method
from reference_impls.prompt.scorer import tiny_scorer
from reference_impls.registry import ImplInfo, discover
from reference_impls.text.encoder import TINY_ENCODER

from .common import DEVICES, TINY, images, tiny_vit
from .llm.common import prompt as llm_prompt
from .llm.common import tiny_llama
from .text.common import inputs as text_inputs
from .text.common import tiny_encoder
from .vlm.common import N as VISUAL_TOKENS
from .vlm.common import run as run_llava
from .vlm.common import tiny_llava

IMPLS = discover()


@dataclass(frozen=True)
class Outcome:
    outputs: tuple[Tensor, ...]  # what the model (or the method) produced
    tokens: int  # the fewest tokens any stage processed, or the cache held
    stages: tuple[int, ...] = ()  # tokens per stage where a method may only ever drop them


@dataclass(frozen=True)
class Harness:
    """How to build one family's tiny model, run it, and count its tokens."""

    build: Callable[[str], nn.Module]
    run: Callable[[nn.Module, str], Outcome]
    full: int  # tokens when nothing is reduced


def _vision(model: nn.Module, device: str) -> Outcome:
    out = model(images(device=device))
    stages = tuple(n for pair in model.token_counts() for n in pair)  # type: ignore[operator]
    return Outcome((out,), min(stages), stages)


def _vlm(model: nn.Module, device: str) -> Outcome:
    last, tokens = run_llava(model, device=device)  # type: ignore[arg-type]
    counts = model.counts  # type: ignore[union-attr]
    stages = (counts.encoder, counts.llm_input, *counts.visual)
    return Outcome((last, tokens), min(stages), stages)


# A padded batch whose longest sample fills the model (LTP's thresholds are scaled to max_len).
TEXT_LENGTHS = [TINY_ENCODER.max_len, 40, 18]


def _text(model: nn.Module, device: str) -> Outcome:
    ids, mask = text_inputs(TEXT_LENGTHS, device=device)
    out = model(ids, mask)
    return Outcome((out,), min(n for pair in model.token_counts() for n in pair))  # type: ignore[operator]


KV_PROMPT, KV_STEPS = 40, 4  # longer than KIVI's residual window for the tiny head size


def _kv(model: nn.Module, device: str) -> Outcome:
    ids = llm_prompt(KV_PROMPT + KV_STEPS).to(device)
    cache = KVCache()
    outputs = [model(ids[:, :KV_PROMPT], cache)]
    outputs += [model(token, cache) for token in ids[:, KV_PROMPT:].split(1, dim=1)]
    return Outcome((*outputs, *cache.keys, *cache.values), min(map(cache.length, range(3))))


DIT = DiTConfig(in_channels=4, image_size=16, patch_size=2, width=24, depth=2, heads=2)


def _dit(device: str) -> nn.Module:
    torch.manual_seed(0)
    return DiT(DIT).eval().to(device)


def _diffusion(model: nn.Module, device: str) -> Outcome:
    seen: list[int] = []
    hooks = [
        block.attn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
        for block in model.dit_blocks()  # type: ignore[operator]
    ]
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(2, 4, 16, 16, generator=generator).to(device)
    try:
        out = model(latent, torch.tensor([10.0, 500.0], device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return Outcome((out,), min(seen))


HARNESSES: dict[str, Harness] = {
    "vision": Harness(lambda d: tiny_vit(device=d), _vision, TINY.num_tokens),
    "vlm": Harness(lambda d: tiny_llava().to(d), _vlm, VISUAL_TOKENS),
    "text": Harness(lambda d: tiny_encoder(device=d), _text, TEXT_LENGTHS[0]),
    "kv": Harness(lambda d: tiny_llama().to(d), _kv, KV_PROMPT + KV_STEPS),
    "diffusion": Harness(_dit, _diffusion, DIT.grid[0] * DIT.grid[1]),
}


def test_every_in_model_family_has_a_harness() -> None:
    assert {p for p, f in FAMILIES.items() if f.role == "in-model"} == set(HARNESSES)


def test_every_module_conforms_to_its_family() -> None:
    assert registry.conformance_problems() == []


def snapshot(model: nn.Module) -> list[tuple[str, str, Any]]:
    """Every attribute of every submodule that an adapter could leave behind: public
    attributes, hooks, submodules, parameters and buffers (cloned)."""
    state: list[tuple[str, str, Any]] = []
    for name, module in model.named_modules():
        for key, value in sorted(vars(module).items()):
            if key in ("_parameters", "_buffers"):
                state += [
                    (name, k, None if t is None else t.detach().clone()) for k, t in value.items()
                ]
            elif key == "_modules":
                state.append((name, key, tuple(value)))
            elif "hooks" in key and isinstance(value, dict):
                state.append((name, key, len(value)))
            elif not key.startswith("_") and not isinstance(value, Tensor):
                state.append((name, key, value))
    return state


def same_snapshot(got: list[tuple[str, str, Any]], want: list[tuple[str, str, Any]]) -> None:
    assert [(n, k) for n, k, _ in got] == [(n, k) for n, k, _ in want]
    for (name, key, a), (_, _, b) in zip(got, want, strict=True):
        if isinstance(a, Tensor):
            assert torch.equal(a, b), f"{name}.{key} changed"
        else:
            assert a == b, f"{name}.{key}: {a!r} is not {b!r} again"


IN_MODEL = [i for i in IMPLS if family_of(i.module).role == "in-model"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IN_MODEL, ids=lambda i: i.name)
def test_in_model_method(impl: ImplInfo, device: str) -> None:
    """Identity at keep 1, fewer tokens at keep 0.5, the model bit-identical after the block."""
    package = family_of(impl.module).package
    harness = HARNESSES[package]
    model = harness.build(device)
    with torch.no_grad():
        reference = harness.run(model, device)
        before = snapshot(model)
        assert reference.tokens == harness.full
        with reference_impls.apply(model, impl.name, keep=1.0):
            same = harness.run(model, device)
        assert same.tokens == harness.full, f"{impl.name} reduced tokens at keep 1"
        # MoD's routers scale every update even at capacity 1 (they are trained with the model):
        # all tokens, not the same outputs.
        if impl.family != "token-skipping":
            exact = package in ("kv", "vlm") or impl.family == "pruning"
            for got, want in zip(same.outputs, reference.outputs, strict=True):
                torch.testing.assert_close(got, want, **({"rtol": 0, "atol": 0} if exact else {}))
        with reference_impls.apply(model, impl.name, keep=0.5):
            reduced = harness.run(model, device)
        assert all(torch.isfinite(t.float()).all() for t in reduced.outputs)
        assert list(reduced.stages) == sorted(reduced.stages, reverse=True), reduced.stages
        if package == "kv" and impl.family != "kv-eviction":
            changed = [
                not torch.equal(a, b)
                for a, b in zip(reduced.outputs, reference.outputs, strict=True)
            ]
            assert any(changed), f"{impl.name} left the cache as it was at keep 0.5"
        else:
            assert reduced.tokens < harness.full, f"{impl.name} reduced nothing at keep 0.5"
        after = harness.run(model, device)
    for got, want in zip(after.outputs, reference.outputs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    same_snapshot(snapshot(model), before)


@pytest.mark.parametrize("impl", IN_MODEL, ids=lambda i: i.name)
def test_in_model_method_restored_after_an_exception(impl: ImplInfo) -> None:
    harness = HARNESSES[family_of(impl.module).package]
    model = harness.build("cpu")
    before = snapshot(model)
    with (
        pytest.raises(RuntimeError, match="boom"),
        reference_impls.apply(model, impl.name, keep=0.5),
    ):
        raise RuntimeError("boom")
    same_snapshot(snapshot(model), before)


# --- input-side families: one verb each -------------------------------------------------------


PROMPT = [
    "Q: 2+2? A: 4.\n",
    "Q: 13+5? A: 18.\n",
    "Q: what is the capital of France? A: Paris.\n",
    "Q: 100-1? A: 99, as one less than a hundred.\n",
]
QUESTION = "Q: 9+1? A:"


@pytest.fixture(scope="module")
def scorer() -> Any:
    return tiny_scorer(tiny_llama())


@pytest.mark.parametrize(
    "impl", [i for i in IMPLS if family_of(i.module).package == "prompt"], ids=lambda i: i.name
)
def test_prompt_method(impl: ImplInfo, scorer: Any) -> None:
    text = "".join(PROMPT)
    whole = reference_impls.compress_prompt(impl.name, text, QUESTION, scorer, keep=1.0)
    assert whole.compressed_tokens == whole.original_tokens
    assert whole.positions == tuple(range(whole.original_tokens))
    half = reference_impls.compress_prompt(impl.name, text, QUESTION, scorer, keep=0.5)
    assert half.original_tokens == whole.original_tokens
    assert 0 < half.compressed_tokens < half.original_tokens
    assert list(half.positions) == sorted(set(half.positions))


def _video_tokens(device: str) -> Tensor:
    """Frame tokens `(B, T, N, C)`: 2 samples, 8 frames of 10 tokens."""
    return torch.randn(2, 8, 10, 6, generator=torch.Generator().manual_seed(0)).to(device)


def _video_pixels(device: str) -> Tensor:
    """Pixels `(B, T, C, H, W)`: 8 frames, each scene held still for 4 frames (2 tubelets)."""
    scenes = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return scenes.repeat_interleave(4, dim=1).to(device)


# What each video method reads, and how many tokens that is unreduced; a new video method must
# be added here (the test below fails for it until then).
VIDEO_INPUTS: dict[str, tuple[Callable[[str], Tensor], int]] = {
    "dycoke": (_video_tokens, 8 * 10),
    "rlt": (_video_pixels, 4 * 2 * 2),  # tubelets of 2 frames x patches of 16 x 16 (RLT's defaults)
}


def _packed(out: Any) -> Any:
    return getattr(out, "packed", out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "impl", [i for i in IMPLS if family_of(i.module).package == "video"], ids=lambda i: i.name
)
def test_video_method(impl: ImplInfo, device: str) -> None:
    assert impl.name in VIDEO_INPUTS, f"add {impl.name}'s input to VIDEO_INPUTS"
    make, full = VIDEO_INPUTS[impl.name]
    video = make(device)
    whole = _packed(reference_impls.pack_video(impl.name, video, keep=1.0))
    assert whole.lengths.tolist() == [full] * video.shape[0]
    half = _packed(reference_impls.pack_video(impl.name, video, keep=0.5))
    assert (half.lengths < full).all(), half.lengths.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "impl", [i for i in IMPLS if family_of(i.module).package == "projector"], ids=lambda i: i.name
)
def test_projector_method(impl: ImplInfo, device: str) -> None:
    module = method(impl.name).module
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(0)).to(device)
    for keep in (1.0, 0.5):
        torch.manual_seed(0)
        projector = reference_impls.make_projector(
            impl.name, keep=keep, num_patches=64, in_dim=32, out_dim=48
        )
        out = projector.to(device).eval()(x)
        tokens = module.output_tokens(64, projector.config)  # type: ignore[union-attr]
        assert out.shape == (2, tokens, 48)
        assert tokens == 64 if keep == 1.0 else tokens < 64


def test_every_family_is_covered() -> None:
    """Each family package is exercised above: in-model ones through HARNESSES, the input ones
    by their own test."""
    inputs = {p for p, f in FAMILIES.items() if f.role == "input"}
    assert inputs == {"prompt", "video", "projector"}
