"""TRIM: question-guided scores, IQR count and the averaged token against plain loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_impls.vlm import trim

from .common import DEPTH, N, capture_llm, capture_visual, tiny_llava


def naive_scores(joint: torch.Tensor, question: torch.Tensor, negate: bool) -> list[float]:
    """One sample: softmax over tokens of the (optionally negated) dot products."""
    sims = [float(joint[j] @ question) * (-1 if negate else 1) for j in range(joint.shape[0])]
    top = max(sims)
    exp = [np.exp(s - top) for s in sims]
    return [e / sum(exp) for e in exp]


def naive_tokens(features: torch.Tensor, scores: list[float], k: int) -> torch.Tensor:
    n = features.shape[0]
    kept = sorted(sorted(range(n), key=lambda j: (-scores[j], j))[:k])
    rest = [j for j in range(n) if j not in kept]
    parts = [features[kept]]
    if rest:
        parts.append(features[rest].mean(dim=0, keepdim=True))
    return torch.cat(parts)


@pytest.mark.parametrize("negate", [False, True])
@torch.no_grad()
def test_adaptive_selection_equals_the_naive_rule(negate: bool) -> None:
    model = tiny_llava()
    state = capture_visual(model)
    question = model.llm.embed_tokens(state.suffix).mean(dim=1)  # the stand-in text embedding
    joint = model.projector(state.features)
    scores = [naive_scores(joint[b], question[b], negate) for b in range(2)]
    flat = scores[0] + scores[1]
    q1, q3 = np.percentile(flat, 25), np.percentile(flat, 75)
    k = int(N * sum(s > q3 + 1.5 * (q3 - q1) for s in flat) / len(flat))
    with trim.patch(model, trim.Config(negate=negate)):
        llm_state = capture_llm(model, 1)
    assert model.counts.llm_input == k + 1 and model.counts.visual == [k + 1] * DEPTH
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        expected = model.projector(naive_tokens(state.features[b], scores[b], k))
        torch.testing.assert_close(visual[b], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("keep", "total"), [(0.5, 33), (0.25, 17), (1 / 64, 2)])
@torch.no_grad()
def test_fixed_counts(keep: float, total: int) -> None:
    model = tiny_llava()
    with trim.patch(model, trim.config_for(keep)):
        capture_llm(model, 1)
    assert model.counts.llm_input == total


def test_all_kept_adds_no_average() -> None:
    x = torch.randn(1, 5, 3)
    torch.testing.assert_close(trim.trim_tokens(x, torch.rand(1, 5), 5), x)


def test_official_sign_is_the_default() -> None:
    """The official code negates the similarities: the least aligned token scores highest."""
    assert trim.Config().negate
    joint = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]])
    question = torch.tensor([[1.0, 0.0]])
    assert trim.trim_scores(joint, question, negate=True).argmax().item() == 1
    assert trim.trim_scores(joint, question, negate=False).argmax().item() == 2


def test_no_outlier_keeps_only_the_average_token() -> None:
    """Equal scores have no outlier above Q3 + 1.5 IQR: int(n * 0) = 0 tokens kept, as in the
    official code, and the one token left is the mean of all."""
    scores = torch.full((1, 4), 0.25)
    assert trim.kept_count(scores, trim.Config()) == 0
    x = torch.arange(12.0).view(1, 4, 3)
    torch.testing.assert_close(trim.trim_tokens(x, scores, 0), x.mean(dim=1, keepdim=True))
    # one clear outlier among 8: int(8 * 1/8) = 1
    peaked = torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3]])
    assert trim.kept_count(peaked, trim.Config()) == 1
    assert trim.trim_tokens(x.repeat(1, 2, 1), peaked, 1).shape == (1, 2, 3)
