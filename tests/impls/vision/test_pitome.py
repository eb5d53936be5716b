"""PiToMe: energy-protected bipartite token merging."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.vision import pitome
from reference_impls.vision.tome import SourceTrace

from ..common import TINY, device_param, images, tiny_vit


def _inputs(B: int = 3, N: int = 17, C: int = 6, D: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g)
    metric = torch.randn(B, N, D, generator=g)
    size = torch.randint(1, 5, (B, N, 1), generator=g).float()
    return x, metric, size


def _clustered() -> torch.Tensor:
    """CLS, six near-copies of one direction, two tokens along other axes: (1, 9, 4)."""
    g = torch.Generator().manual_seed(0)
    cluster = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.05 * torch.randn(6, 4, generator=g)
    isolated = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    cls = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    return torch.cat([cls, cluster, isolated])[None]


@device_param
def test_exact_kept_counts_per_block(device: str) -> None:
    """Keeping 3/4 per block merges floor(T - 0.75 T) of T patch tokens in every block."""
    model = tiny_vit(device=device)
    with pitome.patch(model, pitome.Config(ratio=0.75)):
        out = model(images(device=device))
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()
    assert counts == [(65, 49), (49, 37), (37, 28), (28, 22)]


def test_only_chosen_blocks_reduce() -> None:
    model = tiny_vit()
    with pitome.patch(model, pitome.Config(ratio=0.5, blocks=(2,))):
        model(images())
    assert model.token_counts() == [(65, 65), (65, 65), (65, 33), (33, 33)]


def test_margin_falls_linearly_with_depth() -> None:
    model = tiny_vit()
    with pitome.patch(model, pitome.Config(ratio=0.9, margin=0.8)):
        margins = [block.mid_reducer.margin for block in model.blocks]
    assert margins == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_identity_at_full_ratio() -> None:
    """ratio 1 (and config_for(1.0)) attaches nothing: the output is bit-identical."""
    model = tiny_vit()
    x = images()
    reference = model(x)
    for config in (pitome.Config(ratio=1.0), pitome.config_for(1.0, TINY.depth)):
        with pitome.patch(model, config):
            assert all(b.mid_reducer is None for b in model.blocks) and not model.track_size
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
    tokens, metric, size = _inputs()
    out, new_size = pitome.pitome_merge(tokens, metric, 0, 0.5, size=size)
    assert out is tokens and new_size is size


def test_clustered_tokens_have_high_energy_and_isolated_ones_are_protected() -> None:
    """The cluster of six outscores the isolated pair; merging 3 leaves the pair untouched."""
    x = _clustered()
    energy = pitome.energy_score(x[:, 1:], margin=0.5)
    assert energy[0, :6].min() > energy[0, 6:].max()
    out, size = pitome.pitome_merge(x, x, 3, margin=0.5)
    assert out.shape == (1, 6, 4)
    torch.testing.assert_close(out[0, 0], x[0, 0], rtol=0, atol=0)  # CLS
    for row in (x[0, 7], x[0, 8]):  # the isolated tokens come through alone, as they were
        (at,) = [i for i in range(6) if torch.equal(out[0, i], row)]
        assert size[0, at, 0] == 1
    assert size.sum() == 9  # the three merged cluster tokens went into the other three


def test_cls_kept_unchanged_and_first() -> None:
    x, metric, size = _inputs()
    size[:, 0] = 1.0
    out, new_size = pitome.pitome_merge(x, metric, 5, margin=0.3, size=size)
    assert out.shape == (3, 12, 6) and new_size.shape == (3, 12, 1)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)


def test_merging_conserves_the_size_weighted_sum() -> None:
    x, metric, size = _inputs()
    out, new_size = pitome.pitome_merge(x, metric, 8, margin=0.3, size=size)
    torch.testing.assert_close((new_size * out).sum(1), (size * x).sum(1))
    torch.testing.assert_close(new_size.sum(1), size.sum(1), rtol=0, atol=0)


def test_config_checks_and_config_for() -> None:
    with pytest.raises(AssertionError):
        pitome.Config(ratio=0.4)  # more than half the tokens cannot merge in one block
    with pytest.raises(AssertionError):
        pitome.pitome_merge(*_inputs()[:2], 9, margin=0.5)  # 2 * 9 > 16 patch tokens
    config = pitome.config_for(0.5, TINY.depth)
    assert config.ratio == pytest.approx(0.5**0.25) and config.blocks is None
    model = tiny_vit()
    with pitome.patch(model, config):
        model(images(batch=1))
    assert abs((model.token_counts()[-1][1] - 1) / TINY.num_patches - 0.5) <= 0.05


def naive_pitome(x, metric, k, margin, alpha, size, bsm=False):
    """PiToMe by plain loops, one image and one token at a time, in the official layout:
    [CLS, protected by decreasing energy, B] (paper step) or [CLS, unmerged A best edge first,
    B] (bsm), B in energy order."""
    B, N, _ = x.shape
    T = N - 1
    outs, sizes = [], []
    for b in range(B):
        unit = [metric[b, 1 + i] / metric[b, 1 + i].norm() for i in range(T)]
        energy = []
        for i in range(T):
            total = 0.0
            for j in range(T):
                s = float(torch.dot(unit[i], unit[j])) - margin
                total += s if s > 0 else alpha * (math.exp(s) - 1.0)
            energy.append(total / T)
        ranked = sorted(range(T), key=lambda i: -energy[i])
        if bsm:
            set_a, set_b = ranked[0::2], ranked[1::2]
            edges = []
            for i in set_a:
                scores = [float(torch.dot(unit[i], unit[j])) for j in set_b]
                edges.append((max(scores), i, set_b[scores.index(max(scores))]))
            edges.sort(key=lambda e: -e[0])
            into = {1 + i: 1 + j for _, i, j in edges[:k]}
            kept = [i for _, i, _ in edges[k:]]
        else:
            set_a, set_b = ranked[: 2 * k : 2], ranked[1 : 2 * k : 2]
            into = {}
            for i in set_a:
                scores = [float(torch.dot(unit[i], unit[j])) for j in set_b]
                into[1 + i] = 1 + set_b[scores.index(max(scores))]
            kept = ranked[2 * k :]
        rows, row_sizes = [], []
        for i in [0] + [1 + i for i in kept + set_b]:
            group = [i] + [a for a, j in into.items() if j == i]
            total = sum(float(size[b, g, 0]) for g in group)
            rows.append(sum(x[b, g] * size[b, g, 0] for g in group) / total)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize(("N", "k", "margin", "alpha"), [(17, 5, 0.3, 1.0), (16, 7, 0.0, 0.5)])
@pytest.mark.parametrize("bsm", [False, True])
def test_matches_a_naive_loop(N: int, k: int, margin: float, alpha: float, bsm: bool) -> None:
    """The vectorised merge equals the loop version on random inputs, both steps."""
    for seed in range(3):
        x, metric, size = _inputs(N=N, seed=seed)
        out, new_size = pitome.pitome_merge(x, metric, k, margin, alpha, size, bsm=bsm)
        ref, ref_size = naive_pitome(x, metric, k, margin, alpha, size, bsm)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)


def test_official_deit_schedule() -> None:
    """The first ceil(L/2) blocks use pitome_bsm; attention is not proportional, but the
    reducers still weight merges by the sizes they keep themselves."""
    model = tiny_vit()
    with pitome.patch(model, pitome.Config(ratio=0.75)):
        assert [block.mid_reducer.bsm for block in model.blocks] == [True, True, False, False]
        assert model.track_size is False
        out = model(images())
    with pitome.patch(model, pitome.Config(ratio=0.75, bsm_share=0.0, prop_attn=True)):
        assert not any(block.mid_reducer.bsm for block in model.blocks) and model.track_size
        paper = model(images())
    assert not torch.allclose(out, paper)
    assert not model.track_size and all(b.pre_reducer is None for b in model.blocks)


def test_bsm_reorders_even_when_nothing_merges() -> None:
    """As the official pitome_bsm: with k = 0 the tokens still come out in its layout."""
    x, metric, size = _inputs(B=1, N=9)
    out, _ = pitome.pitome_merge(x, metric, 0, 0.5, size=size, bsm=True)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert sorted(out[0, :, 0].tolist()) == sorted(x[0, :, 0].tolist())
    same, _ = pitome.pitome_merge(x, metric, 0, 0.5, size=size)  # the paper step: untouched
    assert same is x


def test_without_a_class_token_every_token_is_in_the_graph() -> None:
    """class_token=False: token 0 can merge, and T = N."""
    x = _clustered()
    out, size = pitome.pitome_merge(x, x, 4, margin=0.5, class_token=False)
    assert out.shape == (1, 5, 4) and size.sum() == 9
    merge = pitome.match(x, 4, 0.5, class_token=False)
    assert merge is not None and merge.slots()[0, 0] >= 0


def test_modes_and_prune() -> None:
    """ "mean" averages without sizes, "sum" adds, "prune" drops set A and keeps sizes as they
    were; all keep the same survivors."""
    x, metric, size = _inputs()
    merge = pitome.match(metric, 5, 0.3)
    assert merge is not None
    weighted, _ = pitome.apply_merge(merge, x, size, "weighted")
    mean, mean_size = pitome.apply_merge(merge, x, size, "mean")
    summed, _ = pitome.apply_merge(merge, x, size, "sum")
    pruned, pruned_size = pitome.apply_merge(merge, x, size, "prune")
    ones = torch.ones_like(size)
    torch.testing.assert_close(mean, merge.weighted(x, ones)[0])
    torch.testing.assert_close(summed, merge(x, "sum"))
    torch.testing.assert_close(mean_size, pitome.apply_merge(merge, x, size, "weighted")[1])
    kept = merge.prune().slots()  # the pruned A tokens have no slot
    assert (kept == -1).sum(1).tolist() == [5, 5, 5]
    for b in range(3):
        for i in range(17):
            if kept[b, i] >= 0:
                torch.testing.assert_close(pruned[b, kept[b, i]], x[b, i])
                assert pruned_size[b, kept[b, i]] == size[b, i]
    assert weighted.shape == pruned.shape == (3, 12, 6)


def test_trace_and_unmerge() -> None:
    """The traced sources cover every patch once; unmerge gives each token its group's row."""
    model = tiny_vit()
    trace = SourceTrace()
    with torch.no_grad(), pitome.patch(model, pitome.Config(ratio=0.75), trace=trace):
        model(images(batch=3))
    assert trace.source.shape == (3, 22, 65) and (trace.source.sum(1) == 1).all()
    x, metric, size = _inputs()
    merge = pitome.match(metric, 5, 0.3, bsm=True)
    merged, _ = merge.weighted(x, size)
    back = merge.unmerge(merged)
    torch.testing.assert_close(back, merged.gather(1, merge.slots().unsqueeze(-1).expand_as(x)))
