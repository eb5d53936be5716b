"""vid-TLDR: saliency from attention sharpness, saliency-weighted ToMe merging."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.vision import tome, vid_tldr

from ..common import TINY, device_param, images, tiny_vit


def _attn(B: int = 3, H: int = 2, N: int = 13, seed: int = 0, size=None):
    g = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(B, H, N, N, generator=g, dtype=torch.float64)
    plain = scores.softmax(dim=-1)
    if size is None:
        return plain, None
    return plain, (scores + size.log()[:, None, None, :, 0]).softmax(dim=-1)


def _tokens(B: int = 3, N: int = 13, C: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (B, N, 1), generator=g).double()
    return x, size


@device_param
def test_exact_counts(device: str) -> None:
    model = tiny_vit(device=device)
    with torch.no_grad(), vid_tldr.patch(model, vid_tldr.Config(r=(20, 6))):
        out = model(images(device=device))
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()
    assert counts == [(65, 45), (45, 39), (39, 39), (39, 39)]


def test_identity_and_front_loaded_config() -> None:
    """keep_rate 1 merges nothing; lower rates merge as early as allowed (half per block)."""
    assert vid_tldr.config_for(1.0, 12) == vid_tldr.Config(r=())
    assert vid_tldr.config_for(0.5, 12) == vid_tldr.Config(r=(98,))
    assert vid_tldr.config_for(0.25, 12) == vid_tldr.Config(r=(98, 49))
    model, x = tiny_vit(), images()
    with torch.no_grad():
        reference = model(x)
        with vid_tldr.patch(model, vid_tldr.config_for(1.0, TINY.depth, TINY.num_patches)):
            assert all(b.mid_reducer is None for b in model.blocks) and not model.track_size
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
    with (
        pytest.raises(ValueError, match="depth 4"),
        vid_tldr.patch(model, vid_tldr.Config(r=(1,) * 5)),
    ):
        pass
    with pytest.raises(AssertionError):
        vid_tldr.Config(r=(-1,))


def test_saliency_range_and_size_term_is_divided_out() -> None:
    """Saliency is 0 for background, in (0, 1] otherwise with a maximum of 1; proportional
    attention's log(size) does not change it."""
    size = torch.randint(1, 5, (3, 13, 1), generator=torch.Generator().manual_seed(3)).double()
    plain, proportional = _attn(size=size)
    s = vid_tldr.saliency(plain)
    assert s.shape == (3, 12) and (s >= 0).all()
    torch.testing.assert_close(s.amax(dim=1), torch.ones(3, dtype=s.dtype))
    assert ((s == 0).sum(dim=1) > 0).all() and ((s > 0).sum(dim=1) > 0).all()
    torch.testing.assert_close(vid_tldr.saliency(proportional, size), s)


def test_background_sources_vanish_and_full_saliency_is_tome() -> None:
    """Zero saliency: merged sources leave their partners untouched; saliency 1: ToMe on x."""
    x, size = _tokens()
    out, new_size = vid_tldr.saliency_merge(x, torch.zeros(3, 12, dtype=x.dtype), 4, size)
    slots = tome.match(x, 4).slots()  # type: ignore[union-attr]
    for b in range(3):
        src = [i for i in range(0, 13, 2) if slots[b, i] >= 3]  # A tokens merged into B slots
        keep = [i for i in range(0, 13, 2) if i not in src] + list(range(1, 13, 2))
        torch.testing.assert_close(out[b], x[b, keep])
        torch.testing.assert_close(new_size[b], size[b, keep])
    out, new_size = vid_tldr.saliency_merge(x, torch.ones(3, 12, dtype=x.dtype), 4, size)
    ref, ref_size = tome.bipartite_soft_matching(x, x, 4, size)
    # The same tokens in the same (ToMe's official) layout, as the official vid-TLDR lays out.
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(new_size, ref_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_five_tokens_by_hand(dtype: torch.dtype) -> None:
    """A = 0, 2, 4 and B = 1, 3 (matched on x itself); r=1 merges token 4 (cos 0.995 with token
    1) into token 1 with weight size * saliency = 2 * 0.5: (2 * 4 + 1 * 1) / (2 + 1) = 3 in the
    first channel; out = [CLS, A 2, B 1+4, B 3], ToMe's layout; the new size is 3."""
    x = torch.tensor([[[9.0, -9.0], [4.0, 0.0], [1.0, 5.0], [0.0, 1.0], [1.0, 0.1]]], dtype=dtype)
    size = torch.tensor([[[1.0], [2.0], [1.0], [1.0], [2.0]]], dtype=dtype)
    salient = torch.tensor([[0.0, 0.0, 0.0, 0.5]], dtype=dtype)  # patch tokens 1..4
    out, new_size = vid_tldr.saliency_merge(x, salient, 1, size)
    expected = torch.tensor([[9.0, -9.0], [1.0, 5.0], [3.0, 0.1 / 3], [0.0, 1.0]], dtype=dtype)
    torch.testing.assert_close(out[0], expected)
    assert new_size[0, :, 0].tolist() == [1.0, 1.0, 3.0, 1.0]
    background = torch.zeros(1, 4, dtype=dtype)  # a background source leaves no trace
    out, new_size = vid_tldr.saliency_merge(x, background, 1, size)
    assert out[0].tolist() == x[0, [0, 2, 1, 3]].tolist()
    assert new_size[0, :, 0].tolist() == [1.0, 1.0, 2.0, 1.0]


def test_fractional_r_is_a_share_of_the_tokens() -> None:
    """As officially, r in (0, 1) merges int(N * r): 0.25 of 65 tokens is 16, then of 49 is 12."""
    assert vid_tldr.merged_count(0.25, 65) == 16 and vid_tldr.merged_count(7, 65) == 7
    model = tiny_vit()
    with torch.no_grad(), vid_tldr.patch(model, vid_tldr.Config(r=(0.25, 0.25))):
        model(images())
        assert model.token_counts()[:2] == [(65, 49), (49, 37)]
    with pytest.raises(AssertionError):
        vid_tldr.Config(r=(1.5,))


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_saliency(attn):
    B, H, N, _ = attn.shape
    out = []
    for b in range(B):
        raw = []
        for i in range(1, N):
            row = [sum(float(attn[b, h, i, j]) for h in range(H)) / H for j in range(N)]
            raw.append(sum(a * math.log(a) for a in row if a > 0))
        lo, hi = min(raw), max(raw)
        norm = [(s - lo) / (hi - lo) for s in raw]
        mean = sum(norm) / len(norm)
        top = max(s - mean for s in norm)
        out.append([0.0 if s < mean else (s - mean) / top for s in norm])
    return torch.tensor(out, dtype=attn.dtype)


def _naive_merge(x, salient, r, size):
    B, N, _ = x.shape
    r = min(r, (N - 1) // 2)
    outs, sizes = [], []
    for b in range(B):
        unit = [x[b, i] / x[b, i].norm() for i in range(N)]
        edges = []
        for i in range(2, N, 2):
            sims = [(float(torch.dot(unit[i], unit[j])), j) for j in range(1, N, 2)]
            best = max(sims, key=lambda e: e[0])
            edges.append((best[0], i, best[1]))
        edges.sort(key=lambda e: -e[0])
        into = {i: j for _, i, j in edges[:r]}
        rows, row_sizes = [], []
        for i in [*range(0, N, 2), *range(1, N, 2)]:  # ToMe's layout: A, then B
            if i in into:
                continue
            weights = {i: float(size[b, i, 0])}
            for k, j in into.items():
                if j == i:
                    weights[k] = float(size[b, k, 0]) * float(salient[b, k - 1])
            total = sum(weights.values())
            rows.append(sum(x[b, k] * w for k, w in weights.items()) / total)
            row_sizes.append([total])
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(row_sizes, dtype=x.dtype))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize(("N", "r"), [(13, 4), (12, 5), (9, 20)])
def test_matches_a_naive_loop(N: int, r: int) -> None:
    """Saliency and the saliency-weighted merge equal their loop versions."""
    for seed in range(2):
        attn, _ = _attn(N=N, seed=seed)
        x, size = _tokens(N=N, seed=seed)
        s = vid_tldr.saliency(attn)
        torch.testing.assert_close(s, _naive_saliency(attn))
        out, new_size = vid_tldr.saliency_merge(x, s, r, size)
        ref, ref_size = _naive_merge(x, s, r, size)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)
