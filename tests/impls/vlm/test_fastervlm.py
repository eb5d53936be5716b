"""FasterVLM: exact counts, only the kept tokens reach the LLM, the [CLS] rule against a loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vlm import fastervlm
from reference_impls.vlm.llava import LlmState, anyres_views, attach

from .common import DEPTH, N, capture_llm, capture_visual, images, prompt, tiny_llava


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


def test_select_by_hand_per_view_and_joint() -> None:
    """2 views of 3 tokens, one head; scores view 0: .1 .5 .5 (tie: the earlier), view 1: .9 .2 .3.
    Per view k=1: token 1 of view 0, token 0 of view 1. Joint k=2 of 6: 3 (.9), then 1 (.5)."""
    features = torch.arange(6.0).reshape(1, 6, 1)
    attn = torch.tensor([[[0.1, 0.5, 0.5, 0.9, 0.2, 0.3]]])
    per_view = fastervlm.fastervlm_select(features, attn, 1, views=2)
    assert per_view.flatten().tolist() == [1.0, 3.0]
    joint = fastervlm.fastervlm_select(features, attn, 2)
    assert joint.flatten().tolist() == [1.0, 3.0]
    assert fastervlm.fastervlm_select(features, attn, 3, views=2).flatten().tolist() == [
        0.0,
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
    ]


def test_heads_are_averaged_before_ranking() -> None:
    """Head 0 prefers token 0 (.6 vs .0), head 1 token 1 (.0 vs .7): the mean picks token 1."""
    features = torch.tensor([[[10.0], [20.0]]])
    attn = torch.tensor([[[0.6, 0.0], [0.0, 0.7]]])
    assert fastervlm.fastervlm_select(features, attn, 1).flatten().tolist() == [20.0]


@pytest.mark.parametrize(
    ("keep", "num", "n", "k"),
    [(0.25, None, 64, 16), (0.001, None, 64, 1), (0.25, 10, 64, 10), (0.25, 100, 64, 64)],
)
def test_kept_count(keep: float, num: int | None, n: int, k: int) -> None:
    assert fastervlm.kept_count(n, keep, num) == k


@torch.no_grad()
def test_views_are_ranked_each_on_its_own() -> None:
    """5 views of 64 patches, keep 0.25: each view keeps its own top 16 by its CLS attention (80
        in all); `per_view=False` ranks the 320 together and keeps the best round(0.25 * 320) = 80,
    not 16 from every view."""
    model = tiny_llava()
    views = anyres_views(images(batch=1, size=64), (2, 2), 32)
    state = capture_visual(model, views, batch=1)
    attn = state.vision.attn[model.config.feature_block]  # (5, H, 65, 65)
    kept = [v * N + j for v in range(5) for j in naive_kept(attn[v : v + 1], 16)[0]]
    prefix, suffix = prompt(1)
    with fastervlm.patch(model, fastervlm.Config(keep=0.25)):
        seen: list[LlmState] = []

        def spy(state: LlmState) -> tuple[torch.Tensor, torch.Tensor, int]:
            seen.append(state)
            return state.hidden, state.positions, state.visual_len

        with attach(model, llm={1: spy}):
            model.prefill(prefix, views, suffix)
    llm_state = seen[0]
    assert model.counts.llm_input == 80
    visual = llm_state.inputs[0, llm_state.visual_slice()]
    torch.testing.assert_close(visual, model.projector(state.features[0, kept]))
    score = [float(attn[v, :, 0, 1 + j].mean()) for v in range(5) for j in range(N)]
    joint = sorted(sorted(range(5 * N), key=lambda i: (-score[i], i))[:80])
    assert [len([i for i in joint if i // N == v]) for v in range(5)] != [16] * 5
    reducer = fastervlm.FasterVLMReducer(fastervlm.Config(keep=0.25, per_view=False))
    torch.testing.assert_close(reducer(state)[0], model.projector(state.features[0, joint]))


@torch.no_grad()
def test_visual_token_num_is_an_absolute_count() -> None:
    model = tiny_llava()
    with fastervlm.patch(model, fastervlm.Config(keep=1.0, visual_token_num=10)):
        capture_llm(model, 1)
    assert model.counts.llm_input == 10
