"""DyCoke token temporal merging: window references, exact counts, threshold mode, a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.video import dycoke
from reference_impls.video.dycoke import Config, dycoke_ttm, reference_frames, temporal_keep_mask
from reference_impls.video.packing import unpack

from ..common import device_param


def _video(B: int = 2, T: int = 8, N: int = 10, C: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, N, C, generator=generator)


def test_reference_frames_follow_the_official_pairs() -> None:
    """In each window of four: f1 and f2 against f0, f3 against f2."""
    assert reference_frames(10) == [None, 0, 0, 2, None, 4, 4, 6, None, 8]
    assert reference_frames(1) == [None]


@device_param
@pytest.mark.parametrize(("T", "K"), [(8, 0.7), (8, 0.5), (6, 0.3), (5, 1.0), (4, 0.0)])
def test_exact_counts(T: int, K: float, device: str) -> None:
    """Anchors keep N tokens; every compared frame keeps int((1 - K) N)."""
    N = 10
    packed = dycoke_ttm(_video(T=T, N=N).to(device), Config(prune_ratio=K))
    anchors = sum(ref is None for ref in reference_frames(T))
    expected = anchors * N + (T - anchors) * int((1 - K) * N)
    assert packed.lengths.tolist() == [expected, expected]
    assert packed.tokens.shape == (2, expected, 6)
    per_frame = torch.bincount(packed.frame[0], minlength=T).tolist()
    assert per_frame == [N if ref is None else int((1 - K) * N) for ref in reference_frames(T)]


def test_zero_rate_keeps_everything() -> None:
    video = _video()
    packed = dycoke_ttm(video, Config(prune_ratio=0.0))
    torch.testing.assert_close(packed.tokens, video.reshape(2, 80, 6), rtol=0, atol=0)


def test_matches_a_naive_loop() -> None:
    """Per compared frame, keep the int((1 - K) N) tokens least similar to their reference."""
    video, config = _video(), Config(prune_ratio=0.6)
    keep = temporal_keep_mask(video, config)
    refs = [None, 0, 0, 2, None, 4, 4, 6]
    for b in range(2):
        for t in range(8):
            ref = refs[t]
            if ref is None:
                assert keep[b, t].all()
                continue
            sims = [
                float(F.cosine_similarity(video[b, t, n], video[b, ref, n], dim=0))
                for n in range(10)
            ]
            least = sorted(range(10), key=lambda n: sims[n])[:4]
            assert keep[b, t].nonzero().flatten().tolist() == sorted(least)


def test_static_video_keeps_only_the_window_anchors() -> None:
    """Threshold mode: frames identical to their reference vanish, the anchors stay."""
    frame = _video(T=1)
    video = frame.expand(2, 9, 10, 6)
    packed = dycoke_ttm(video, Config(threshold=0.99))
    assert packed.lengths.tolist() == [30, 30]  # frames 0, 4, 8
    assert packed.frame[0].unique().tolist() == [0, 4, 8]
    dense, kept = unpack(packed, frames=9, positions=10)
    assert kept[:, [0, 4, 8]].all() and kept.sum() == 2 * 30
    torch.testing.assert_close(dense[:, 4], video[:, 4], rtol=0, atol=0)


def test_all_different_frames_keep_everything() -> None:
    """Threshold mode: a frame orthogonal to its reference keeps all its tokens."""
    T, N, C = 8, 10, 16
    basis = torch.eye(C)
    video = torch.stack([basis[[(n + t) % C for n in range(N)]] for t in range(T)])[None]
    packed = dycoke_ttm(video.expand(2, T, N, C), Config(threshold=0.5))
    assert packed.lengths.tolist() == [80, 80]


def test_threshold_mode_drops_exactly_the_similar_tokens() -> None:
    video = _video(T=2, N=4)
    video[:, 1] = video[:, 0]
    video[:, 1, 2] = -video[:, 0, 2]  # one token changed in frame 1
    keep = temporal_keep_mask(video, Config(threshold=0.9))
    assert keep[:, 1].tolist() == [[False, False, True, False]] * 2


def test_config_for() -> None:
    """keep 1 -> K 0; keep 1/4 -> K 1 (anchors only); in between the kept share is exact."""
    assert dycoke.config_for(1.0).prune_ratio == 0.0
    assert dycoke.config_for(0.25).prune_ratio == 1.0
    assert dycoke.config_for(0.1).prune_ratio == 1.0
    config = dycoke.config_for(0.55)  # K = 0.6: (1 + 3 * 0.4) / 4 = 0.55
    packed = dycoke_ttm(_video(T=8, N=10), config)
    assert packed.lengths.tolist() == [44, 44]
    with pytest.raises(AssertionError):
        Config(prune_ratio=1.5)
