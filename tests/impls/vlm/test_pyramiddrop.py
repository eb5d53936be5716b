"""PyramidDrop: exact stage counts, the last-instruction-token ranking against a plain loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vlm import pyramiddrop
from reference_impls.vlm.llava import query_attention
from reference_impls.vlm.select import top_in_order

from .common import DEPTH, PREFIX, SUFFIX, capture_llm, inputs, tiny_llava


@pytest.mark.parametrize(
    ("config", "visual"),
    [
        (pyramiddrop.Config(layers=(2, 4, 6)), [64, 64, 32, 32, 16, 16, 8, 8]),
        (pyramiddrop.Config(layers=(1, 5), ratios=(0.3, 0.2)), [64, 19, 19, 19, 19, 12, 12, 12]),
        # int(64 * 0.01) = 0: the official topk(0) drops every visual token
        (pyramiddrop.Config(layers=(3, 6), ratios=(0.5, 0.01)), [64, 64, 64, 32, 32, 32, 0, 0]),
    ],
)
@torch.no_grad()
def test_stage_counts(config: pyramiddrop.Config, visual: list[int]) -> None:
    model = tiny_llava()
    with pyramiddrop.patch(model, config):
        model.prefill(*inputs())
    assert model.counts.visual == visual
    assert model.counts.text == [PREFIX + SUFFIX] * DEPTH


def test_ranking_prefers_the_most_attended_and_breaks_ties_by_position() -> None:
    """Scores [.1, .3, .3, .2] keep 2 -> tokens 1 and 2; with [.3, .1, .3, .3] the earliest two of
    the tied three (0 and 2), in order; the head average decides."""
    row = torch.tensor([[[0.0, 0.1, 0.3, 0.3, 0.2, 0.1], [0.0, 0.1, 0.3, 0.3, 0.2, 0.1]]])
    scores = pyramiddrop.pdrop_scores(row, 1, 4)
    torch.testing.assert_close(scores, torch.tensor([[0.1, 0.3, 0.3, 0.2]]))
    assert top_in_order(scores, pyramiddrop.kept_count(8, 0.25, 4)).tolist() == [[1, 2]]
    tied = torch.tensor([[0.3, 0.1, 0.3, 0.3]])
    assert top_in_order(tied, 2).tolist() == [[0, 2]]
    assert pyramiddrop.kept_count(576, 0.125, 100) == 72
    assert pyramiddrop.kept_count(576, 0.5, 100) == 100


def test_config_for() -> None:
    assert pyramiddrop.config_for(0.125).layers == (8, 16, 24)
    ratios = pyramiddrop.config_for(0.125).ratios
    assert [round(r, 6) for r in ratios] == [0.5, 0.25, 0.125]
    assert pyramiddrop.config_for(0.5, depth=DEPTH).layers == (2, 4, 6)


@torch.no_grad()
def test_ranking_equals_the_naive_rule() -> None:
    model = tiny_llava()
    state = capture_llm(model, 4)
    hidden, positions, visual = pyramiddrop.PyramidDropReducer(0.25)(state)
    assert visual == 16
    row = query_attention(model, 4, state.hidden, state.positions, -1)  # checked in test_llava
    H = row.shape[1]
    for b in range(2):
        score = [sum(float(row[b, h, PREFIX + j]) for h in range(H)) / H for j in range(64)]
        kept = sorted(sorted(range(64), key=lambda j: (-score[j], j))[:16])
        assert [p - PREFIX for p in positions[b, PREFIX : PREFIX + 16].tolist()] == kept
        torch.testing.assert_close(hidden[b, -SUFFIX:], state.hidden[b, -SUFFIX:], rtol=0, atol=0)
