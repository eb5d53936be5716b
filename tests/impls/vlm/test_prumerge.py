"""LLaVA-PruMerge: the CLS scores, IQR count and key-kNN merge against plain loops; counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_impls.vlm import prumerge
from reference_impls.vlm.select import iqr_outliers

from .common import DEPTH, N, capture_llm, capture_visual, tiny_llava


def naive_outliers(values: list[float]) -> int:
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    return sum(v > q3 + 1.5 * (q3 - q1) for v in values)


def naive_merge(
    features: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, kept: list[int], m: int
) -> torch.Tensor:
    """One sample, as the official loop: each kept token plus the score-weighted sum of its m most
    key-similar other patches; then the score-weighted sum of the patches not kept."""
    n = features.shape[0]
    unit = [keys[j] / keys[j].norm() for j in range(n)]
    out = []
    for i in kept:
        others = [j for j in range(n) if j != i]
        near = sorted(others, key=lambda j: (-float(unit[i] @ unit[j]), j))[:m]
        out.append(features[i] + sum(scores[j] * features[j] for j in near))
    pruned = [j for j in range(n) if j not in kept]
    out.append(sum((scores[j] * features[j] for j in pruned), torch.zeros_like(features[0])))
    return torch.stack(out)


def naive_cls_scores(model, state) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """One attention map over all channels of the block after the feature block."""
    index = state.block + 1
    block = model.vision.blocks[index]
    x = block.norm1(state.vision.hidden[index])
    C = x.shape[-1]
    q = x @ block.attn.qkv.weight[:C].T + block.attn.qkv.bias[:C]
    k = x @ block.attn.qkv.weight[C : 2 * C].T + block.attn.qkv.bias[C : 2 * C]
    B, T, _ = x.shape
    logits = torch.tensor(
        [[float(q[b, 0] @ k[b, j]) / C**0.5 for j in range(T)] for b in range(B)]
    )  # (B, 1+n)
    return logits.softmax(dim=-1)[:, 1:], k[:, 1:]


def test_iqr_count_equals_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x = torch.randn(2, 50, generator=g).exp()  # skewed, so there are outliers
        assert iqr_outliers(x) == naive_outliers(x.flatten().tolist())


@pytest.mark.parametrize("m", [1, 5, 63])
def test_merge_equals_the_naive_loop(m: int) -> None:
    g = torch.Generator().manual_seed(0)
    B, n, C, D = 2, 20, 5, 4
    features = torch.randn(B, n, C, generator=g, dtype=torch.float64)
    scores = torch.rand(B, n, generator=g, dtype=torch.float64)
    keys = torch.randn(B, n, D, generator=g, dtype=torch.float64)
    kept = torch.tensor([[7, 2, 11], [0, 19, 5]])
    out = prumerge.prumerge_tokens(features, scores, keys, kept, m)
    assert out.shape == (B, 4, C)
    for b in range(B):
        expected = naive_merge(features[b], scores[b], keys[b], kept[b].tolist(), min(m, n - 1))
        torch.testing.assert_close(out[b], expected)


@torch.no_grad()
def test_scores_and_adaptive_count() -> None:
    model = tiny_llava()
    state = capture_visual(model)
    scores, keys = prumerge.cls_scores(state)
    want_scores, want_keys = naive_cls_scores(model, state)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(keys, want_keys, rtol=1e-5, atol=1e-6)
    outliers = naive_outliers(scores.flatten().tolist())  # over the whole batch, as officially
    k = max(1, int(N * (outliers / scores.numel())))
    with prumerge.patch(model, prumerge.Config()):
        llm_state = capture_llm(model, 1)
    assert model.counts.llm_input == k + 1 and model.counts.visual == [k + 1] * DEPTH
    # the tokens: top-k by score (best first), merged, then the extra token
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        kept = sorted(range(N), key=lambda j: (-float(scores[b, j]), j))[:k]
        tokens = naive_merge(state.features[b], scores[b], keys[b], kept, 32)
        torch.testing.assert_close(visual[b], model.projector(tokens), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("keep", "k"), [(0.5, 32), (0.125, 8), (0.001, 1)])
@torch.no_grad()
def test_fixed_counts(keep: float, k: int) -> None:
    model = tiny_llava()
    with prumerge.patch(model, prumerge.config_for(keep)):
        capture_llm(model, 1)
    assert model.counts.llm_input == k + 1 and model.counts.visual == [k + 1] * DEPTH
