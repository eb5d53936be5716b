"""VisionZip: counts, CLS first, dominant and contextual tokens against a plain loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vlm import visionzip

from .common import DEPTH, N, capture_llm, capture_visual, tiny_llava


def naive_visionzip(
    tokens: torch.Tensor, cls_attn: torch.Tensor, keys: torch.Tensor, d: int, c: int
) -> torch.Tensor:
    """One sample: tokens (1+n, C), cls_attn (H, n), keys (1+n, D)."""
    n = tokens.shape[0] - 1
    score = [float(cls_attn[:, j].sum()) for j in range(n)]
    dominant = sorted(sorted(range(n), key=lambda j: (-score[j], j))[: d - 1])
    out = [tokens[0]] + [tokens[1 + j] for j in dominant]
    rest = [1 + j for j in range(n) if j not in dominant]  # token indices, in order
    step = max(1, len(rest) // c)
    targets = list(range(0, len(rest), step))[:c]
    unit = [keys[i] / keys[i].norm() for i in rest]
    groups: dict[int, list[int]] = {t: [] for t in targets}
    for i in range(len(rest)):
        if i in targets:
            continue
        sims = [float(unit[i] @ unit[t]) for t in targets]
        groups[targets[sims.index(max(sims))]].append(i)
    for t in targets:
        members = groups[t]
        mean = sum((tokens[rest[i]] for i in members), torch.zeros_like(tokens[0]))
        out.append(tokens[rest[t]] + mean / max(1, len(members)))
    return torch.stack(out)


def test_counts_of_the_official_setting() -> None:
    assert visionzip.counts(576, visionzip.Config()) == (54, 10)  # 53 patches + CLS, 10 merged
    assert visionzip.counts(64, visionzip.config_for(0.5)) == (27, 5)


@pytest.mark.parametrize(("keep", "total"), [(0.5, 32), (0.25, 16), (0.05, 3)])
@torch.no_grad()
def test_llm_counts(keep: float, total: int) -> None:
    model = tiny_llava()
    with visionzip.patch(model, visionzip.Config(keep=keep)):
        capture_llm(model, 1)
    assert model.counts.llm_input == total and model.counts.visual == [total] * DEPTH


@pytest.mark.parametrize(("d", "c"), [(27, 5), (10, 7), (1, 3), (40, 24)])
def test_tokens_equal_the_naive_loop(d: int, c: int) -> None:
    g = torch.Generator().manual_seed(0)
    B, n, C, H, D = 2, 64, 6, 3, 4
    tokens = torch.randn(B, 1 + n, C, generator=g, dtype=torch.float64)
    cls_attn = torch.rand(B, H, n, generator=g, dtype=torch.float64)
    keys = torch.randn(B, 1 + n, D, generator=g, dtype=torch.float64)
    out = visionzip.visionzip_tokens(tokens, cls_attn, keys, d, c)
    assert out.shape == (B, d + c, C)
    for b in range(B):
        torch.testing.assert_close(out[b], naive_visionzip(tokens[b], cls_attn[b], keys[b], d, c))


@torch.no_grad()
def test_reads_the_feature_block_with_cls() -> None:
    model = tiny_llava()
    state = capture_visual(model)
    block = model.config.feature_block
    d, c = visionzip.counts(N, visionzip.Config(keep=0.5))
    with visionzip.patch(model, visionzip.Config(keep=0.5)):
        llm_state = capture_llm(model, 1)
    visual = llm_state.inputs[:, llm_state.visual_slice()]
    for b in range(2):
        tokens = naive_visionzip(
            state.vision.hidden[block + 1][b], state.vision.attn[block][b, :, 0, 1:],
            state.vision.keys[block][b], d, c,
        )  # fmt: skip
        torch.testing.assert_close(visual[b], model.projector(tokens), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("dominant", "contextual"), [(10, 2), (64, 1), (1, 63)])
@torch.no_grad()
def test_official_absolute_counts(dominant: int, contextual: int) -> None:
    """`dominant` counts CLS: dominant - 1 patches + CLS, plus the contextual tokens; (64, 1)
    keeps 63 patches and merges the last one into itself; (1, 63): only CLS is dominant."""
    config = visionzip.Config(dominant=dominant, contextual=contextual)
    assert visionzip.counts(64, config) == (dominant, contextual)
    model = tiny_llava()
    with visionzip.patch(model, config):
        capture_llm(model, 1)
    assert model.counts.llm_input == dominant + contextual


def test_official_counts_must_fit_and_come_together() -> None:
    with pytest.raises(AssertionError, match="must not exceed the 64 patches"):
        visionzip.counts(64, visionzip.Config(dominant=60, contextual=6))
    with pytest.raises(AssertionError, match="give both"):
        visionzip.Config(dominant=10)
