"""PruMerge+: the uniform completion against a plain loop; exact counts; the merged tokens."""

from __future__ import annotations

import numpy as np
import torch

from reference_impls.vlm import prumerge, prumerge_plus

from .common import DEPTH, N, capture_llm, capture_visual, tiny_llava
from .test_prumerge import naive_merge


def naive_uniform(n: int, ratio: float, selected: list[int]) -> list[int]:
    stride = max(1, int(int(1 / ratio) / 3))
    return [x for x in range(0, n - 1, stride) if x not in selected]


def test_uniform_positions_equal_the_naive_rule() -> None:
    selected = torch.tensor([[0, 9, 30], [12, 3, 63]])
    for ratio in (1 / 8, 0.05, 0.5, 1.0):
        got = prumerge_plus.uniform_positions(64, ratio, selected).tolist()
        assert got == naive_uniform(64, ratio, selected.flatten().tolist())
    assert prumerge_plus.uniform_positions(576, 1 / 32, selected).tolist()[:3] == [10, 20, 40]


@torch.no_grad()
def test_adaptive_counts_and_tokens() -> None:
    model = tiny_llava()
    state = capture_visual(model)
    scores, keys = prumerge.cls_scores(state)
    flat = scores.flatten().tolist()
    q1, q3 = np.percentile(flat, 25), np.percentile(flat, 75)
    ratio = sum(v > q3 + 1.5 * (q3 - q1) for v in flat) / len(flat)
    k = max(1, int(N * ratio))
    selected = [sorted(range(N), key=lambda j: (-float(scores[b, j]), j))[:k] for b in range(2)]
    extra = naive_uniform(N, max(ratio, 1 / N), selected[0] + selected[1])
    with prumerge_plus.patch(model, prumerge_plus.Config()):
        llm_state = capture_llm(model, 1)
    total = k + len(extra) + 1
    assert model.counts.llm_input == total and model.counts.visual == [total] * DEPTH
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        tokens = naive_merge(state.features[b], scores[b], keys[b], selected[b] + extra, 32)
        torch.testing.assert_close(visual[b], model.projector(tokens), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_config_for_keeps_about_the_share() -> None:
    model = tiny_llava()
    for keep in (0.25, 0.5):
        with prumerge_plus.patch(model, prumerge_plus.config_for(keep)):
            capture_llm(model, 1)
        assert 0.5 * keep * N <= model.counts.llm_input <= 1.5 * keep * N + 2
