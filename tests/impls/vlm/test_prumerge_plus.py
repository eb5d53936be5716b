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


def test_training_positions_by_hand() -> None:
    """Offset s // 2, stride s = int(1 / r), up to n - 1 exclusive, nothing removed."""
    device = torch.device("cpu")
    assert prumerge_plus.training_positions(64, 1 / 8, device).tolist() == list(range(4, 63, 8))
    assert prumerge_plus.training_positions(10, 1 / 3, device).tolist() == [1, 4, 7]
    assert prumerge_plus.training_positions(5, 1.0, device).tolist() == [0, 1, 2, 3]
    assert prumerge_plus.training_positions(576, 1 / 8, device).tolist()[:2] == [4, 12]


def test_official_complement_with_repeats() -> None:
    """No repeats: the ascending complement. Kept [2, 2] of 5: zeros at 0 (unkept) and 2, sorted
    [0, 0, 1, 3, 4], the first 2 dropped: [1, 3, 4] (0 lost). Kept [0, 2, 2]: [3, 4] (1 lost)."""
    assert prumerge.official_complement(torch.tensor([[3, 1], [0, 4]]), 5).tolist() == [
        [0, 2, 4],
        [1, 2, 3],
    ]
    assert prumerge.official_complement(torch.tensor([[2, 2]]), 5).tolist() == [[1, 3, 4]]
    assert prumerge.official_complement(torch.tensor([[0, 2, 2]]), 5).tolist() == [[3, 4]]


def test_a_token_kept_twice_merges_as_the_official_loop() -> None:
    """6 tokens, kept slots [4, 1, 4] (4 twice), m 2: slot i's candidates are the other slots,
    then the official complement [2, 3, 5] (0 lost to the repeat); the extra token sums those."""
    g = torch.Generator().manual_seed(3)
    features, keys = torch.randn(6, 4, generator=g), torch.randn(6, 5, generator=g)
    scores = torch.rand(6, generator=g)
    kept, compl = [4, 1, 4], [2, 3, 5]
    unit = keys / keys.norm(dim=-1, keepdim=True)
    rows = []
    for i, t in enumerate(kept):
        rest = kept[:i] + kept[i + 1 :] + compl
        order = sorted(range(len(rest)), key=lambda s: (-float(unit[t] @ unit[rest[s]]), s))[:2]
        rows.append(features[t] + sum(scores[rest[s]] * features[rest[s]] for s in order))
    rows.append(sum(scores[j] * features[j] for j in compl))
    got = prumerge.prumerge_tokens(
        features[None], scores[None], keys[None], torch.tensor([kept]), neighbours=2
    )
    torch.testing.assert_close(got[0], torch.stack(rows))


@torch.no_grad()
def test_non_adaptive_counts_official_and_unified() -> None:
    """r 1/8 of 64: 8 selected plus 8 samples (4, 12, ..., 60, repeats kept) plus the extra: 17;
    unified sampling: stride int(8 / 3) = 2 below 63, minus the selected ones."""
    model = tiny_llava()
    state = capture_visual(model)
    scores, _ = prumerge.cls_scores(state)
    selected = {j for b in range(2) for j in scores[b].topk(8).indices.tolist()}
    with prumerge_plus.patch(model, prumerge_plus.Config(adaptive=False, keep=1 / 8)):
        capture_llm(model, 1)
    assert model.counts.llm_input == 17
    unified = prumerge_plus.Config(adaptive=False, keep=1 / 8, unified_sampling=True)
    with prumerge_plus.patch(model, unified):
        capture_llm(model, 1)
    assert model.counts.llm_input == 8 + len(set(range(0, 63, 2)) - selected) + 1
