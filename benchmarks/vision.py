"""Vision token-reduction benchmark over every registered method; prints one JSON object.

    pip install -e ".[bench]"  # scikit-learn, for part (c): it ships the digits data, no download
    python benchmarks/vision.py > benchmarks/results/vision.json

Options: `--batch 8` (throughput batch), `--runs 3`, `--epochs 20` (digits training),
`--threads N` (torch CPU threads; default: torch's own), `--only NAME ...` (a subset of methods).
It covers whatever `reference_impls.registry.discover()` finds, through the module contract only
(`Config`, `patch`, `config_for`, `IMPL`); a method that fails is reported with its error, and the
rest still run. Three parts:

(a) `analytic`: DeiT-S (`vit.DEIT_S`, random weights, one 224x224 image): per method, at its
    `config_for(0.5, 12)` and its default `Config()`, the tokens into attention and MLP of every
    block (`model.token_counts()`) and GMACs (`macs.vit_macs`; the reducers' own work is not
    counted), next to the unreduced model.
(b) `throughput`: CPU wall time of a batch of DeiT-S images at `config_for(0.5, 12)`, median of
    `--runs` after a warm-up (`reference_impls.harness.measure`), as a speed-up over unreduced.
(c) `accuracy`: a small ViT (16x16 one-channel inputs, patch 2: 64 patches + CLS; depth 6,
    width 48) trained from a fixed seed on scikit-learn's bundled 8x8 digits (upsampled 2x), then,
    for each method with `IMPL.training_free`, test accuracy at keep rates 1.0, 0.9, 0.7, 0.5, 0.3
    through `config_for(rate, depth)`, and the fraction of patch tokens left after the last block
    (tokens of size 0, a padding some adaptive methods use, are not counted).

This is a script, not library code: it prints. Runs in about 2-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import time
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reference_impls.harness import measure
from reference_impls.registry import ImplInfo, config_for, discover
from reference_impls.vision.macs import vit_macs
from reference_impls.vision.vit import DEIT_S, VisionTransformer, ViTConfig

KEEP_RATES = (1.0, 0.9, 0.7, 0.5, 0.3)
DIGITS_VIT = ViTConfig(
    img_size=16, patch_size=2, in_chans=1, num_classes=10, width=48, depth=6, heads=3, mlp_ratio=2
)


def describe(config: object) -> dict[str, Any]:
    """A JSON-able view of a method's Config."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(config).items()}
    return {"repr": repr(config)}


def _jsonable(value: object) -> object:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failing method is reported, not fatal."""
    try:
        return fn()
    except Exception as error:  # any method may fail; the others must still run
        return {"error": f"{type(error).__name__}: {error}", "where": traceback.format_exc(-1)}


# --- (a) analytic ------------------------------------------------------------------------------


def analytic(modules: dict[str, ModuleType]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = VisionTransformer(DEIT_S).eval()
    image = torch.randn(1, 3, DEIT_S.img_size, DEIT_S.img_size, generator=_gen(1))
    base = vit_macs(DEIT_S)

    def counts_and_macs(module: ModuleType, config: object) -> dict[str, Any]:
        with torch.inference_mode(), module.patch(model, config):
            model(image)
            counts = model.token_counts()
        total = vit_macs(DEIT_S, counts)
        return {
            "config": describe(config),
            "tokens_per_block": [list(pair) for pair in counts],
            "gmacs": round(total / 1e9, 4),
            "macs_ratio": round(total / base, 4),
        }

    methods: dict[str, Any] = {}
    for name, module in modules.items():
        methods[name] = {
            "config_for_0.5": guarded(
                lambda m=module: counts_and_macs(
                    m, config_for(m, 0.5, DEIT_S.depth, DEIT_S.num_patches)
                )
            ),
            "default": guarded(lambda m=module: counts_and_macs(m, m.Config())),
        }
    return {
        "model": "DeiT-S (vit.DEIT_S), random weights, one 224x224 image",
        "unreduced": {
            "tokens_per_block": [[DEIT_S.num_tokens, DEIT_S.num_tokens]] * DEIT_S.depth,
            "gmacs": round(base / 1e9, 4),
        },
        "methods": methods,
    }


# --- (b) throughput ----------------------------------------------------------------------------


def throughput(modules: dict[str, ModuleType], batch: int, runs: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = VisionTransformer(DEIT_S).eval()
    images = torch.randn(batch, 3, DEIT_S.img_size, DEIT_S.img_size, generator=_gen(2))
    base = measure(lambda: model(images), warmup=1, runs=runs).median_s

    def timed(module: ModuleType) -> dict[str, Any]:
        config = config_for(module, 0.5, DEIT_S.depth, DEIT_S.num_patches)
        with module.patch(model, config):
            median = measure(lambda: model(images), warmup=1, runs=runs).median_s
        return {"median_s": round(median, 4), "speedup": round(base / median, 3)}

    return {
        "model": f"DeiT-S, random weights, batch {batch} of 224x224, CPU",
        "setting": "config_for(0.5, 12)",
        "threads": torch.get_num_threads(),
        "runs": runs,
        "unreduced_median_s": round(base, 4),
        "methods": {name: guarded(lambda m=module: timed(m)) for name, module in modules.items()},
    }


# --- (c) accuracy on digits --------------------------------------------------------------------


def load_digits_tensors() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as (N, 1, 16, 16) in [0, 1], split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8)
    x = F.interpolate(x, size=DIGITS_VIT.img_size, mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5  # (N, 1, 16, 16)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=_gen(3))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def train_digits(x: Tensor, y: Tensor, epochs: int) -> VisionTransformer:
    """AdamW with a one-cycle schedule, batch 64; position embeddings start as 2-D sin-cos
    (learned from there): with one pixel per token a ViT learns the layout slowly otherwise."""
    torch.manual_seed(0)
    model = VisionTransformer(DIGITS_VIT)
    with torch.no_grad():
        model.pos_embed[0, 1:] = _sincos_2d(DIGITS_VIT.grid, DIGITS_VIT.width)
    steps_per_epoch = (len(y) + 63) // 64
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    generator = _gen(4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def _sincos_2d(grid: int, width: int) -> Tensor:
    """Fixed 2-D sine-cosine position codes `(grid * grid, width)`, row-major like the patches."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter) / quarter)  # (width/4,)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    r = rows.flatten().float()[:, None] * omega  # (grid*grid, width/4)
    c = cols.flatten().float()[:, None] * omega  # (grid*grid, width/4)
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1)  # (grid*grid, width)


def evaluate(model: VisionTransformer, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Test accuracy and the mean fraction of patch tokens (size > 0) after the last block."""
    left: list[float] = []

    def count_tokens(
        _module: object, _inputs: object, output: tuple[Tensor, Tensor | None]
    ) -> None:
        tokens, size = output
        if size is None:
            left.append(float(tokens.shape[1] - 1))
        else:
            left.append((size[:, 1:, 0] > 0).sum(dim=1).double().mean().item())

    hook = model.blocks[-1].register_forward_hook(count_tokens)
    try:
        with torch.inference_mode():
            accuracy = (model(x).argmax(dim=1) == y).double().mean().item()
    finally:
        hook.remove()
    return accuracy, left[0] / DIGITS_VIT.num_patches


def accuracy(modules: dict[str, ModuleType], infos: dict[str, ImplInfo], epochs: int) -> dict:
    try:
        import sklearn
    except ImportError:
        return {"skipped": "scikit-learn is not installed (pip install scikit-learn)"}
    x_train, y_train, x_test, y_test = load_digits_tensors()
    start = time.perf_counter()
    model = train_digits(x_train, y_train, epochs)
    train_s = time.perf_counter() - start
    base, _ = evaluate(model, x_test, y_test)

    def curve(module: ModuleType) -> dict[str, Any]:
        points = []
        for rate in KEEP_RATES:
            config = config_for(module, rate, DIGITS_VIT.depth, DIGITS_VIT.num_patches)
            with module.patch(model, config):
                acc, left = evaluate(model, x_test, y_test)
            points.append(
                {
                    "keep_rate": rate,
                    "accuracy": round(acc, 4),
                    "patch_fraction_left": round(left, 4),
                }
            )
        return {"curve": points}

    return {
        "dataset": f"scikit-learn {sklearn.__version__} digits, 8x8 upsampled to 16x16",
        "split": "80/20, fixed permutation",
        "model": describe(DIGITS_VIT),
        "train": {"images": len(y_train), "epochs": epochs, "seconds": round(train_s, 1)},
        "test_images": len(y_test),
        "unreduced_accuracy": round(base, 4),
        "methods": {
            name: guarded(lambda m=module: curve(m))
            for name, module in modules.items()
            if infos[name].training_free
        },
        "not_training_free": sorted(name for name in modules if not infos[name].training_free),
    }


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="method names (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    infos = {
        impl.name: impl for impl in discover() if impl.module.startswith("reference_impls.vision.")
    }
    if args.only:
        infos = {name: infos[name] for name in args.only}
    modules = {name: importlib.import_module(info.module) for name, info in infos.items()}
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
                "papers": list(info.papers),
            }
            for name, info in infos.items()
        },
        "analytic": analytic(modules),
        "throughput": throughput(modules, args.batch, args.runs),
        "accuracy": accuracy(modules, infos, args.epochs),
    }
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
