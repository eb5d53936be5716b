"""HiRED: single-view and multi-view budgets, exact counts, selection against plain loops."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vlm import hired
from reference_impls.vlm.llava import anyres_views

from .common import DEPTH, N, capture_llm, capture_visual, images, prompt, tiny_llava


def naive_regions(marked: list[bool], side: int, gh: int, gw: int) -> list[int]:
    counts = [0] * (gh * gw)
    for r in range(side):
        for c in range(side):
            if marked[r * side + c]:
                counts[(r * gh // side) * gw + c * gw // side] += 1
    return counts


def naive_top(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k])


@pytest.mark.parametrize(("budget", "k"), [(0.2, 12), (0.5, 32)])
@torch.no_grad()
def test_single_view(budget: float, k: int) -> None:
    model = tiny_llava()
    state = capture_visual(model)
    with hired.patch(model, hired.Config(budget=budget)):
        llm_state = capture_llm(model, 1)
    assert model.counts.llm_input == k and model.counts.visual == [k] * DEPTH
    attn = state.vision.attn[model.config.feature_block]  # (B, H, 1+n, 1+n)
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        kept = naive_top(attn[b, :, 0, 1:].sum(dim=0).tolist(), k)
        torch.testing.assert_close(visual[b], model.projector(state.features[b, kept]))


def test_region_counts() -> None:
    g = torch.Generator().manual_seed(0)
    for side, gh, gw in [(8, 2, 2), (8, 1, 3), (6, 3, 2)]:
        marked = torch.rand(side * side, generator=g) > 0.5
        got = hired.region_counts(marked, (gh, gw)).tolist()
        assert got == naive_regions(marked.tolist(), side, gh, gw)


def test_strip_counts_take_consecutive_chunks_unlike_regions() -> None:
    """16 patches (4 x 4), 2 x 2 crops: strips are patches 0-3, 4-7, 8-11, 12-15; regions are
    the 2 x 2 quarters of the grid."""
    marked = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1], dtype=torch.bool)
    assert hired.strip_counts(marked, (2, 2)).tolist() == [2, 0, 3, 1]
    assert hired.region_counts(marked, (2, 2)).tolist() == [2, 0, 1, 3]
    assert hired.strip_counts(marked, (1, 3)).tolist() == [2, 2, 2]  # chunks 0-5, 6-10, 11-15


def test_view_budgets_by_partition() -> None:
    """n 16, 5 views, budget 0.5, alpha 0.5: 40 tokens, the whole image 16, the crops 24 shared
    by the 8 patches marked in the whole image (0-3, 8, 10, 11, 15): strips 4, 0, 3, 1 of 8;
    regions 2, 2, 1, 3 of 8; each share of 24 truncated."""
    content = torch.zeros(16)
    content[[0, 1, 2, 3, 8, 10, 11, 15]] = 1.0 + 0.1 * torch.arange(8.0)
    strips = hired.Config(budget=0.5, alpha=0.5)
    regions = hired.Config(budget=0.5, alpha=0.5, partition="regions")
    assert hired.view_budgets(content, 16, 5, (2, 2), strips) == [16, 12, 0, 9, 3]
    assert hired.view_budgets(content, 16, 5, (2, 2), regions) == [16, 6, 6, 3, 9]
    # a single view: int(n * budget) by the feature block's attention alone
    assert hired.view_budgets(content, 16, 1, (1, 1), strips) == [8]
    with pytest.raises(AssertionError):
        hired.Config(partition="rows")


@torch.no_grad()
def test_multi_view_budgets_and_selection() -> None:
    model = tiny_llava()
    views = anyres_views(images(batch=1, size=64), (2, 2), 32)  # 5 views of 64 patches
    state = capture_visual(model, views, batch=1)
    config = hired.Config(budget=0.2, alpha=0.5)
    # budget int(5 * 64 * 0.2) = 64: the whole image min(32, 64) = 32, the crops share 32
    content = state.vision.attn[0][0, :, 0, 1:].sum(dim=0).tolist()  # block 0, whole image
    marked = [False] * N
    for j in naive_top(content, int(N * 0.5)):
        marked[j] = True
    shares = [sum(marked[i * N // 4 : (i + 1) * N // 4]) for i in range(4)]  # official strips
    budgets = [32] + [min(N, int(s / sum(shares) * 32)) for s in shares]
    got = hired.view_budgets(torch.tensor(content), N, 5, (2, 2), config)
    assert got == budgets
    prefix, suffix = prompt(batch=1)
    with hired.patch(model, config), torch.no_grad():
        logits = model.prefill(prefix, views, suffix)
    assert model.counts.encoder == 5 * N and model.counts.llm_input == sum(budgets)
    assert model.counts.visual == [sum(budgets)] * DEPTH and torch.isfinite(logits).all()
    final = state.vision.attn[model.config.feature_block]  # (5, H, 1+n, 1+n)
    parts = []
    for v, k in enumerate(budgets):
        kept = naive_top(final[v, :, 0, 1:].sum(dim=0).tolist(), k)
        parts.append(state.features[0, [v * N + j for j in kept]])
    expected = torch.cat(parts)
    reducer = hired.HiREDReducer(config)
    torch.testing.assert_close(reducer(state)[0], model.projector(expected))


def test_a_batch_of_multi_view_images_is_refused() -> None:
    model = tiny_llava()
    views = anyres_views(images(batch=2, size=64), (2, 2), 32)
    prefix, suffix = prompt(batch=2)
    with hired.patch(model, hired.Config()), pytest.raises(AssertionError, match="batch size 1"):
        model.prefill(prefix, views, suffix)
