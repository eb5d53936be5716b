"""SparseVLM: the official schedule's exact counts, raters, scores, DPC-kNN recycling."""

from __future__ import annotations

import math

import torch

from reference_impls.llm.llama import LlamaConfig
from reference_impls.vision.vit import ViTConfig
from reference_impls.vlm import sparsevlm
from reference_impls.vlm.llava import LlavaConfig

from .common import DEPTH, PREFIX, SUFFIX, capture_llm, inputs, prompt, tiny_llava

# LLaVA-1.5's geometry (24x24 = 576 visual tokens, 32 layers) at a tiny width.
LLAVA_SHAPED = LlavaConfig(
    vision=ViTConfig(img_size=48, patch_size=2, num_classes=1, width=16, depth=3, heads=2),
    llm=LlamaConfig(
        vocab_size=97, width=32, depth=32, heads=4, kv_heads=2, head_dim=8, mlp_hidden=32
    ),
)


def naive_raters(inputs_: torch.Tensor, start: int, n: int) -> list[list[bool]]:
    out = []
    for b in range(inputs_.shape[0]):
        text = inputs_[b, start + n :]
        rel = [0.0] * text.shape[0]
        for i in range(n):
            row = torch.stack([inputs_[b, start + i] @ t for t in text]).softmax(dim=0)
            for t in range(len(rel)):
                rel[t] += float(row[t]) / n
        mean = sum(rel) / len(rel)
        out.append([r > mean for r in rel])
    return out


def naive_dpc(x: torch.Tensor, c: int) -> tuple[list[int], list[int]]:
    """One sample: centres (best first) and the cluster of each token."""
    n, C = x.shape
    dist = [[float((x[i] - x[j]).norm()) / math.sqrt(C) for j in range(n)] for i in range(n)]
    density = [math.exp(-sum(d * d for d in sorted(dist[i])[:c]) / c) for i in range(n)]
    far = max(max(row) for row in dist)
    parent = [
        min([dist[i][j] for j in range(n) if density[j] > density[i]], default=far)
        for i in range(n)
    ]
    score = [parent[i] * density[i] for i in range(n)]
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:c]
    assign = [min(range(c), key=lambda k: (dist[centres[k]][j], k)) for j in range(n)]
    for k, centre in enumerate(centres):
        assign[centre] = k
    return centres, assign


@torch.no_grad()
def test_official_schedule_counts_on_llava_geometry() -> None:
    """576 -> 300 (+9 recycled) after layer 2, -> 200 (+4) after 6, -> 110 (+3) after 15."""
    model = tiny_llava(config=LLAVA_SHAPED)
    prefix, suffix = prompt(batch=1)
    image = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with sparsevlm.patch(model, sparsevlm.Config()):
        model.prefill(prefix, image, suffix)
    assert sparsevlm.recycle_counts(276, sparsevlm.Config()) == (83, 9)
    assert model.counts.visual == [576] * 3 + [309] * 4 + [204] * 9 + [113] * 16
    assert model.counts.text == [PREFIX + SUFFIX] * 32


@torch.no_grad()
def test_official_64_token_schedule_without_recycling() -> None:
    """score.py's 64-token schedule: 66, 30 and 17 of 576 after layers 2, 6 and 15."""
    model = tiny_llava(config=LLAVA_SHAPED)
    prefix, suffix = prompt(batch=1)
    image = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    shares = tuple(count / 576 for count in sparsevlm.OFFICIAL_SCHEDULES[64])
    with sparsevlm.patch(model, sparsevlm.Config(keep=shares, recycle=False)):
        model.prefill(prefix, image, suffix)
    assert model.counts.visual == [576] * 3 + [66] * 4 + [30] * 9 + [17] * 16


@torch.no_grad()
def test_counts_without_recycling_and_on_the_tiny_model() -> None:
    model = tiny_llava()
    config = sparsevlm.Config(layers=(1, 4), keep=(0.5, 0.25), recycle=False)
    with sparsevlm.patch(model, config):
        model.prefill(*inputs())
    assert model.counts.visual == [64, 64, 32, 32, 32, 16, 16, 16]
    config = sparsevlm.config_for(0.5, depth=DEPTH)
    assert config.layers == (0, 2, 4)
    with sparsevlm.patch(model, config):
        model.prefill(*inputs())
    expected, v = [64] * DEPTH, 64
    for layer, share in zip(config.layers, config.keep, strict=True):
        k = min(round(share * 64), v - 1)
        recycled = int(0.3 * (v - k)) + 1
        v = k + int(recycled / 10) + 1
        expected[layer + 1 :] = [v] * (DEPTH - layer - 1)
    assert model.counts.visual == expected


def test_raters_and_scores_equal_the_naive_rule() -> None:
    model = tiny_llava()
    state = capture_llm(model, 3)
    raters = sparsevlm.select_raters(state.inputs, PREFIX, 64)
    assert raters.tolist() == naive_raters(state.inputs, PREFIX, 64)
    assert state.attn is not None
    scores = sparsevlm.rater_scores(state.attn, raters, PREFIX, 64)
    H = state.attn.shape[1]
    for b in range(2):
        rows = [PREFIX + 64 + t for t in range(SUFFIX) if raters[b, t]]
        for j in range(0, 64, 7):
            expected = sum(
                float(state.attn[b, h, r, PREFIX + j]) for h in range(H) for r in rows
            ) / (H * len(rows))
            assert math.isclose(float(scores[b, j]), expected, rel_tol=1e-5)


def test_dpc_knn_equals_the_naive_loop() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 17, 3, generator=g, dtype=torch.float64)
    for c in (1, 2, 4):
        centres, assign = sparsevlm.dpc_knn(x, c)
        merged = sparsevlm.cluster_means(x, assign, c)
        for b in range(2):
            want_centres, want_assign = naive_dpc(x[b], c)
            assert centres[b].tolist() == want_centres
            assert assign[b].tolist() == want_assign
            for k in range(c):
                members = [j for j in range(17) if want_assign[j] == k]
                # the official mean: the sum over (size + 1e-6)
                expected = x[b, members].sum(dim=0) / (len(members) + 1e-6)
                torch.testing.assert_close(merged[b, k], expected, rtol=1e-12, atol=0.0)


@torch.no_grad()
def test_cluster_means_scale_by_size_plus_epsilon() -> None:
    """Clusters {0, 2} and {1}: (x0 + x2) / (2 + 1e-6) and x1 / (1 + 1e-6), as the official
    `cluster_and_merge`; an empty cluster gives zeros."""
    x = torch.tensor([[[1.0, 2.0], [4.0, 8.0], [3.0, 0.0]]], dtype=torch.float64)
    assign = torch.tensor([[0, 1, 0]])
    merged = sparsevlm.cluster_means(x, assign, 3)
    expected = [
        [[4.0 / (2 + 1e-6), 2.0 / (2 + 1e-6)], [4.0 / (1 + 1e-6), 8.0 / (1 + 1e-6)], [0.0, 0.0]]
    ]
    torch.testing.assert_close(merged.tolist(), expected, rtol=1e-12, atol=0.0)


def test_one_step_keeps_text_and_recycles_at_centre_positions() -> None:
    model = tiny_llava()
    state = capture_llm(model, 2)
    assert state.attn is not None
    config = sparsevlm.Config(layers=(1,), keep=(0.5,))
    hidden, positions, visual = sparsevlm.SparseVLMReducer(config, 0.5)(state)
    assert sparsevlm.recycle_counts(32, config) == (10, 2)
    assert visual == 32 + 2 and hidden.shape[1] == PREFIX + 34 + SUFFIX
    raters = sparsevlm.select_raters(state.inputs, PREFIX, 64)
    scores = sparsevlm.rater_scores(state.attn, raters, PREFIX, 64)
    for b in range(2):
        order = sorted(range(64), key=lambda j: (-float(scores[b, j]), j))
        kept, deleted = sorted(order[:32]), sorted(order[32:])
        assert [p - PREFIX for p in positions[b, PREFIX : PREFIX + 32].tolist()] == kept
        recycled = sorted(deleted, key=lambda j: (-float(scores[b, j]), j))[:10]
        tokens = state.hidden[b, [PREFIX + j for j in recycled]]
        centres, assign = naive_dpc(tokens, 2)
        for k in range(2):
            members = [i for i in range(10) if assign[i] == k]
            expected = tokens[members].sum(dim=0) / (len(members) + 1e-6)
            torch.testing.assert_close(hidden[b, PREFIX + 32 + k], expected)
            assert int(positions[b, PREFIX + 32 + k]) == PREFIX + recycled[centres[k]]
        torch.testing.assert_close(hidden[b, :PREFIX], state.hidden[b, :PREFIX], rtol=0, atol=0)
        torch.testing.assert_close(hidden[b, -SUFFIX:], state.hidden[b, -SUFFIX:], rtol=0, atol=0)
