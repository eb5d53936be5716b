"""EViT: invariants, the DeiT-S MAC budget, and equivalence with a naive loop."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.vision import evit, macs
from reference_impls.vision.vit import DEIT_S, TokenState, VisionTransformer

from ..common import TINY, device_param, images, tiny_vit


def _expected_counts(n_tokens: int, depth: int, blocks: tuple[int, ...], keep_rate: float):
    counts, n = [], n_tokens
    for index in range(depth):
        m = n
        if index in blocks and math.ceil(keep_rate * (n - 1)) < n - 1:
            m = 1 + math.ceil(keep_rate * (n - 1)) + 1
        counts.append((n, m))
        n = m
    return counts


@device_param
def test_shape_and_exact_kept_count(device: str) -> None:
    """Each reducing block leaves exactly 1 + ceil(rate * n) + 1 tokens (CLS, kept, fused)."""
    model, x = tiny_vit(device=device), images(device=device)
    config = evit.Config(keep_rate=0.5, blocks=(1, 2, 3))
    with torch.no_grad(), evit.patch(model, config):
        out = model(x)
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes)
    assert counts == _expected_counts(TINY.num_tokens, TINY.depth, (1, 2, 3), 0.5)
    assert counts[1] == (65, 34) and counts[2] == (34, 19) and counts[3] == (19, 11)


def test_identity_at_keep_rate_one() -> None:
    """keep_rate 1: config_for reduces nowhere, and a block with nothing inattentive is a no-op."""
    model, x = tiny_vit(), images()
    with torch.no_grad():
        reference = model(x)
        assert evit.config_for(1.0, TINY.depth).blocks == ()
        with evit.patch(model, evit.Config(keep_rate=1.0, blocks=(0, 1, 2, 3))):
            same = model(x)
    torch.testing.assert_close(same, reference, rtol=0, atol=0)


def test_cls_kept_and_fused_token_is_the_attention_weighted_sum() -> None:
    """CLS row unchanged; kept rows are the top-k by CLS attention, most attended first; the last
    row is sum a_i x_i."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4)
    cls_attn = torch.rand(2, 8)
    out, size = evit.evit_reorganise(x, cls_attn, k=3)
    assert size is None and out.shape == (2, 5, 4)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    for b in range(2):
        top = cls_attn[b].topk(3).indices  # most attended first
        torch.testing.assert_close(out[b, 1:4], x[b, 1 + top])
        rest = [i for i in range(8) if i not in top.tolist()]
        fused = sum(cls_attn[b, i] * x[b, 1 + i] for i in rest)
        torch.testing.assert_close(out[b, 4], fused)


def test_sizes_add_up_and_normalised_fusion_is_an_average() -> None:
    """The fused token stands for the fused patches (total size kept); normalised, it averages."""
    torch.manual_seed(1)
    x, cls_attn = torch.randn(2, 9, 4), torch.rand(2, 8)
    size = torch.randint(1, 4, (2, 9, 1)).float()
    out, new_size = evit.evit_reorganise(x, cls_attn, 5, size, normalise_fused=True)
    assert new_size is not None and new_size.shape == (2, 7, 1)
    torch.testing.assert_close(new_size.sum(dim=1), size.sum(dim=1))
    dropped = torch.ones(2, 8, dtype=torch.bool)
    dropped.scatter_(1, cls_attn.topk(5).indices, False)
    w = cls_attn * dropped
    expected = (w.unsqueeze(-1) * x[:, 1:]).sum(1) / w.sum(1, keepdim=True)
    torch.testing.assert_close(out[:, -1], expected)


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        evit.Config(keep_rate=0.0)
    with pytest.raises(AssertionError):
        evit.Config(blocks=(2, 2))


def test_deit_s_macs_at_keep_rate_0_7() -> None:
    """DeiT-S, keep 0.7 at blocks 4, 7, 10: about 3.0 GMACs (the paper's budget) on real counts."""
    torch.manual_seed(0)
    model = VisionTransformer(DEIT_S).eval()
    x = torch.randn(1, 3, DEIT_S.img_size, DEIT_S.img_size)
    with torch.no_grad(), evit.patch(model, evit.Config(keep_rate=0.7, blocks=(3, 6, 9))):
        model(x)
        counts = model.token_counts()
    assert [m for _, m in counts][3::3] == [140, 100, 72]
    assert abs(macs.vit_macs(DEIT_S, counts) / 1e9 - 3.0) <= 0.05


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_evit(x: torch.Tensor, attn: torch.Tensor, k: int, fuse: bool = True) -> torch.Tensor:
    """EViT written with plain loops: per image, rank patches by head-averaged CLS attention."""
    B, H, N, _ = attn.shape
    rows = []
    for b in range(B):
        score = []
        for j in range(1, N):
            total = 0.0
            for h in range(H):
                total += float(attn[b, h, 0, j])
            score.append(total / H)
        ranked = sorted(range(N - 1), key=lambda j: -score[j])
        kept = ranked[:k]  # most attended first, as the official topk
        fused = torch.zeros(x.shape[-1], dtype=x.dtype)
        for j in ranked[k:]:
            fused = fused + score[j] * x[b, 1 + j]
        tokens = [x[b, 0]] + [x[b, 1 + j] for j in kept] + ([fused] if fuse else [])
        rows.append(torch.stack(tokens))
    return torch.stack(rows)


@pytest.mark.parametrize("k", [1, 4, 10])
@pytest.mark.parametrize("fuse", [True, False])
def test_matches_naive_loop(k: int, fuse: bool) -> None:
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(3, 13, 5, generator=generator, dtype=torch.float64)
    attn = torch.randn(3, 2, 13, 13, generator=generator, dtype=torch.float64).softmax(-1)
    state = TokenState(x, None, 0, attn)
    config = evit.Config(keep_rate=(k - 0.5) / 12, fuse_token=fuse)  # ceil -> k
    out, _ = evit.EViTReducer(config)(state)
    assert out.shape[1] == 1 + k + int(fuse)
    torch.testing.assert_close(out, _naive_evit(x, attn, k, fuse))


def test_without_fusion_the_inattentive_tokens_are_dropped() -> None:
    """fuse_token=False: CLS, then the kept tokens by decreasing CLS attention, nothing more."""
    x = torch.arange(6, dtype=torch.float64).view(1, 6, 1)
    cls_attn = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]], dtype=torch.float64)
    size = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]], dtype=torch.float64)
    out, new_size = evit.evit_reorganise(x, cls_attn, 3, size, fuse_token=False)
    assert out.flatten().tolist() == [0, 2, 4, 5] and new_size.flatten().tolist() == [1, 3, 5, 6]
    out, new_size = evit.evit_reorganise(x, cls_attn, 3, size)  # fused: 0.1 * 1 + 0.05 * 3
    torch.testing.assert_close(out.flatten(), torch.tensor([0, 2, 4, 5, 0.25]).double())
    assert new_size.flatten().tolist() == [1, 3, 5, 6, 2 + 4]
    model = tiny_vit()
    with torch.no_grad(), evit.patch(model, evit.Config(0.5, (1, 2), fuse_token=False)):
        model(images())
    assert model.token_counts()[1:3] == [(65, 33), (33, 17)]
