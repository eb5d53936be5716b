"""ToMe: bipartite soft matching on keys with size-weighted merging."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import tome
from reference_impls.vision.macs import schedule_counts, vit_macs
from reference_impls.vision.vit import DEIT_S, VisionTransformer

from .common import TINY, device_param, images, tiny_vit


def _inputs(B: int = 3, N: int = 17, C: int = 6, D: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g)
    metric = torch.randn(B, N, D, generator=g)
    size = torch.randint(1, 5, (B, N, 1), generator=g).float()
    return x, metric, size


@device_param
def test_exact_kept_counts_per_block(device: str) -> None:
    """r=5 in every block: each MLP sees 5 tokens fewer than its attention."""
    model = tiny_vit(device=device)
    with tome.patch(model, tome.Config(r=5)):
        out = model(images(device=device))
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()
    assert counts == [(65, 60), (60, 55), (55, 50), (50, 45)]


def test_r_is_capped_at_half_the_patches() -> None:
    """At most (N - 1) // 2 tokens merge in one block, as in ToMe."""
    model = tiny_vit()
    with tome.patch(model, tome.Config(r=40)):
        model(images())
    assert model.token_counts() == [(65, 33), (33, 17), (17, 9), (9, 5)]


def test_decreasing_schedule() -> None:
    """The decreasing schedule runs linearly from 2r to 0 and the counts follow it."""
    config = tome.Config(r=4, schedule="decreasing")
    assert config.per_block(4) == (8, 5, 2, 0)
    assert tome.Config(r=13, schedule="decreasing").per_block(12)[::11] == (26, 0)
    model = tiny_vit()
    with tome.patch(model, config):
        model(images())
    assert model.token_counts() == [(65, 57), (57, 52), (52, 50), (50, 50)]


def test_tuple_r_must_match_depth() -> None:
    with pytest.raises(ValueError, match="depth 4"), tome.patch(tiny_vit(), tome.Config(r=(1, 2))):
        pass
    with pytest.raises(AssertionError):
        tome.Config(r=(1, 2), schedule="decreasing")
    with pytest.raises(AssertionError):
        tome.Config(r=-1)


def test_identity_at_zero_r() -> None:
    """r=0 attaches nothing and the output is bit-identical."""
    model = tiny_vit()
    x = images()
    reference = model(x)
    with tome.patch(model, tome.Config(r=0)):
        assert all(b.mid_reducer is None for b in model.blocks) and not model.track_size
        torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
    tokens, metric, size = _inputs()
    out, new_size = tome.bipartite_soft_matching(tokens, metric, 0, size)
    assert out is tokens and new_size is size


def test_cls_kept_unchanged_and_first() -> None:
    x, metric, size = _inputs()
    size[:, 0] = 1.0
    out, new_size = tome.bipartite_soft_matching(x, metric, 6, size)
    assert out.shape == (3, 11, 6) and new_size.shape == (3, 11, 1)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    assert (new_size[:, 0] == 1).all()


def test_merging_conserves_the_size_weighted_sum() -> None:
    """sum(size * x) and sum(size) are the same before and after merging."""
    x, metric, size = _inputs()
    out, new_size = tome.bipartite_soft_matching(x, metric, 8, size)
    torch.testing.assert_close((new_size * out).sum(1), (size * x).sum(1))
    torch.testing.assert_close(new_size.sum(1), size.sum(1), rtol=0, atol=0)


def test_proportional_attention_is_on_while_patched() -> None:
    model = tiny_vit()
    with tome.patch(model, tome.Config(r=2)):
        assert model.track_size
    assert not model.track_size


def naive_tome(x, metric, r, size):
    """ToMe by plain loops: one image and one token at a time."""
    B, N, _ = x.shape
    r = min(r, (N - 1) // 2)
    outs, sizes = [], []
    for b in range(B):
        unit = [metric[b, i] / metric[b, i].norm() for i in range(N)]
        edges = []  # (similarity, a position, best b position)
        for i in range(2, N, 2):  # set A without CLS
            best_j, best_s = None, None
            for j in range(1, N, 2):
                s = float(torch.dot(unit[i], unit[j]))
                if best_s is None or s > best_s:
                    best_j, best_s = j, s
            edges.append((best_s, i, best_j))
        edges.sort(key=lambda e: -e[0])
        into = {i: j for _, i, j in edges[:r]}
        rows, row_sizes = [], []
        for i in range(N):
            if i in into:
                continue
            group = [i] + [k for k, j in into.items() if j == i]
            total = sum(float(size[b, k, 0]) for k in group)
            rows.append(sum(x[b, k] * size[b, k, 0] for k in group) / total)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize(("N", "r"), [(17, 5), (16, 7), (12, 20)])
def test_matches_a_naive_loop(N: int, r: int) -> None:
    """The vectorised merge equals the loop version on random inputs (odd, even N, capped r)."""
    for seed in range(3):
        x, metric, size = _inputs(N=N, seed=seed)
        out, new_size = tome.bipartite_soft_matching(x, metric, r, size)
        ref, ref_size = naive_tome(x, metric, r, size)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)


def test_config_for() -> None:
    """A constant r leaving about keep_rate of the patches; keep_rate 1 is exactly no merging."""
    assert tome.config_for(0.5, 4, num_patches=64) == tome.Config(r=8)
    assert tome.config_for(1.0, 12) == tome.Config(r=0)
    model = tiny_vit()
    with tome.patch(model, tome.config_for(0.5, TINY.depth, num_patches=TINY.num_patches)):
        model(images(batch=1))
    assert model.token_counts()[-1][1] - 1 == 32


def test_deit_s_r13_macs() -> None:
    """ToMe r=13 on DeiT-S at 224px: 4.6 GMACs become 2.7, as the ToMe paper reports."""
    torch.manual_seed(0)
    model = VisionTransformer(DEIT_S).eval()
    with torch.no_grad(), tome.patch(model, tome.Config(r=13)):
        model(torch.randn(1, 3, 224, 224))
    counts = model.token_counts()
    assert counts == schedule_counts(DEIT_S, [197 - 13 * (i + 1) for i in range(12)])
    assert round(vit_macs(DEIT_S) / 1e9, 1) == 4.6
    assert round(vit_macs(DEIT_S, counts) / 1e9, 1) == 2.7
