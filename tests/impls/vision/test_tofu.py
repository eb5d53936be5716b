"""ToFu: ToMe matching, pruning in early blocks and MLERP merging in later ones."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import tofu, tome

from ..common import TINY, device_param, images, tiny_vit


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
    slots = tome.match(metric, 6).slots()  # type: ignore[union-attr]
    out, new_size = tofu.token_fusion(x, metric, 6, merge=False, size=size)
    assert out.shape == (3, 11, 6) and new_size.shape == (3, 11, 1)
    for b in range(3):
        src = [i for i in range(0, 17, 2) if slots[b, i] >= 3]  # A tokens merged into a B slot
        keep = [i for i in range(0, 17, 2) if i not in src] + list(range(1, 17, 2))  # ToMe layout
        torch.testing.assert_close(out[b], x[b, keep], rtol=0, atol=0)
        torch.testing.assert_close(new_size[b], size[b, keep], rtol=0, atol=0)


def test_mlerp_keeps_the_largest_norm_and_the_average_direction() -> None:
    """A merged token has its group's largest norm and the size-weighted mean's direction;
    untouched tokens (CLS included) are bit-identical; sizes add up."""
    x, metric, size = _inputs()
    out, new_size = tofu.token_fusion(x, metric, 7, merge=True, size=size)
    torch.testing.assert_close(new_size.sum(1), size.sum(1), rtol=0, atol=0)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    slots = tome.match(metric, 7).slots()  # type: ignore[union-attr]
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


def _five_tokens(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """A = positions 0, 2, 4 and B = 1, 3; token 4 matches 1 best (cos 0.995), 2 matches 3."""
    metric = torch.tensor([[[1.0, -1.0], [1.0, 0.0], [0.2, 1.0], [0.0, 1.0], [1.0, 0.1]]])
    x = torch.tensor([[[9.0, 9.0], [3.0, 0.0], [0.0, 5.0], [1.0, 1.0], [0.0, 4.0]]], dtype=dtype)
    return x, metric.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_five_tokens_by_hand_in_tomes_layout(dtype: torch.dtype) -> None:
    """r=1: token 4 goes into token 1; out = [CLS, unmerged A (2), B (1+4, 3)], ToMe's layout.

    Prune drops token 4; MLERP gives the mean (1.5, 2), norm 2.5, rescaled to max(3, 4) = 4."""
    x, metric = _five_tokens(dtype)
    out, size = tofu.token_fusion(x, metric, 1, merge=False)
    assert out[0].tolist() == [[9.0, 9.0], [0.0, 5.0], [3.0, 0.0], [1.0, 1.0]]
    assert size[0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0]
    out, size = tofu.token_fusion(x, metric, 1, merge=True)
    expected = torch.tensor([[9.0, 9.0], [0.0, 5.0], [2.4, 3.2], [1.0, 1.0]], dtype=dtype)
    torch.testing.assert_close(out[0], expected)
    assert size[0, :, 0].tolist() == [1.0, 1.0, 2.0, 1.0]


def test_mean_mode_ignores_sizes_and_r_past_the_cap() -> None:
    """Sizes 1 and 3: "weighted" leans to the heavier token, "mean" does not; sizes add either
    way. r = 5 on 5 tokens is capped at (5 - 1) // 2 = 2 merges."""
    x, metric = _five_tokens()
    size = torch.tensor([[[1.0], [1.0], [1.0], [1.0], [3.0]]])
    mean, mean_size = tofu.token_fusion(x, metric, 1, merge=True, size=size, mode="mean")
    torch.testing.assert_close(mean[0, 2], torch.tensor([2.4, 3.2]))
    weighted, weighted_size = tofu.token_fusion(x, metric, 1, merge=True, size=size)
    average = torch.tensor([3.0 + 0.0, 0.0 + 12.0]) / 4  # (0.75, 3), rescaled to norm 4
    torch.testing.assert_close(weighted[0, 2], average / average.norm() * 4)
    assert mean_size[0, :, 0].tolist() == weighted_size[0, :, 0].tolist() == [1.0, 1.0, 4.0, 1.0]
    capped, capped_size = tofu.token_fusion(x, metric, 5, merge=True)
    assert capped.shape == (1, 3, 2) and capped_size[0, :, 0].tolist() == [1.0, 2.0, 2.0]


def test_config_ranges_and_depth_are_checked() -> None:
    with pytest.raises(AssertionError):
        tofu.Config(r=-1)
    with pytest.raises(AssertionError):
        tofu.Config(merge_from=-1)
    with pytest.raises(AssertionError):
        tofu.Config(mode="sum")
    with pytest.raises(ValueError, match="depth 4"), tofu.patch(tiny_vit(), tofu.Config(r=(1, 2))):
        pass
    assert tofu.config_for(0.5, 4, num_patches=64) == tofu.Config(r=8)


# --- equivalence with a naive loop ------------------------------------------------------------


def naive_tofu(x, metric, r, merge, size, mode="weighted"):
    """ToFu by plain loops: ToMe's matching, then per group either drop the sources or MLERP;
    out = unmerged A tokens then every B token, each in position order (ToMe's layout)."""
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
        for i in [*range(0, N, 2), *range(1, N, 2)]:
            if i in into:
                continue
            group = [i] + ([k for k, j in into.items() if j == i] if merge else [])
            if len(group) == 1:
                rows.append(x[b, i])
                row_sizes.append([float(size[b, i, 0])])
                continue
            total = sum(float(size[b, k, 0]) for k in group)
            if mode == "weighted":
                mean = sum(x[b, k] * size[b, k, 0] for k in group) / total
            else:
                mean = sum(x[b, k] for k in group) / len(group)
            largest = max(float(x[b, k].norm()) for k in group)
            rows.append(mean / mean.norm() * largest)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes, dtype=x.dtype))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize(
    ("merge", "mode"), [(False, "weighted"), (True, "weighted"), (True, "mean")]
)
@pytest.mark.parametrize(("N", "r"), [(17, 5), (16, 7), (12, 20)])
def test_matches_a_naive_loop(N: int, r: int, merge: bool, mode: str) -> None:
    """Prune and MLERP steps equal the loop version (odd and even N, capped r, both modes)."""
    for seed in range(3):
        x, metric, size = _inputs(N=N, seed=seed)
        out, new_size = tofu.token_fusion(x, metric, r, merge, size, mode)
        ref, ref_size = naive_tofu(x, metric, r, merge, size, mode)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)
