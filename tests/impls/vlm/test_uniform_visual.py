"""Uniform visual dropping: exact count, evenly spaced positions, the projected tokens."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vlm import uniform_visual

from .common import DEPTH, capture_llm, capture_visual, tiny_llava


def test_positions_equal_the_naive_rule() -> None:
    for n, k in [(64, 16), (64, 13), (10, 10), (576, 144), (7, 1)]:
        got = uniform_visual.uniform_positions(n, k).tolist()
        assert got == [i * n // k for i in range(k)]
        assert len(set(got)) == k and got == sorted(got)
    assert uniform_visual.uniform_positions(64, 16).tolist() == list(range(0, 64, 4))


@pytest.mark.parametrize(("keep", "k"), [(0.25, 16), (0.2, 13)])
@torch.no_grad()
def test_counts_and_tokens(keep: float, k: int) -> None:
    model = tiny_llava()
    state = capture_visual(model)
    with uniform_visual.patch(model, uniform_visual.Config(keep=keep)):
        llm_state = capture_llm(model, 1)
    assert model.counts.llm_input == k and model.counts.visual == [k] * DEPTH
    kept = [i * 64 // k for i in range(k)]
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    torch.testing.assert_close(visual, model.projector(state.features[:, kept]))
