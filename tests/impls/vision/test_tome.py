"""ToMe: bipartite soft matching on keys with size-weighted merging."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import tome
from reference_impls.vision.adapter import attach
from reference_impls.vision.macs import schedule_counts, vit_macs
from reference_impls.vision.vit import DEIT_S, VisionTransformer

from ..common import TINY, device_param, images, tiny_vit


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


def naive_tome(x, metric, r, size, class_token=True):
    """ToMe by plain loops, one image and one token at a time, in the official layout: the
    unmerged A tokens (position order with a class token, best edge first without), then B."""
    B, N, _ = x.shape
    r = min(r, (N - int(class_token)) // 2)
    outs, sizes = [], []
    for b in range(B):
        unit = [metric[b, i] / metric[b, i].norm() for i in range(N)]
        edges = []  # (similarity, a position, best b position)
        for i in range(2 if class_token else 0, N, 2):
            best_j, best_s = None, None
            for j in range(1, N, 2):
                s = float(torch.dot(unit[i], unit[j]))
                if best_s is None or s > best_s:
                    best_j, best_s = j, s
            edges.append((best_s, i, best_j))
        edges.sort(key=lambda e: -e[0])
        into = {i: j for _, i, j in edges[:r]}
        unmerged = [i for _, i, _ in edges[r:]]
        if class_token:
            unmerged = sorted([0, *unmerged])
        rows, row_sizes = [], []
        for i in [*unmerged, *range(1, N, 2)]:
            group = [i] + [k for k, j in into.items() if j == i]
            total = sum(float(size[b, k, 0]) for k in group)
            rows.append(sum(x[b, k] * size[b, k, 0] for k in group) / total)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize(("N", "r"), [(17, 5), (16, 7), (12, 20)])
@pytest.mark.parametrize("class_token", [True, False])
def test_matches_a_naive_loop(N: int, r: int, class_token: bool) -> None:
    """The vectorised merge equals the loop version on random inputs (odd, even N, capped r)."""
    for seed in range(3):
        x, metric, size = _inputs(N=N, seed=seed)
        out, new_size = tome.bipartite_soft_matching(x, metric, r, size, class_token=class_token)
        ref, ref_size = naive_tome(x, metric, r, size, class_token)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)


class NaiveToMe:
    """The loop version as a reducer, to run a whole model with it."""

    def __init__(self, r: int) -> None:
        self.r = r

    def __call__(self, state):
        return naive_tome(state.x, state.keys, self.r, state.size)


def test_whole_model_equals_the_loop_version() -> None:
    """The layout decides which tokens merge from the second block on: with the official
    layout reproduced, the patched model equals the loop version block after block."""
    model = tiny_vit().double()
    x = images(batch=3).double()
    with torch.no_grad():
        with tome.patch(model, tome.Config(r=6)):
            ours = model(x)
        with attach(model, mid={i: NaiveToMe(6) for i in range(TINY.depth)}, track_size=True):
            ref = model(x)
    torch.testing.assert_close(ours, ref)


# --- the official layout and options, on hand-built cases ---------------------------------------


def _hand_metric() -> torch.Tensor:
    """Seven tokens; A = 0, 2, 4, 6 and B = 1, 3, 5. Best edges: 2->5 (1.0), 4->1 (0.9),
    6->3 (0.5), 0->1 (0.2)."""
    e = torch.eye(4, dtype=torch.float64)
    rows = [
        0.2 * e[0] + 0.96**0.5 * e[3],  # 0
        e[0],  # 1
        e[2],  # 2
        e[1],  # 3
        0.9 * e[0] + 0.19**0.5 * e[3],  # 4
        e[2],  # 5
        0.5 * e[1] + 0.75**0.5 * e[3],  # 6
    ]
    return torch.stack(rows).unsqueeze(0)  # (1, 7, 4)


def test_layout_with_a_class_token() -> None:
    """r=2 merges 2 into 5 and 4 into 1; out: unmerged A in position order, then all of B."""
    x = torch.arange(7, dtype=torch.float64).view(1, 7, 1)
    size = torch.tensor([1.0, 1, 3, 1, 1, 1, 1], dtype=torch.float64).view(1, 7, 1)
    out, new_size = tome.bipartite_soft_matching(x, _hand_metric(), 2, size)
    assert out.flatten().tolist() == [0, 6, (1 + 4) / 2, 3, (5 + 3 * 2) / 4]
    assert new_size.flatten().tolist() == [1, 1, 2, 1, 4]


def test_layout_without_a_class_token() -> None:
    """class_token=False: token 0 has an edge, and the unmerged A come best edge first."""
    x = torch.arange(7, dtype=torch.float64).view(1, 7, 1)
    out, _ = tome.bipartite_soft_matching(x, _hand_metric(), 2, class_token=False)
    assert out.flatten().tolist() == [6, 0, (1 + 4) / 2, 3, (5 + 2) / 2]
    # r is capped at N // 2 = 3 without a class token: only token 0 (the weakest edge) stays
    out, _ = tome.bipartite_soft_matching(x, _hand_metric(), 4, class_token=False)
    assert out.flatten().tolist() == [0, (1 + 4) / 2, (3 + 6) / 2, (5 + 2) / 2]


def test_merge_modes() -> None:
    """ "mean" averages without sizes (the receiving token included), "sum" adds; sizes add up
    in every mode."""
    x = torch.arange(7, dtype=torch.float64).view(1, 7, 1)
    size = torch.tensor([1.0, 1, 3, 1, 1, 1, 1], dtype=torch.float64).view(1, 7, 1)
    for mode, merged in [("mean", [(1 + 4) / 2, (5 + 2) / 2]), ("sum", [1 + 4, 5 + 2])]:
        out, new_size = tome.bipartite_soft_matching(x, _hand_metric(), 2, size, mode=mode)
        assert out.flatten().tolist() == [0, 6, merged[0], 3, merged[1]]
        assert new_size.flatten().tolist() == [1, 1, 2, 1, 4]
    with pytest.raises(AssertionError):
        tome.Config(mode="max")


def test_distillation_token() -> None:
    """Token 1 takes no merge (2's best partner is 1, so 2 goes to its second best, 3) and comes
    second: [CLS, DIST, unmerged A, other B]."""
    e = torch.eye(5, dtype=torch.float64)
    rows = [e[4], e[0], 0.8 * e[0] + 0.6 * e[1], e[1], e[2], e[2], 0.3 * e[3] + 0.91**0.5 * e[4]]
    metric = torch.stack([*rows, e[3]]).unsqueeze(0)  # (1, 8, 5)
    x = torch.arange(8, dtype=torch.float64).view(1, 8, 1)
    out, _ = tome.bipartite_soft_matching(x, metric, 2, distill_token=True)
    assert out.flatten().tolist() == [0, 1, 6, (3 + 2) / 2, (5 + 4) / 2, 7]
    merge = tome.match(metric, 2, distill_token=True)
    assert merge is not None and merge.slots().tolist() == [[0, 1, 3, 3, 4, 4, 2, 5]]
    assert merge.unmerge(out).flatten().tolist() == [0, 1, 2.5, 2.5, 4.5, 4.5, 6, 7]
    # r is capped at (N - 2) // 2 with both tokens protected
    out, _ = tome.bipartite_soft_matching(x, metric, 10, distill_token=True)
    assert out.shape[1] == 5


@pytest.mark.parametrize("class_token", [True, False])
def test_unmerge_gives_every_token_its_group(class_token: bool) -> None:
    """unmerge(merge(x)) puts each merged row back at every position it came from."""
    x, metric, size = _inputs(B=3, N=15)
    merge = tome.match(metric, 5, class_token=class_token)
    assert merge is not None and merge.r == 5
    merged, _ = merge.weighted(x, size)
    back = merge.unmerge(merged)  # (B, N, C)
    slots = merge.slots()  # (B, N)
    assert back.shape == x.shape
    torch.testing.assert_close(back, merged.gather(1, slots.unsqueeze(-1).expand_as(x)))
    assert (slots.amax(1) == merge.num_out - 1).all()  # every slot has a source
    for b in range(3):  # unmerged tokens come back unchanged
        alone = [i for i in range(15) if (slots[b] == slots[b, i]).sum() == 1]
        torch.testing.assert_close(back[b, alone], x[b, alone])


def test_source_trace_counts_the_patches() -> None:
    """Every original token is in exactly one group, the groups' sizes are the token sizes,
    and the trace restarts at every forward (batch 2, then 3)."""
    model = tiny_vit()
    trace = tome.SourceTrace()
    seen = []

    def record(state):  # before the last block, which does not merge (r=0 there)
        seen.append((state.size, trace.source))
        return state.x, state.size

    with tome.patch(model, tome.Config(r=(5, 5, 5, 0)), trace=trace):
        for batch in (2, 3):
            with attach(model, pre={TINY.depth - 1: record}):
                model(images(batch=batch))
            size, source = seen[-1]
            assert source.shape == (batch, 50, 65)
            assert (source.sum(1) == 1).all()
            torch.testing.assert_close(source.sum(-1, keepdim=True), size, rtol=0, atol=0)
    assert all(b.pre_reducer is None for b in model.blocks)


def test_fp16_merge_matches_float32() -> None:
    """The merge runs in half precision on CPU and agrees with float32 to half precision."""
    x, metric, size = _inputs(N=21)
    out, new_size = tome.bipartite_soft_matching(x.half(), metric, 6, size.half())
    ref, ref_size = tome.bipartite_soft_matching(x, metric, 6, size)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(new_size.float(), ref_size, rtol=0, atol=0)


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
