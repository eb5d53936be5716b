"""ATS: invariants of adaptive sampling and padding, and equivalence with a naive loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import ats
from reference_impls.vision.random_drop import kept_count
from reference_impls.vision.vit import TokenState, VisionTransformer, cls_attention

from ..common import TINY, device_param, images, tiny_vit


def peaked_vit(device: str = "cpu") -> VisionTransformer:
    """The tiny ViT with sharpened attention (random init attends almost uniformly, and then
    every quantile hits a different token): counts then differ from image to image."""
    model = tiny_vit(device=device)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(10)
    return model


CONFIG = ats.Config(keep_rates=(0.8, 0.6, 0.4), blocks=(1, 2, 3))


@device_param
def test_shape_and_counts_are_bounded_by_k(device: str) -> None:
    """Output shape; each ATS block keeps 1 + M tokens with M <= K = round(rate * patches)."""
    model, x = peaked_vit(device=device), images(batch=4, device=device)
    with torch.no_grad(), ats.patch(model, CONFIG):
        out = model(x)
        counts = model.token_counts()
    assert out.shape == (4, TINY.num_classes) and torch.isfinite(out).all()
    assert counts[0] == (TINY.num_tokens, TINY.num_tokens)
    budgets = dict(zip(CONFIG.blocks, CONFIG.keep_rates, strict=True))
    for index, (n, m) in enumerate(counts):
        if index in budgets:
            assert 1 < m <= min(n, 1 + kept_count(TINY.num_patches, budgets[index]))


def test_identity_at_keep_rate_one() -> None:
    """config_for(1.0) samples nowhere and leaves size tracking off: the model is unchanged."""
    model, x = tiny_vit(), images()
    assert ats.config_for(1.0, TINY.depth).blocks == ()
    with torch.no_grad():
        reference = model(x)
        with ats.patch(model, ats.config_for(1.0, TINY.depth)):
            same = model(x)
            assert model.track_size is False
    torch.testing.assert_close(same, reference, rtol=0, atol=0)


def test_paper_sampling_ignores_padding_batch_equals_single_images() -> None:
    """With the paper's quantiles, images with different kept counts give the same logits
    batched (padded) as alone."""
    model, x = peaked_vit(), images(batch=4, seed=3)
    config = ats.Config(keep_rates=CONFIG.keep_rates, blocks=CONFIG.blocks, sampling="paper")
    with torch.no_grad(), ats.patch(model, config):
        batched = model(x)
        padded = model.token_counts()
        alone, counts = [], []
        for i in range(4):
            alone.append(model(x[i : i + 1]))
            counts.append(model.token_counts())
    assert any(c != padded for c in counts), "no image was padded: the test would prove nothing"
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_official_normalisation_sees_the_padding() -> None:
    """As in the official code, zero-significance padding makes the CDF's minimum 0, so the
    least significant real token is no longer normalised to 0 and can be picked."""
    x = torch.arange(5, dtype=torch.float64).view(1, 5, 1)
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    _, _, alone = ats.adaptive_token_sampling(x, scores, 4)
    assert 0 not in alone.tolist()[0]
    padded = torch.cat([torch.zeros(1, 1, dtype=torch.float64), scores], dim=1)  # a pad first
    _, _, with_pad = ats.adaptive_token_sampling(torch.arange(6.0).view(1, 6, 1), padded, 4)
    assert 1 in with_pad.tolist()[0] and 0 not in with_pad.tolist()[0]


def test_counts_differ_per_image_and_padding_has_size_zero() -> None:
    """The count is adaptive: a peaked score map keeps fewer tokens than a flat one."""
    torch.manual_seed(0)
    x = torch.randn(2, 11, 3)
    flat = torch.full((10,), 0.1)
    peaked = torch.tensor([0.91] + [0.01] * 9)
    out, size, kept = ats.adaptive_token_sampling(x, torch.stack([flat, peaked]), k=8)
    assert (kept[0] >= 0).sum() == 8  # flat: every quantile hits a different token
    assert (kept[1] >= 0).sum() < 8  # peaked: the big token absorbs most quantiles
    assert 0 in kept[1].tolist()  # ... and is kept
    pad = kept[1] < 0
    assert pad.any() and (size[1, 1:][pad] == 0).all() and (out[1, 1:][pad] == 0).all()
    assert (size[:, 0] == 1).all() and (size[0] == 1).all()
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)  # CLS unchanged


def test_padding_is_never_sampled_again() -> None:
    """A size-0 token gets zero attention, so zero significance: a later block never keeps it."""
    model, x = peaked_vit(), images(batch=4, seed=5)
    sizes: list[torch.Tensor] = []
    reducer_call = ats.ATSReducer.__call__

    def spy(self: ats.ATSReducer, state: TokenState) -> tuple[torch.Tensor, torch.Tensor | None]:
        result = reducer_call(self, state)
        sizes.append(result[1])
        return result

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(ats.ATSReducer, "__call__", spy)
        with ats.patch(model, ats.Config(keep_rates=(0.9, 0.8, 0.7, 0.6), blocks=(0, 1, 2, 3))):
            model(x)
    assert len(sizes) == 4
    assert any((size == 0).any() for size in sizes[:-1]), "no padding reached a later block"
    for size in sizes:  # real tokens keep size 1, padding is 0, and padding sits at the end
        assert set(size.unique().tolist()) <= {0.0, 1.0}
        real = (size[..., 0] > 0).int()
        assert (real.sort(dim=1, descending=True, stable=True).values == real).all()


def test_value_norms_are_the_blocks_values() -> None:
    """The recomputed value norms equal those of the block's own attention projection."""
    model, x = tiny_vit(), torch.randn(2, TINY.num_tokens, TINY.width)
    block = model.blocks[1]
    B, N, C = x.shape
    qkv = block.attn.qkv(block.norm1(x)).reshape(B, N, 3, TINY.heads, C // TINY.heads)
    v = qkv[:, :, 2].reshape(B, N, C)  # (B, N, C), heads concatenated
    torch.testing.assert_close(ats.value_norms(block, x), v.norm(dim=-1))


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        ats.Config(keep_rates=(1.5,), blocks=(1,))
    with pytest.raises(AssertionError):
        ats.Config(keep_rates=(0.5, 0.5), blocks=(1, 1))
    with pytest.raises(AssertionError):
        ats.Config(keep_rates=(0.5,), blocks=(1, 2))


# --- the official sampling, by hand and by a naive loop ------------------------------------------


def test_official_sampling_by_hand() -> None:
    """Scores 0.04, 0.6, 0.1, 0.2, 0.06: ascending CDF 0.04 0.1 0.2 0.4 1, normalised
    0 0.0625 0.1667 0.375 1; five points from 0.0625 to 1 step 0.234 are nearest to sorted
    positions 1, 3, 3, 4, 4: tokens 4, 3, 1 kept, in order of increasing score."""
    x = torch.arange(6, dtype=torch.float64).view(1, 6, 1)
    scores = torch.tensor([[0.04, 0.6, 0.1, 0.2, 0.06]], dtype=torch.float64)
    out, size, kept = ats.adaptive_token_sampling(x, scores, 5)
    assert kept.tolist() == [[4, 3, 1]]
    assert out.flatten().tolist() == [0, 5, 4, 2] and size.flatten().tolist() == [1, 1, 1, 1]
    # the paper's quantiles 1/8, 3/8, 5/8, 7/8 reach sorted positions 2, 3, 4, 4
    _, _, kept = ats.adaptive_token_sampling(x, scores, 4, sampling="paper")
    assert kept.tolist() == [[2, 3, 1]]


def test_official_points_start_at_the_smallest_nonzero_cdf_value() -> None:
    """The points run from the smallest non-zero normalised CDF value to 1, in float32."""
    start = torch.tensor([[0.25]])
    points = ats.sample_points(start, 4)
    assert points.dtype == torch.float32
    torch.testing.assert_close(points, torch.tensor([[0.25, 0.5, 0.75, 1.0]]))
    # the least significant token (normalised CDF 0) is never picked, a lone token always is
    picks = ats.nearest_cdf_picks(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), 10)
    assert 0 not in picks.tolist()[0]
    assert ats.nearest_cdf_picks(torch.tensor([[1.0]]), 3).tolist() == [[0, 0, 0]]


def test_nearest_ties_go_to_the_first_token() -> None:
    """A point exactly between two CDF values picks the lower position (the first minimum)."""
    # sorted scores 0, 1/4, 1/4, 1/2: normalised CDF 0, 1/4, 1/2, 1; points 1/4, 1/2, 3/4, 1,
    # and 3/4 lies exactly between 1/2 (position 2) and 1 (position 3)
    scores = torch.tensor([[0.0, 0.25, 0.25, 0.5]])
    assert ats.sample_points(torch.tensor([[0.25]]), 4).tolist() == [[0.25, 0.5, 0.75, 1.0]]
    assert ats.nearest_cdf_picks(scores, 4).tolist() == [[1, 2, 2, 3]]


def _naive_ats(x: torch.Tensor, attn: torch.Tensor, v_norm: torch.Tensor, k: int, sampling: str):
    """ATS with plain loops: score, sort ascending, CDF, then per point either the nearest
    min-max normalised CDF value (official, first on ties) or the first CDF >= (2i+1)/2k
    (paper); distinct picks kept in order of increasing score."""
    B, H, N, _ = attn.shape
    kept_per_image = []
    for b in range(B):
        raw = []
        for j in range(1, N):
            a = sum(float(attn[b, h, 0, j]) for h in range(H)) / H
            raw.append(a * float(v_norm[b, j]))
        total = sum(raw)
        score = [s / total for s in raw]
        order = sorted(range(N - 1), key=lambda j: score[j])
        cdf, running = [], 0.0
        for j in order:
            running += score[j]
            cdf.append(running)
        picked = set()
        if sampling == "official":
            lo, hi = min(cdf), max(cdf)
            norm = [(c - lo) / (hi - lo) for c in cdf]
            start = min(c for c in norm if c != 0)
            for i in range(k):
                y = start + i * (1 - start) / (k - 1)
                dist = [abs(y - c) for c in norm]
                picked.add(dist.index(min(dist)))
        else:
            for i in range(k):
                r = (2 * i + 1) / (2 * k)
                picked.add(next((p for p, c in enumerate(cdf) if c >= r), N - 2))
        kept_per_image.append([order[p] for p in sorted(picked)])
    m = max(len(kept) for kept in kept_per_image)
    out = torch.zeros(B, 1 + m, x.shape[-1], dtype=x.dtype)
    size = torch.zeros(B, 1 + m, 1, dtype=x.dtype)
    for b, kept in enumerate(kept_per_image):
        out[b, 0], size[b, 0] = x[b, 0], 1.0
        for slot, j in enumerate(kept):
            out[b, 1 + slot], size[b, 1 + slot] = x[b, 1 + j], 1.0
    return out, size


@pytest.mark.parametrize("k", [3, 7, 12])
@pytest.mark.parametrize("sampling", ["official", "paper"])
def test_matches_naive_loop(k: int, sampling: str) -> None:
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(3, 13, 5, generator=generator, dtype=torch.float64)
    logits = 3 * torch.randn(3, 2, 13, 13, generator=generator, dtype=torch.float64)
    attn = logits.softmax(-1)
    v_norm = torch.rand(3, 13, generator=generator, dtype=torch.float64) + 0.1
    scores = ats.significance(cls_attention(attn), v_norm[:, 1:])
    out, size, _ = ats.adaptive_token_sampling(x, scores, k, sampling=sampling)
    expected_out, expected_size = _naive_ats(x, attn, v_norm, k, sampling)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(size, expected_size)


def test_default_config_is_the_official_deit_setting() -> None:
    """Blocks 3 to 11 with every token as budget (NUM_TOKENS 197 of 197)."""
    config = ats.Config()
    assert config.blocks == tuple(range(3, 12)) and set(config.keep_rates) == {1.0}
    assert config.sampling == "official"
    with pytest.raises(AssertionError):
        ats.Config(sampling="random")
