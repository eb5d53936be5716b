"""`reference_impls.apply` and the family verbs: the same results as each module's lower layer,
configuration by keep share or Config fields, precise errors, KV presses through hooks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import reference_impls
from reference_impls import families
from reference_impls.families import Patches
from reference_impls.kv import kivi, recent, snapkv
from reference_impls.llm.llama import KVCache, generate
from reference_impls.methods import make_config
from reference_impls.projector import pixel_shuffle, resampler
from reference_impls.prompt import llmlingua
from reference_impls.prompt.scorer import tiny_scorer
from reference_impls.video import dycoke
from reference_impls.vision import tome
from reference_impls.vlm import fastv
from reference_impls.vlm.llava import TINY_LLAVA

from .common import TINY, images, tiny_vit
from .llm.common import prompt, tiny_llama
from .vlm.common import inputs as llava_inputs
from .vlm.common import tiny_llava


def test_keep_goes_through_config_for_with_the_model_config() -> None:
    """keep=0.5 on the tiny ViT is tome.config_for(0.5, depth, num_patches): the same logits."""
    model, x = tiny_vit(), images()
    with torch.no_grad():
        with tome.patch(model, tome.config_for(0.5, TINY.depth, num_patches=TINY.num_patches)):
            expected = model(x)
        with reference_impls.apply(model, "tome", keep=0.5) as applied:
            assert applied is model
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert make_config("tome", 0.5, TINY) == tome.Config(r=8)


def test_config_fields_and_their_override_of_keep() -> None:
    assert make_config("tome") == tome.Config()
    assert make_config("tome", r=3) == tome.Config(r=3)
    assert make_config("tome", 0.5, TINY, mode="mean") == tome.Config(r=8, mode="mean")
    model, x = tiny_vit(), images()
    with torch.no_grad():
        with tome.patch(model, tome.Config(r=3, mode="mean")):
            expected = model(x)
        with reference_impls.apply(model, "tome", r=3, mode="mean"):
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_model_config_each_family_reads() -> None:
    """One call, `config_for(module, keep, model_config)`, for every family's model."""
    assert families.config_for(fastv, 0.5, TINY_LLAVA) == fastv.config_for(0.5, depth=8)
    assert families.config_for(kivi, 0.5, TINY_LLAVA.llm) == kivi.config_for(0.5, head_dim=8)
    assert families.config_for(resampler, 0.5, Patches(64)) == resampler.Config(num_queries=32)
    assert families.config_for(resampler, 0.5, TINY) == resampler.Config(num_queries=32)
    assert families.config_for(resampler, 0.25, None) == resampler.config_for(0.25)  # 576
    with pytest.raises(
        TypeError,
        match=r"^this config_for needs the model's depth: pass its configuration$",
    ):
        families.config_for(tome, 0.5, None)


def test_errors_say_what_is_wrong_and_what_would_be_right() -> None:
    model = tiny_vit()
    with pytest.raises(
        KeyError, match=r"no registered method 'tomee'; did you mean tome, pitome, tome_sd\?"
    ):
        make_config("tomee")
    with (
        pytest.raises(
            TypeError,
            match=r"^tome: no field ratio in reference_impls.vision.tome.Config; its fields: "
            r"class_token, distill_token, mode, r, schedule \(or keep=\)$",
        ),
        reference_impls.apply(model, "tome", ratio=0.5),
    ):
        pass
    with (
        pytest.raises(
            TypeError, match=r"^h2o applies to Llama or Llava, not to VisionTransformer;"
        ),
        reference_impls.apply(model, "h2o", keep=0.5),
    ):
        pass
    with (
        pytest.raises(TypeError, match=r"use reference_impls.pack_video\('dycoke', \.\.\.\)$"),
        reference_impls.apply(model, "dycoke", keep=0.5),
    ):
        pass
    with pytest.raises(TypeError, match=r"^tome is a vision method, not a prompt one; use "):
        reference_impls.compress_prompt("tome", "text", "q", None)
    with pytest.raises(ValueError, match="family 'audio' is not one of vision, kv, "):
        reference_impls.names("audio")


@torch.no_grad()
def test_a_kv_method_applied_equals_its_press_passed_to_forward() -> None:
    model, ids = tiny_llama(), prompt(40)
    expected, expected_cache = generate(
        model, ids, max_new_tokens=5, press=snapkv.make_press(snapkv.config_for(0.5))
    )
    with reference_impls.apply(model, "snapkv", keep=0.5):
        got, cache = generate(model, ids, max_new_tokens=5)
    assert torch.equal(got, expected)
    for layer in range(len(cache)):
        assert torch.equal(cache.keys[layer], expected_cache.keys[layer])
    assert all(not layer.self_attn._forward_pre_hooks for layer in model.layers)


@torch.no_grad()
def test_a_press_passed_to_forward_runs_first() -> None:
    """Inside `apply(model, "recent", keep=0.5)`, a forward's own recent(0.5) press halves the
    prompt's 40 entries first, then the applied one halves the 20 left."""
    model, cache = tiny_llama(), KVCache()
    with reference_impls.apply(model, "recent", keep=0.5):
        model(prompt(40), cache, recent.make_press(recent.config_for(0.5)))
    assert [cache.length(layer) for layer in range(len(cache))] == [10, 10, 10]


@torch.no_grad()
def test_a_kv_method_on_the_vlm_language_model() -> None:
    """On LLaVA, the applied press meets the prefill's own attention recorder and decoding."""
    model = tiny_llava()
    prefix, image, suffix = llava_inputs()
    press = snapkv.make_press(snapkv.config_for(0.5))
    expected_cache = KVCache()
    expected = model.prefill(prefix, image, suffix, expected_cache, press)
    expected_step = model.step(expected.argmax(-1)[:, -1:], expected_cache, press)
    cache = KVCache()
    with reference_impls.apply(model, "snapkv", keep=0.5):
        got = model.prefill(prefix, image, suffix, cache)
        step = model.step(got.argmax(-1)[:, -1:], cache)
    assert torch.equal(got, expected) and torch.equal(step, expected_step)
    assert cache.length(0) == expected_cache.length(0) == (5 + 64 + 7 + 1) // 2 + 1


def test_compress_prompt_is_the_modules_compress() -> None:
    scorer = tiny_scorer(tiny_llama())
    text, question = "Q: 2+2? A: 4.\nQ: 13+5? A: 18.\n", "Q: 9+1? A:"
    expected = llmlingua.compress(text, question, scorer, llmlingua.config_for(0.5), "Sums.\n")
    got = reference_impls.compress_prompt(
        "llmlingua", text, question, scorer, keep=0.5, instruction="Sums.\n"
    )
    assert got == expected


def test_pack_video_is_the_modules_entry_point() -> None:
    video = torch.randn(2, 6, 10, 4, generator=torch.Generator().manual_seed(0))
    expected = dycoke.dycoke_ttm(video, dycoke.config_for(0.5))
    got = reference_impls.pack_video("dycoke", video, keep=0.5)
    assert torch.equal(got.tokens, expected.tokens) and torch.equal(got.mask, expected.mask)


def test_make_projector_builds_the_family_projector() -> None:
    projector = reference_impls.make_projector(
        "pixel_shuffle", keep=0.25, num_patches=64, in_dim=16, out_dim=24
    )
    assert isinstance(projector, pixel_shuffle.PixelShuffleProjector)
    assert projector.config == pixel_shuffle.Config(in_dim=16, out_dim=24, scale=2)
    assert projector(torch.randn(1, 64, 16)).shape == (1, 16, 24)


def test_importing_the_registry_loads_no_torch() -> None:
    """The CLI and the renderers read the registry and the family protocols without torch."""
    code = "import sys, reference_impls, reference_impls.registry; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
