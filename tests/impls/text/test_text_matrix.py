"""One matrix over every registered text-encoder method, on the tiny encoder."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch

from reference_impls.registry import ImplInfo, discover
from reference_impls.text.encoder import TINY_ENCODER, Block

from .common import device_param, inputs, tiny_encoder

TEXT = [impl for impl in discover() if impl.module.startswith("reference_impls.text.")]
N = 32  # the longest sample of `inputs()`


def config_for(module: Any, keep: float) -> Any:
    """`module.config_for` for the tiny encoder (LTP's heuristic also takes the length)."""
    if "seq_len" in inspect.signature(module.config_for).parameters:
        return module.config_for(keep, TINY_ENCODER.depth, seq_len=N)
    return module.config_for(keep, TINY_ENCODER.depth)


def test_the_text_methods_are_registered() -> None:
    assert {impl.name for impl in TEXT} >= {"power_bert", "ltp", "mod"}


@device_param
@pytest.mark.parametrize("impl", TEXT, ids=lambda i: i.name)
def test_matrix(impl: ImplInfo, device: str) -> None:
    """Every method: right output shape, less work at keep 0.5, the full work at keep 1
    (identical logits for the pruning methods), and the model restored afterwards."""
    module = importlib.import_module(impl.module)
    model = tiny_encoder(device=device)
    ids, mask = inputs(device=device)
    with torch.no_grad():
        reference = model(ids, mask)
        with module.patch(model, config_for(module, 0.5)):
            reduced = model(ids, mask)
            counts = model.token_counts()
        assert reduced.shape == reference.shape and torch.isfinite(reduced).all()
        work = sum(n for pair in counts for n in pair)
        assert work < 2 * N * TINY_ENCODER.depth, f"{impl.name} reduced nothing: {counts}"
        if impl.family == "pruning":
            flat = [n for pair in counts for n in pair]
            assert flat == sorted(flat, reverse=True), f"token counts grow: {counts}"
        with module.patch(model, config_for(module, 1.0)):
            same = model(ids, mask)
            assert model.token_counts() == [(N, N)] * TINY_ENCODER.depth
        if impl.family == "pruning":
            torch.testing.assert_close(same, reference, rtol=0, atol=0)
        after = model(ids, mask)
    torch.testing.assert_close(after, reference, rtol=0, atol=0)  # the adapter left no trace
    assert all(
        isinstance(b, Block)
        and b.mid_reducer is None
        and b.post_reducer is None
        and b.router is None
        for b in model.blocks
    )


@pytest.mark.parametrize("impl", TEXT, ids=lambda i: i.name)
def test_restored_after_an_exception(impl: ImplInfo) -> None:
    module = importlib.import_module(impl.module)
    model = tiny_encoder()
    with (
        pytest.raises(RuntimeError, match="boom"),
        module.patch(model, config_for(module, 0.5)),
    ):
        raise RuntimeError("boom")
    assert all(
        isinstance(b, Block)
        and b.mid_reducer is None
        and b.post_reducer is None
        and b.router is None
        for b in model.blocks
    )
