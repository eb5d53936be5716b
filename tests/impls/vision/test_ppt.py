"""PPT: per image, prune by significance or pool ToMe-style, chosen by the score variance."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import ppt, tome
from reference_impls.vision.ats import significance, value_norms
from reference_impls.vision.vit import TokenState, cls_attention

from ..common import TINY, device_param, images, tiny_vit


def _inputs(B: int = 4, N: int = 15, C: int = 6, D: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    metric = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    scores = torch.rand(B, N - 1, generator=g, dtype=torch.float64) ** 3
    scores = scores / scores.sum(dim=1, keepdim=True)
    size = torch.randint(1, 4, (B, N, 1), generator=g).double()
    return x, scores, metric, size


@device_param
def test_exact_counts(device: str) -> None:
    """Each PPT block removes exactly r tokens, whichever branch an image takes."""
    model = tiny_vit(device=device)
    with torch.no_grad(), ppt.patch(model, ppt.Config(r=5, blocks=(1, 2, 3))):
        out = model(images(device=device))
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()
    assert counts == [(65, 65), (65, 60), (60, 55), (55, 50)]


def test_identity_without_blocks() -> None:
    model, x = tiny_vit(), images()
    with torch.no_grad():
        reference = model(x)
        with ppt.patch(model, ppt.config_for(1.0, TINY.depth, TINY.num_patches)):
            assert all(b.mid_reducer is None and b.pre_reducer is None for b in model.blocks)
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)


def test_threshold_extremes_select_one_branch() -> None:
    """Threshold 0: every image prunes (CLS, then the top scores, best first); an infinite
    threshold: every image pools exactly as ToMe."""
    x, scores, metric, size = _inputs()
    out, new_size, pooled = ppt.prune_or_pool(x, scores, metric, 4, 0.0, size)
    assert not pooled.any() and out.shape == (4, 11, 6)
    for b in range(4):
        order = [0] + [1 + int(j) for j in scores[b].argsort(descending=True)[:10]]
        torch.testing.assert_close(out[b], x[b, order], rtol=0, atol=0)
        torch.testing.assert_close(new_size[b], size[b, order], rtol=0, atol=0)
    out, new_size, pooled = ppt.prune_or_pool(x, scores, metric, 4, float("inf"), size)
    ref, ref_size = tome.bipartite_soft_matching(x, metric, 4, size)
    assert pooled.all()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(new_size, ref_size, rtol=0, atol=0)


def test_each_image_takes_its_own_branch() -> None:
    """With a threshold between the images' variances, each row is its own branch's output."""
    x, scores, metric, size = _inputs()
    variance = scores.var(dim=1)
    low, high = variance.sort().values[1:3]
    threshold = float(low + high) / 2
    out, new_size, pooled = ppt.prune_or_pool(x, scores, metric, 3, threshold, size)
    assert pooled.tolist() == (variance < threshold).tolist() and 0 < int(pooled.sum()) < 4
    prune_x, prune_size, _ = ppt.prune_or_pool(x, scores, metric, 3, 0.0, size)
    pool_x, pool_size, _ = ppt.prune_or_pool(x, scores, metric, 3, float("inf"), size)
    for b in range(4):
        want_x, want_size = (pool_x, pool_size) if pooled[b] else (prune_x, prune_size)
        torch.testing.assert_close(out[b], want_x[b], rtol=0, atol=0)
        torch.testing.assert_close(new_size[b], want_size[b], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 0], x[:, 0])  # CLS first (ToMe's average: to rounding)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_variance_by_hand_and_r_past_the_cap(dtype: torch.dtype) -> None:
    """Scores 0.1, 0.4, 0.2, 0.3: unbiased variance 0.05 / 3 = 0.01667. Below a threshold of
    0.0167 the image pools, at 0.0166 it prunes; r = 5 of 5 tokens is capped at 2: pruning keeps
    CLS, patch 2 (0.4) and patch 4 (0.3), best first."""
    x = torch.arange(5 * 2, dtype=dtype).reshape(1, 5, 2)  # row i = (2i, 2i + 1)
    scores = torch.tensor([[0.1, 0.4, 0.2, 0.3]], dtype=dtype)
    metric = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    out, size, pooled = ppt.prune_or_pool(x, scores, metric, 5, 0.0166)
    assert not pooled.any() and out[0, :, 0].tolist() == [0.0, 4.0, 8.0]
    assert size[0, :, 0].tolist() == [1.0, 1.0, 1.0] and out.dtype == dtype
    out, size, pooled = ppt.prune_or_pool(x, scores, metric, 5, 0.0167)
    ref, ref_size = tome.bipartite_soft_matching(x, metric, 2)
    assert pooled.all() and out.shape == (1, 3, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert sorted(size[0, :, 0].tolist()) == sorted(ref_size[0, :, 0].tolist())
    assert size.sum().item() == 5.0


def test_config_ranges_are_checked() -> None:
    for bad in ({"r": -1}, {"threshold": -1.0}, {"blocks": (2, 2)}, {"blocks": (-1,)}):
        with pytest.raises(AssertionError):
            ppt.Config(**bad)
    assert ppt.config_for(0.5, 4, num_patches=64) == ppt.Config(r=11, blocks=(1, 2, 3))


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_ppt(x, attn, values, metric, r, threshold, size):
    """PPT by plain loops: significance per token, variance per image, then prune or pool."""
    B, H, N, _ = attn.shape
    r = min(r, (N - 1) // 2)
    outs, sizes = [], []
    for b in range(B):
        raw = []
        for j in range(1, N):
            a = sum(float(attn[b, h, 0, j]) for h in range(H))
            raw.append(a * float(values[b, j].norm()))
        score = [s / sum(raw) for s in raw]
        mean = sum(score) / len(score)
        variance = sum((s - mean) ** 2 for s in score) / (len(score) - 1)
        if variance >= threshold:
            ranked = sorted(range(N - 1), key=lambda j: -score[j])[: N - 1 - r]
            keep = [0] + [1 + j for j in ranked]
            outs.append(x[b, keep])
            sizes.append(size[b, keep])
            continue
        unit = [metric[b, i] / metric[b, i].norm() for i in range(N)]
        edges = []
        for i in range(2, N, 2):
            sims = [(float(torch.dot(unit[i], unit[j])), j) for j in range(1, N, 2)]
            best = max(sims, key=lambda e: e[0])
            edges.append((best[0], i, best[1]))
        edges.sort(key=lambda e: -e[0])
        into = {i: j for _, i, j in edges[:r]}
        rows, row_sizes = [], []
        # ToMe's official layout: the unmerged A tokens (even positions), then every B token
        for i in [i for i in range(0, N, 2) if i not in into] + list(range(1, N, 2)):
            group = [i] + [k for k, j in into.items() if j == i]
            total = sum(float(size[b, k, 0]) for k in group)
            rows.append(sum(x[b, k] * size[b, k, 0] for k in group) / total)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes, dtype=x.dtype))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize("r", [2, 5, 30])
def test_reducer_matches_a_naive_loop(r: int) -> None:
    """The PPT block (value norms from the pre hook, significance, choice) equals the loop."""
    model = tiny_vit().double()
    block = model.blocks[1]
    g = torch.Generator().manual_seed(r)
    x_in = torch.randn(4, 13, TINY.width, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (4, 13, 1), generator=g).double()
    with torch.no_grad():
        out, attn, keys = block.attn(block.norm1(x_in), size)
        x = x_in + out
        values = block.attn.qkv(block.norm1(x_in))[..., 2 * TINY.width :]  # (B, N, C)
        scores = significance(cls_attention(attn), value_norms(block, x_in)[:, 1:])
        low, high = scores.var(dim=1).sort().values[1:3]
        threshold = float(low + high) / 2  # two images prune, two pool
        reducer = ppt.PPTReducer(model, ppt.Config(r=r, blocks=(1,), threshold=threshold))
        reducer.record_values(TokenState(x_in, size, 1))
        got, got_size = reducer(TokenState(x, size, 1, attn, keys))
    ref, ref_size = _naive_ppt(x, attn, values, keys, r, threshold, size)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got_size, ref_size)
