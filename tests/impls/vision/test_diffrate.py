"""DiffRate (given rates): prune by CLS attention, then merge the least important tokens."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import diffrate
from reference_impls.vision.tome import SourceTrace
from reference_impls.vision.vit import TokenState, cls_attention

from ..common import TINY, device_param, images, tiny_vit


def _inputs(B: int = 3, N: int = 17, C: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g)
    importance = torch.rand(B, N - 1, generator=g)
    size = torch.randint(1, 5, (B, N, 1), generator=g).float()
    return x, importance, size


@device_param
def test_exact_kept_counts_per_block(device: str) -> None:
    """Each block's MLP sees its attention's tokens minus that block's prune + merge counts."""
    model = tiny_vit(device=device)
    config = diffrate.Config(counts=((0, 0), (4, 4), (8, 0), (0, 8)))
    with diffrate.patch(model, config):
        out = model(images(device=device))
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()
    assert counts == [(65, 65), (65, 57), (57, 49), (49, 41)]


def test_identity_at_zero_counts() -> None:
    """No counts (and config_for(1.0)) attaches nothing: the output is bit-identical."""
    model = tiny_vit()
    x = images()
    reference = model(x)
    for config in (diffrate.Config(counts=((0, 0),) * 4), diffrate.config_for(1.0, TINY.depth)):
        with diffrate.patch(model, config):
            assert all(b.mid_reducer is None for b in model.blocks) and not model.track_size
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)


def test_too_many_blocks_is_an_error() -> None:
    with pytest.raises(ValueError, match="depth 4"), diffrate.patch(tiny_vit(), diffrate.Config()):
        pass
    with pytest.raises(AssertionError):
        diffrate.Config(counts=((1, -1),))


def test_pruning_keeps_the_most_attended_originals_in_importance_order() -> None:
    """Prune only: CLS, then the unchanged rows of the most important tokens, best first."""
    x, importance, _ = _inputs()
    out, size = diffrate.diffrate_compress(x, importance, prune=6, merge=0)
    assert out.shape == (3, 11, 6) and (size == 1).all()
    for b in range(3):
        best = importance[b].argsort(descending=True)[:10] + 1
        torch.testing.assert_close(out[b], x[b, torch.cat([torch.tensor([0]), best])])


def test_reducer_ranks_by_cls_attention() -> None:
    """The reducer's importance is the CLS row of the attention, averaged over heads."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 4, generator=g)
    attn = torch.randn(2, 3, 9, 9, generator=g).softmax(dim=-1)
    out, _ = diffrate.DiffRateBlock(prune=3, merge=0)(TokenState(x, None, 0, attn, None))
    expected, _ = diffrate.diffrate_compress(x, cls_attention(attn), 3, 0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    lowest = attn[:, :, 0, 1:].mean(dim=1).argmin(dim=1) + 1  # (B,) never survives
    for b in range(2):
        assert not any(torch.equal(x[b, lowest[b]], row) for row in out[b])


def test_counts_are_capped() -> None:
    """However large the counts, CLS and one patch token remain."""
    x, importance, _ = _inputs()
    assert diffrate.diffrate_compress(x, importance, 100, 5)[0].shape == (3, 2, 6)
    assert diffrate.diffrate_compress(x, importance, 0, 100)[0].shape == (3, 2, 6)


def test_cls_kept_unchanged_and_first() -> None:
    x, importance, size = _inputs()
    size[:, 0] = 1.0
    out, new_size = diffrate.diffrate_compress(x, importance, 3, 5, size)
    assert out.shape == (3, 9, 6) and new_size.shape == (3, 9, 1)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    assert (new_size[:, 0] == 1).all()


def test_weighted_mode_conserves_the_size_weighted_sum() -> None:
    """merge_mode="weighted" (ToMe's), no pruning: sum(size * x) and sum(size) are conserved."""
    x, importance, size = _inputs()
    out, new_size = diffrate.diffrate_compress(x, importance, 0, 7, size, merge_mode="weighted")
    torch.testing.assert_close((new_size * out).sum(1), (size * x).sum(1))
    torch.testing.assert_close(new_size.sum(1), size.sum(1), rtol=0, atol=0)


def _hand_case():
    """CLS and four patches, importance 0.4, 0.3, 0.2, 0.1 (already in order). Token 3 points
    along token 1 (cosine 1), token 4 at 60 degrees from token 2 and 90 from token 1."""
    x = torch.tensor(
        [[[0.0, 0.0, 5.0], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 3**0.5]]],
        dtype=torch.float64,
    )
    importance = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    size = torch.tensor([[[1.0], [2.0], [1.0], [3.0], [2.0]]], dtype=torch.float64)
    return x, importance, size


def test_official_merge_by_hand() -> None:
    """Merging 2: token 3 into 1 (cosine 1), token 4 into 2 (cosine 0.5). Features: plain means
    (1 and 3 -> 1.5 along x); sizes: 2 + 1 * 3 = 5 and 1 + 0.5 * 2 = 2."""
    x, importance, size = _hand_case()
    out, new_size = diffrate.diffrate_compress(x, importance, 0, 2, size)
    expected = torch.tensor([[[0.0, 0.0, 5.0], [1.5, 0.0, 0.0], [0.0, 2.5, 3**0.5 / 2]]])
    torch.testing.assert_close(out, expected.double())
    torch.testing.assert_close(new_size.flatten(), torch.tensor([1.0, 5.0, 2.0]).double())


def test_prune_then_merge_and_trace_by_hand() -> None:
    """Pruning 1 drops token 4; merging 1 then moves token 3 into token 1. The trace gives the
    official source matrix: the pruned token in no row."""
    x, importance, size = _hand_case()
    trace = SourceTrace()
    out, new_size = diffrate.diffrate_compress(x, importance, 1, 1, size, trace=trace)
    assert out[0, :, 0].tolist() == [0.0, 1.5, 0.0] and new_size.flatten().tolist() == [1, 5, 1]
    assert trace.group.tolist() == [[0, 1, 2, 1, -1]]
    assert trace.source.tolist() == [[[1, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0]]]


def test_class_token_option() -> None:
    """Pruning 2 leaves CLS, 1, 2; token 2 is orthogonal to both (a tie): with class_token=False
    it merges into the first, CLS; by default CLS takes nothing and it goes to token 1."""
    x, importance, size = _hand_case()
    x[0, 0] = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    out, _ = diffrate.diffrate_compress(x, importance, 2, 1, size, class_token=False)
    assert out[0].tolist() == [[1.5, 2.0, 0.0], [2.0, 0.0, 0.0]]
    out, _ = diffrate.diffrate_compress(x, importance, 2, 1, size)
    assert out[0].tolist() == [[3.0, 0.0, 0.0], [1.0, 2.0, 0.0]]


def test_separate_metric() -> None:
    """By this metric token 3 matches token 2 and token 4 matches token 1 (by the tokens
    themselves it is the other way round)."""
    x, importance, size = _hand_case()
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    out, new_size = diffrate.diffrate_compress(x, importance, 0, 2, size, metric=metric.double())
    expected = torch.tensor([[[0.0, 0.0, 5.0], [1.0, 0.5, 3**0.5 / 2], [0.5, 2.0, 0.0]]])
    torch.testing.assert_close(out, expected.double())
    assert new_size.flatten().tolist() == [1.0, 4.0, 4.0]


def naive_diffrate(x, importance, prune, merge, size, mode="mean"):
    """DiffRate's inference step by plain loops, one image and one token at a time: "mean"
    as the official code (plain means, sizes scaled by similarity), or size-"weighted"."""
    B, N, _ = x.shape
    outs, sizes = [], []
    for b in range(B):
        ranked = sorted(range(N - 1), key=lambda i: -float(importance[b, i]))
        order = [0] + [1 + i for i in ranked]
        keep = N - min(prune, N - 2)
        order = order[:keep]
        m = max(0, min(merge, keep - 2))
        n_dst = keep - m
        unit = {p: x[b, p] / x[b, p].norm() for p in order}
        into, similarity = {}, {}
        for p in order[n_dst:]:
            scores = [float(torch.dot(unit[p], unit[q])) for q in order[1:n_dst]]
            into[p] = order[1 + scores.index(max(scores))]
            similarity[p] = max(scores)
        rows, row_sizes = [], []
        for p in order[:n_dst]:
            group = [p] + [s for s, q in into.items() if q == p]
            if mode == "mean":
                rows.append(sum(x[b, g] for g in group) / len(group))
                total = float(size[b, p, 0]) + sum(
                    float(size[b, g, 0]) * similarity[g] for g in group[1:]
                )
            else:
                total = sum(float(size[b, g, 0]) for g in group)
                rows.append(sum(x[b, g] * size[b, g, 0] for g in group) / total)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize(("prune", "merge"), [(0, 6), (4, 5), (3, 0), (10, 9)])
@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_matches_a_naive_loop(prune: int, merge: int, mode: str) -> None:
    """The vectorised step equals the loop version on random inputs."""
    for seed in range(3):
        x, importance, size = _inputs(seed=seed)
        out, new_size = diffrate.diffrate_compress(
            x, importance, prune, merge, size, merge_mode=mode
        )
        ref, ref_size = naive_diffrate(x, importance, prune, merge, size, mode)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)


def test_every_block_sorts_and_the_trace_follows() -> None:
    """Once any block reduces, every block sorts by importance (block 0 too); the traced
    sources match the final tokens: every kept patch in exactly one group, pruned ones in none."""
    model = tiny_vit()
    trace = SourceTrace()
    config = diffrate.Config(counts=((0, 0), (4, 4), (0, 0), (3, 3)))
    with torch.no_grad(), diffrate.patch(model, config, trace=trace):
        model(images(batch=3))
        assert all(block.mid_reducer is not None for block in model.blocks)
    source = trace.source  # (3, 51, 65)
    assert source.shape == (3, 65 - 14, 65)
    per_patch = source.sum(1)  # (3, 65): 1 if kept in some group, 0 if pruned
    assert set(per_patch.unique().tolist()) == {0.0, 1.0}
    assert (per_patch.sum(1) == 65 - 7).all()  # 7 pruned per image
    assert (source[:, 0, 0] == 1).all()  # CLS is its own group, first
