"""Visual-token reduction benchmark for the VLM methods (`reference_impls.vlm`); prints JSON.

    python benchmarks/vlm.py --out benchmarks/results/vlm.json

Options: `--runs 5` (timed rounds), `--threads 1` (torch CPU threads: one by default, since on a
small shared machine intra-op threads fight other processes and make timings erratic), `--only
NAME ...` (a subset of methods), `--out PATH` (also write the JSON there). Every
registered VLM method is covered through its module contract (`Config`, `config_for`, `patch`);
a method that fails is reported with its error and the others still run. Two parts:

(a) `analytic`: language-model prefill FLOPs on the LLaVA-1.5-7B configuration: 576 image
    tokens (a 24x24 patch grid), 32 layers, width d = 4096, FFN width m = 11008, and a typical
    prompt of 60 text tokens (35 before the image, FastV's system-prompt length, and 25 after).
    Per layer that reads n tokens, with FastV's formula (arXiv 2403.06764, section 4):

        FLOPs(n) = 4 n d^2 + 2 n^2 d + 2 n d m

    (the Q, K, V and output projections, the attention scores and their use, and the FFN), summed
    over the 32 layers. The per-layer token counts `n_l` are not computed by hand: each method's
    own code runs, at its typical setting (below), on a model with exactly this token geometry
    (576 patches, 32 layers, the same prompt lengths) but tiny widths and random weights, and
    `model.counts` gives the visual and text tokens entering every layer. `flops_reduction` is
    `1 - FLOPs / FLOPs(unreduced)`. Not counted: the vision encoder (the same for every method),
    the projector, and each method's own selection work.
(b) `wall_time`: CPU time of one prefill (encoder, reduction, projector, language model; the
    time to the first token) of that LLaVA-shaped tiny model (vision width 64, language width 128,
    32 layers), median of `--runs` rounds after a warm-up round, every round timing every method
    once in turn, as a ratio to the unreduced model (and the ratio of the minima). The tiny
    widths make attention, which grows as n^2, weigh more than at 7B scale, and fixed per-layer
    costs weigh more too: read the ratios as indicative.

Typical settings (`TYPICAL`): each method's headline setting for LLaVA-1.5. Adaptive methods
(PruMerge, PruMerge+, TRIM) choose their count from the image; on random weights that count
means nothing, so they run with the fixed count the papers report on average instead (PruMerge
about 32 tokens, TRIM about 21%); PruMerge+ runs with PruMerge's ratio, and its uniform samples
then come out as the code makes them. Methods not listed run at `config_for(0.25)`.

This is a script, not library code: it prints. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import statistics
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from reference_impls.llm.llama import LlamaConfig
from reference_impls.registry import discover
from reference_impls.vision.vit import ViTConfig
from reference_impls.vlm import (
    downsample,
    fastervlm,
    fastv,
    hired,
    prumerge,
    prumerge_plus,
    pyramiddrop,
    random_visual,
    sparsevlm,
    trim,
    uniform_visual,
    visionzip,
)
from reference_impls.vlm.llava import Llava, LlavaConfig

# LLaVA-1.5-7B: Vicuna-7B (32 layers, d 4096, FFN 11008) reading 576 CLIP-L/14-336 patches.
LAYERS, WIDTH, FFN, IMAGE_TOKENS = 32, 4096, 11008, 576
PREFIX, SUFFIX = 35, 25  # a typical prompt: 60 text tokens

# LLaVA-1.5's token geometry at tiny widths: 48x48 images in 2x2 patches = 24x24 = 576 tokens.
SHAPE_MODEL = LlavaConfig(
    vision=ViTConfig(img_size=48, patch_size=2, num_classes=1, width=64, depth=4, heads=4),
    llm=LlamaConfig(
        vocab_size=256, width=128, depth=LAYERS, heads=4, kv_heads=4, head_dim=32, mlp_hidden=344
    ),
)

TYPICAL: dict[str, tuple[object, str]] = {
    "fastv": (fastv.Config(layer=2, ratio=0.5), "K=2, R=50% (the paper's headline)"),
    "fastervlm": (fastervlm.Config(keep=0.25), "75% of the image tokens pruned (144 kept)"),
    "visionzip": (visionzip.Config(), "54 dominant + 10 contextual = 64 tokens (README)"),
    "prumerge": (
        prumerge.Config(adaptive=False, keep=32 / 576),
        "32 tokens + 1, the paper's average (~18x); the adaptive count needs real weights",
    ),
    "prumerge_plus": (
        prumerge_plus.Config(adaptive=False, keep=32 / 576),
        "PruMerge's ratio 32/576 plus the uniform samples it implies",
    ),
    "sparsevlm": (sparsevlm.Config(), "the official 192-token schedule: 300, 200, 110 kept"),
    "pyramiddrop": (pyramiddrop.Config(), "layers 8, 16, 24; ratios 0.5, 0.25, 0.125"),
    "hired": (hired.Config(budget=0.2, alpha=0.5), "20% budget (single view: 115 tokens)"),
    "trim": (
        trim.Config(adaptive=False, keep=0.21),
        "about 79% fewer image tokens (the paper's average) + 1 averaged token",
    ),
    "random_visual": (random_visual.Config(keep=0.25), "144 random tokens"),
    "uniform_visual": (uniform_visual.Config(keep=0.25), "every 4th token (144)"),
    "downsample": (downsample.Config(keep=0.25), "24x24 grid pooled to 12x12 (144)"),
}


def layer_flops(n: int, d: int = WIDTH, m: int = FFN) -> int:
    """FastV's per-layer FLOPs for n tokens: 4 n d^2 + 2 n^2 d + 2 n d m."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def describe(config: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
        }
    return {"repr": repr(config)}


def shape_model() -> Llava:
    torch.manual_seed(0)
    model = Llava(SHAPE_MODEL).eval()
    for p in model.parameters():  # larger than the default init: attention far from uniform
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    return model


def prompt() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    vocab = SHAPE_MODEL.llm.vocab_size
    prefix = torch.randint(0, vocab, (1, PREFIX), generator=g)
    suffix = torch.randint(0, vocab, (1, SUFFIX), generator=g)
    image = torch.randn(1, 3, 48, 48, generator=g)
    return prefix, image, suffix


def setting(name: str, module: ModuleType) -> tuple[object, str]:
    if name in TYPICAL:
        return TYPICAL[name]
    return module.config_for(0.25, depth=LAYERS), "config_for(0.25)"


@torch.no_grad()
def counts_for(model: Llava, module: ModuleType | None, config: object) -> tuple[list[int], int]:
    """Tokens entering each language-model layer and the visual tokens spliced in."""
    inputs = prompt()
    if module is None:
        model.prefill(*inputs)
    else:
        with module.patch(model, config):
            model.prefill(*inputs)
    c = model.counts
    return [v + t for v, t in zip(c.visual, c.text, strict=True)], c.llm_input


def analytic(model: Llava, modules: dict[str, ModuleType]) -> dict[str, Any]:
    tokens, _ = counts_for(model, None, None)
    assert tokens == [IMAGE_TOKENS + PREFIX + SUFFIX] * LAYERS
    full = sum(layer_flops(n) for n in tokens)
    methods: dict[str, Any] = {}
    for name, module in modules.items():
        config, note = setting(name, module)
        try:
            per_layer, into_llm = counts_for(model, module, config)
        except Exception:  # a broken method is reported, the others still run
            methods[name] = {"error": traceback.format_exc(limit=3)}
            continue
        flops = sum(layer_flops(n) for n in per_layer)
        visual = [n - PREFIX - SUFFIX for n in per_layer]
        methods[name] = {
            "setting": note,
            "config": describe(config),
            "visual_tokens_into_llm": into_llm,
            "visual_tokens_per_layer": compress(visual),
            "mean_visual_tokens": round(sum(visual) / LAYERS, 1),
            "prefill_tflops": round(flops / 1e12, 3),
            "flops_reduction": round(1 - flops / full, 3),
        }
    return {
        "model": {
            "name": "LLaVA-1.5-7B language model (Vicuna-7B)",
            "layers": LAYERS,
            "width": WIDTH,
            "ffn": FFN,
            "image_tokens": IMAGE_TOKENS,
            "text_tokens": {"before_image": PREFIX, "after_image": SUFFIX},
        },
        "formula": "per layer 4 n d^2 + 2 n^2 d + 2 n d m (FastV), summed over layers",
        "unreduced_prefill_tflops": round(full / 1e12, 3),
        "methods": methods,
    }


def compress(values: list[int]) -> list[list[int]]:
    """Run-length form `[[value, layers], ...]` of a per-layer list."""
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return runs


def wall_time(model: Llava, modules: dict[str, ModuleType], runs: int) -> dict[str, Any]:
    """Round-robin timing: each round times every method once (after one warm-up round), so a
    slow spell of a shared machine hits all of them alike; medians and minima over the rounds."""
    inputs = prompt()
    settings = {name: setting(name, module)[0] for name, module in modules.items()}
    samples: dict[str, list[float]] = {"unreduced": []}
    errors: dict[str, str] = {}

    def once(name: str) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            if name == "unreduced":
                model.prefill(*inputs)
            else:
                with modules[name].patch(model, settings[name]):
                    model.prefill(*inputs)
            return time.perf_counter() - start

    for round_ in range(runs + 1):
        for name in ["unreduced", *modules]:
            if name in errors:
                continue
            try:
                elapsed = once(name)
            except Exception:  # a broken method is reported, the others still run
                errors[name] = traceback.format_exc(limit=3)
                continue
            if round_ > 0:
                samples.setdefault(name, []).append(elapsed)
    base, base_min = statistics.median(samples["unreduced"]), min(samples["unreduced"])
    methods: dict[str, Any] = {name: {"error": error} for name, error in errors.items()}
    for name in modules:
        if name in errors:
            continue
        median = statistics.median(samples[name])
        methods[name] = {
            "prefill_s": round(median, 4),
            "ratio_to_unreduced": round(median / base, 3),
            "ratio_of_minima": round(min(samples[name]) / base_min, 3),
        }
    return {
        "model": {
            "vision": describe(SHAPE_MODEL.vision),
            "llm": describe(SHAPE_MODEL.llm),
            "prompt_tokens": {"before_image": PREFIX, "image": IMAGE_TOKENS, "after_image": SUFFIX},
        },
        "runs": runs,
        "threads": torch.get_num_threads(),
        "unreduced_prefill_s": round(base, 4),
        "methods": dict(sorted(methods.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="method names (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    infos = {
        impl.name: impl for impl in discover() if impl.module.startswith("reference_impls.vlm.")
    }
    if args.only:
        infos = {name: infos[name] for name in args.only}
    modules = {name: importlib.import_module(info.module) for name, info in infos.items()}
    model = shape_model()
    start = time.perf_counter()
    result = {
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "methods": {
            name: {
                "family": info.family,
                "training_free": info.training_free,
                "arxiv": info.arxiv,
                "papers": list(info.papers),
            }
            for name, info in infos.items()
        },
        "analytic": analytic(model, modules),
        "wall_time": wall_time(model, modules, args.runs),
    }
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
