"""Zero-TPrune (I-stage): invariants of Weighted PageRank and pruning, and a naive loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import zero_tprune as zt
from reference_impls.vision.random_drop import kept_count
from reference_impls.vision.vit import TokenState

from ..common import TINY, device_param, images, tiny_vit


def _attention(B: int, H: int, N: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(B, H, N, N, generator=generator, dtype=dtype)).softmax(dim=-1)


@device_param
def test_shape_and_exact_kept_count(device: str) -> None:
    """Each pruning block keeps exactly 1 + round(rate * n) tokens."""
    model, x = tiny_vit(device=device), images(device=device)
    config = zt.Config(keep_rate=0.6, blocks=(1, 3), iterations=(10, 1))
    with torch.no_grad(), zt.patch(model, config):
        out = model(x)
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes)
    k1 = kept_count(64, 0.6)
    k3 = kept_count(k1, 0.6)
    assert counts == [(65, 65), (65, 1 + k1), (1 + k1, 1 + k1), (1 + k1, 1 + k3)]


def test_identity_at_keep_rate_one() -> None:
    """keep_rate 1: config_for prunes nowhere, and a block keeping every token is a no-op."""
    model, x = tiny_vit(), images()
    assert zt.config_for(1.0, TINY.depth).blocks == ()
    with torch.no_grad():
        reference = model(x)
        with zt.patch(model, zt.Config(keep_rate=1.0, blocks=(0, 2), iterations=(3, 3))):
            same = model(x)
    torch.testing.assert_close(same, reference, rtol=0, atol=0)


def test_wpr_is_a_distribution_and_one_step_is_attention_received() -> None:
    """The graph shift keeps s a distribution; one step is the mean attention a token receives."""
    attn = _attention(2, 3, 7, seed=0, dtype=torch.float64)
    s = zt.weighted_page_rank(attn, 20)
    torch.testing.assert_close(s.sum(dim=-1), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(zt.weighted_page_rank(attn, 1), attn.mean(dim=-2))


def test_wpr_converges_to_the_stationary_distribution() -> None:
    """Many iterations reach the fixed point s = A^T s of the attention graph."""
    attn = _attention(1, 2, 6, seed=1, dtype=torch.float64)
    s = zt.weighted_page_rank(attn, 200)
    shifted = (attn.transpose(-2, -1) @ s.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(shifted, s)


def test_cls_kept_and_most_important_tokens_survive() -> None:
    """CLS row unchanged; the kept tokens are exactly the k highest by importance."""
    torch.manual_seed(2)
    x, attn = torch.randn(2, 10, 4), _attention(2, 3, 10, seed=2)
    out, _, kept = zt.zero_tprune(x, attn, k=4, iterations=5)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    importance = zt.token_importance(attn, 5)
    for b in range(2):
        assert set(kept[b].tolist()) == set(importance[b].topk(4).indices.tolist())


def test_iterations_follow_depth() -> None:
    """Many iterations early, one in the last three blocks."""
    config = zt.config_for(0.5, 12)
    assert config.blocks == (3, 6, 9) and config.iterations == (5, 5, 1)
    assert zt.wpr_iterations(0, 12) == 30


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        zt.Config(keep_rate=0.0)
    with pytest.raises(AssertionError):
        zt.Config(blocks=(1, 2), iterations=(3,))
    with pytest.raises(AssertionError):
        zt.Config(blocks=(1,), iterations=(0,))


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_zero_tprune(x: torch.Tensor, attn: torch.Tensor, k: int, iterations: int):
    """Zero-TPrune I-stage with plain loops: per head WPR, RMS over heads, keep the top k."""
    B, H, N, _ = attn.shape
    rows = []
    for b in range(B):
        per_head = []
        for h in range(H):
            s = [1.0 / N] * N
            for _ in range(iterations):
                s = [sum(float(attn[b, h, j, i]) * s[j] for j in range(N)) for i in range(N)]
            per_head.append(s)
        importance = [(sum(per_head[h][i] ** 2 for h in range(H)) / H) ** 0.5 for i in range(1, N)]
        kept = sorted(sorted(range(N - 1), key=lambda i: -importance[i])[:k])
        rows.append(torch.stack([x[b, 0]] + [x[b, 1 + i] for i in kept]))
    return torch.stack(rows)


@pytest.mark.parametrize(("k", "iterations"), [(2, 1), (5, 4), (9, 12)])
def test_matches_naive_loop(k: int, iterations: int) -> None:
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(2, 11, 5, generator=generator, dtype=torch.float64)
    attn = _attention(2, 3, 11, seed=k, dtype=torch.float64)
    config = zt.Config(keep_rate=k / 10, blocks=(0,), iterations=(iterations,))
    out, _ = zt.ZeroTPruneReducer(config)(TokenState(x, None, 0, attn))
    assert out.shape[1] == 1 + k
    torch.testing.assert_close(out, _naive_zero_tprune(x, attn, k, iterations))
