"""ToFu: ToMe matching, pruning in early blocks and MLERP merging in later ones."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import tofu

from .common import TINY, device_param, images, tiny_vit


def _inputs(B: int = 3, N: int = 17, C: int = 6, D: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    metric = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    size = torch.randint(1, 5, (B, N, 1), generator=g).double()
    return x, metric, size


@device_param
def test_exact_counts_and_switch_block(device: str) -> None:
    """r=5 in every block; blocks 0..depth//2 prune, the later ones merge."""
    model = tiny_vit(device=device)
    with torch.no_grad(), tofu.patch(model, tofu.Config(r=5)):
        modes = [block.mid_reducer.merge for block in model.blocks]
        out = model(images(device=device))
        counts = model.token_counts()
    assert modes == [False, False, False, True]
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()
    assert counts == [(65, 60), (60, 55), (55, 50), (50, 45)]
    with tofu.patch(model, tofu.Config(r=5, merge_from=1)):
        assert [block.mid_reducer.merge for block in model.blocks] == [False, True, True, True]


def test_identity_at_zero_r() -> None:
    """r=0 attaches nothing and the output is bit-identical."""
    model, x = tiny_vit(), images()
    with torch.no_grad():
        reference = model(x)
        with tofu.patch(model, tofu.config_for(1.0, TINY.depth, TINY.num_patches)):
            assert all(b.mid_reducer is None for b in model.blocks) and not model.track_size
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
    tokens, metric, size = _inputs()
    out, new_size = tofu.token_fusion(tokens, metric, 0, merge=True, size=size)
    assert out is tokens and new_size is size


def test_pruning_keeps_survivors_untouched() -> None:
    """Pruning drops the matched sources; every other token, CLS first, is unchanged, and no
    size grows."""
    x, metric, size = _inputs()
    src, _ = tofu.bipartite_match(metric, 6)
    out, new_size = tofu.token_fusion(x, metric, 6, merge=False, size=size)
    assert out.shape == (3, 11, 6) and new_size.shape == (3, 11, 1)
    for b in range(3):
        keep = [i for i in range(17) if i not in src[b].tolist()]
        torch.testing.assert_close(out[b], x[b, keep], rtol=0, atol=0)
        torch.testing.assert_close(new_size[b], size[b, keep], rtol=0, atol=0)


def test_mlerp_keeps_the_largest_norm_and_the_average_direction() -> None:
    """A merged token has its group's largest norm and the size-weighted mean's direction;
    untouched tokens (CLS included) are bit-identical; sizes add up."""
    x, metric, size = _inputs()
    src, dst = tofu.bipartite_match(metric, 7)
    out, new_size = tofu.token_fusion(x, metric, 7, merge=True, size=size)
    torch.testing.assert_close(new_size.sum(1), size.sum(1), rtol=0, atol=0)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    slots = tofu.survivor_slots(17, src, dst)
    for b in range(3):
        for j in range(out.shape[1]):
            group = (slots[b] == j).nonzero().flatten()
            if len(group) == 1:
                torch.testing.assert_close(out[b, j], x[b, group[0]], rtol=0, atol=0)
                continue
            mean = (size[b, group] * x[b, group]).sum(0) / size[b, group].sum()
            largest = x[b, group].norm(dim=-1).max()
            torch.testing.assert_close(out[b, j].norm(), largest)
            torch.testing.assert_close(out[b, j] / largest, mean / mean.norm())


def test_config_ranges_and_depth_are_checked() -> None:
    with pytest.raises(AssertionError):
        tofu.Config(r=-1)
    with pytest.raises(AssertionError):
        tofu.Config(merge_from=-1)
    with pytest.raises(ValueError, match="depth 4"), tofu.patch(tiny_vit(), tofu.Config(r=(1, 2))):
        pass
    assert tofu.config_for(0.5, 4, num_patches=64) == tofu.Config(r=8)


# --- equivalence with a naive loop ------------------------------------------------------------


def naive_tofu(x, metric, r, merge, size):
    """ToFu by plain loops: ToMe's matching, then per group either drop the sources or MLERP."""
    B, N, _ = x.shape
    r = min(r, (N - 1) // 2)
    outs, sizes = [], []
    for b in range(B):
        unit = [metric[b, i] / metric[b, i].norm() for i in range(N)]
        edges = []
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
            group = [i] + ([k for k, j in into.items() if j == i] if merge else [])
            if len(group) == 1:
                rows.append(x[b, i])
                row_sizes.append([float(size[b, i, 0])])
                continue
            total = sum(float(size[b, k, 0]) for k in group)
            mean = sum(x[b, k] * size[b, k, 0] for k in group) / total
            largest = max(float(x[b, k].norm()) for k in group)
            rows.append(mean / mean.norm() * largest)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes, dtype=x.dtype))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize(("N", "r"), [(17, 5), (16, 7), (12, 20)])
def test_matches_a_naive_loop(N: int, r: int, merge: bool) -> None:
    """Prune and MLERP steps equal the loop version (odd and even N, capped r)."""
    for seed in range(3):
        x, metric, size = _inputs(N=N, seed=seed)
        out, new_size = tofu.token_fusion(x, metric, r, merge, size)
        ref, ref_size = naive_tofu(x, metric, r, merge, size)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)
