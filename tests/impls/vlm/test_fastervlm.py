"""FasterVLM: exact counts, only the kept tokens reach the LLM, the [CLS] rule against a loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vlm import fastervlm

from .common import DEPTH, N, capture_llm, capture_visual, tiny_llava


def naive_kept(attn: torch.Tensor, k: int) -> list[list[int]]:
    """attn (B, H, 1+n, 1+n): per sample the k patches with the largest head-averaged CLS
    attention, in their order."""
    B, H, T, _ = attn.shape
    kept = []
    for b in range(B):
        score = [sum(float(attn[b, h, 0, 1 + j]) for h in range(H)) / H for j in range(T - 1)]
        kept.append(sorted(sorted(range(T - 1), key=lambda j: (-score[j], j))[:k]))
    return kept


@pytest.mark.parametrize(("keep", "k"), [(0.25, 16), (0.5, 32), (0.01, 1)])
@torch.no_grad()
def test_counts(keep: float, k: int) -> None:
    model = tiny_llava()
    with fastervlm.patch(model, fastervlm.Config(keep=keep)):
        capture_llm(model, 1)
    assert model.counts.encoder == N
    assert model.counts.llm_input == k and model.counts.visual == [k] * DEPTH


@torch.no_grad()
def test_the_llm_reads_exactly_the_projected_kept_tokens() -> None:
    model = tiny_llava()
    state = capture_visual(model)
    block = model.config.feature_block
    assert block == 2  # CLIP's layer -2 in a 4-block encoder
    kept = naive_kept(state.vision.attn[block], 16)
    with fastervlm.patch(model, fastervlm.Config(keep=0.25)):
        llm_state = capture_llm(model, 1)
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        expected = model.projector(state.features[b, kept[b]])
        torch.testing.assert_close(visual[b], expected)
