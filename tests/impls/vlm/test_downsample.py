"""Patch-grid downsampling: exact counts and the pooling windows against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.vlm import downsample
from reference_impls.vlm.llava import anyres_views

from .common import DEPTH, N, capture_llm, capture_visual, images, prompt, tiny_llava


def naive_pool(grid: torch.Tensor, side: int) -> torch.Tensor:
    """grid (g, g, C): window [floor(i g / s), ceil((i + 1) g / s)) in each direction."""
    g = grid.shape[0]
    out = []
    for i in range(side):
        for j in range(side):
            r0, r1 = i * g // side, math.ceil((i + 1) * g / side)
            c0, c1 = j * g // side, math.ceil((j + 1) * g / side)
            out.append(grid[r0:r1, c0:c1].mean(dim=(0, 1)))
    return torch.stack(out)


@pytest.mark.parametrize(("keep", "side"), [(0.25, 4), (0.5, 6), (0.01, 1), (0.1, 3)])
@torch.no_grad()
def test_counts_and_windows(keep: float, side: int) -> None:
    assert downsample.pooled_side(8, keep) == side
    model = tiny_llava()
    state = capture_visual(model)
    with downsample.patch(model, downsample.Config(keep=keep)):
        llm_state = capture_llm(model, 1)
    assert model.counts.llm_input == side * side and model.counts.visual == [side**2] * DEPTH
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        pooled = naive_pool(state.features[b].view(8, 8, -1), side)
        torch.testing.assert_close(visual[b], model.projector(pooled), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_each_view_pooled_on_its_own() -> None:
    model = tiny_llava()
    views = anyres_views(images(batch=1, size=64), (2, 2), 32)
    prefix, suffix = prompt(batch=1)
    with downsample.patch(model, downsample.Config(keep=0.25)):
        model.prefill(prefix, views, suffix)
    assert model.counts.encoder == 5 * N and model.counts.llm_input == 5 * 16
