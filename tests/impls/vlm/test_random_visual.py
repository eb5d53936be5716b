"""Random visual dropping: exact count, distinct sorted positions, seeded, uniform draws."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vlm import random_visual

from .common import DEPTH, capture_llm, capture_visual, tiny_llava


@pytest.mark.parametrize(("keep", "k"), [(0.25, 16), (0.5, 32), (0.001, 1)])
@torch.no_grad()
def test_counts_and_tokens(keep: float, k: int) -> None:
    model = tiny_llava()
    state = capture_visual(model)
    with random_visual.patch(model, random_visual.Config(keep=keep, seed=3)):
        llm_state = capture_llm(model, 1)
    assert model.counts.llm_input == k and model.counts.visual == [k] * DEPTH
    kept = random_visual.random_keep(2, 64, k, torch.Generator().manual_seed(3))
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        assert kept[b].tolist() == sorted(set(kept[b].tolist()))
        torch.testing.assert_close(visual[b], model.projector(state.features[b, kept[b]]))


def test_draw_equals_the_naive_rule_and_is_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    kept = random_visual.random_keep(2, 10, 4, g)
    scores = torch.rand(2, 10, generator=torch.Generator().manual_seed(0))
    for b in range(2):
        assert kept[b].tolist() == sorted(sorted(range(10), key=lambda j: -float(scores[b, j]))[:4])
    hits = torch.zeros(10)
    for seed in range(400):
        hits[random_visual.random_keep(1, 10, 4, torch.Generator().manual_seed(seed))[0]] += 1
    assert hits.min() > 0.3 * 400 and hits.max() < 0.5 * 400  # each position kept ~40%
