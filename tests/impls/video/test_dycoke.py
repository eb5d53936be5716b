"""DyCoke token temporal merging: window references, exact counts, threshold mode, a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.video import dycoke
from reference_impls.video.dycoke import (
    DROPPED,
    Config,
    decode_keep,
    dycoke_ttm,
    reference_frames,
    temporal_keep_mask,
)
from reference_impls.video.packing import unpack

from ..common import device_param


def _video(B: int = 2, T: int = 8, N: int = 10, C: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, N, C, generator=generator)


def test_reference_frames_follow_the_official_pairs() -> None:
    """In each window of four: f1 and f2 against f0, f3 against f2. Officially the third frame
    of a window starting at T - 4 or later stays whole and an odd count drops its last frame."""
    assert reference_frames(10) == [None, 0, 0, 2, None, 4, 4, 6, None, 8]
    assert reference_frames(8) == [None, 0, 0, 2, None, 4, None, 6]
    assert reference_frames(9) == [None, 0, 0, 2, None, 4, 4, 6, DROPPED]
    assert reference_frames(7) == [None, 0, 0, 2, None, 4, DROPPED]
    assert reference_frames(3) == [None, 0, DROPPED]
    assert reference_frames(1) == [None]  # the official code fails here; one frame stays whole
    assert reference_frames(8, "every") == [None, 0, 0, 2, None, 4, 4, 6]
    assert reference_frames(9, "every") == [None, 0, 0, 2, None, 4, 4, 6, None]


def official_loops(video: torch.Tensor, K: float) -> list[tuple[int, list[int]]]:
    """The official passes written out for one video `(T, N, C)`: (frame, kept positions in
    emission order) for every frame that appears. Pass 1 over pairs (i, i + 1) keeps frame i
    and the int((1 - K) N) tokens of frame i + 1 least similar to frame i; pass 2 over
    i in range(0, T - 4, 4) replaces frame i + 2 by its tokens least similar to frame i."""
    T, N, _ = video.shape
    k = int((1 - K) * N)

    def least(t: int, ref: int) -> list[int]:
        sims = [float(F.cosine_similarity(video[t, n], video[ref, n], dim=0)) for n in range(N)]
        return sorted(range(N), key=lambda n: (sims[n], n))[:k]

    out: list[tuple[int, list[int]]] = []
    for i in range(0, T - 1, 2):
        out.append((i, list(range(N))))
        out.append((i + 1, least(i + 1, i)))
    for i in range(0, T - 4, 4):
        out[i + 2] = (i + 2, least(i + 2, i))
    return out


@pytest.mark.parametrize(("T", "K"), [(8, 0.6), (9, 0.7), (6, 0.3), (13, 0.5)])
def test_matches_the_official_loops(T: int, K: float) -> None:
    """Every sample of a batch: the same frames, the same tokens, in the same order."""
    video = _video(B=2, T=T, N=10)
    packed = dycoke_ttm(video, Config(prune_ratio=K))
    for b in range(2):
        expected = official_loops(video[b], K)
        frames = [t for t, kept in expected for _ in kept]
        positions = [p for _, kept in expected for p in kept]
        n = len(frames)
        assert packed.lengths[b] == n
        assert packed.frame[b, :n].tolist() == frames
        assert packed.position[b, :n].tolist() == positions
        torch.testing.assert_close(
            packed.tokens[b, :n], video[b, frames, positions], rtol=0, atol=0
        )


@device_param
@pytest.mark.parametrize(
    ("T", "K", "windows"),
    [
        (8, 0.7, "official"),
        (8, 0.5, "every"),
        (6, 0.3, "official"),
        (5, 1.0, "official"),
        (5, 1.0, "every"),
        (4, 0.0, "official"),
        (7, 0.4, "official"),
    ],
)
def test_exact_counts(T: int, K: float, windows: str, device: str) -> None:
    """Whole frames keep N tokens, dropped ones none, every compared frame int((1 - K) N)."""
    N = 10
    config = Config(prune_ratio=K, windows=windows)  # type: ignore[arg-type]
    packed = dycoke_ttm(_video(T=T, N=N).to(device), config)
    refs = reference_frames(T, windows)
    per = [N if ref is None else 0 if ref == DROPPED else int((1 - K) * N) for ref in refs]
    assert packed.lengths.tolist() == [sum(per), sum(per)]
    assert packed.tokens.shape == (2, sum(per), 6)
    assert torch.bincount(packed.frame[0], minlength=T).tolist() == per


def test_zero_rate_keeps_every_token() -> None:
    """K = 0 keeps every token of an even count; in positional order with order="position",
    least similar first in the compared frames otherwise (as officially)."""
    video = _video()
    packed = dycoke_ttm(video, Config(prune_ratio=0.0, order="position"))
    torch.testing.assert_close(packed.tokens, video.reshape(2, 80, 6), rtol=0, atol=0)
    shuffled = dycoke_ttm(video, Config(prune_ratio=0.0))
    assert shuffled.lengths.tolist() == [80, 80]
    assert shuffled.position[0, :10].tolist() == list(range(10))  # frame 0: whole, in order
    assert sorted(shuffled.position[0, 10:20].tolist()) == list(range(10))
    assert shuffled.position[0, 10:20].tolist() != list(range(10))
    dense, kept = unpack(shuffled, frames=8, positions=10)
    assert kept.all() and torch.equal(dense, video)


def test_pruned_frame_emits_least_similar_first() -> None:
    """T = 2, N = 4: frame 1's tokens have cosine 1, -1, 0, 0.5 with frame 0's (by hand); K = 0.5
    keeps two: position 1 (-1) then position 2 (0)."""
    frame0 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    frame1 = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.5, 0.75**0.5]])
    video = torch.stack([frame0, frame1])[None]  # (1, 2, 4, 2)
    packed = dycoke_ttm(video, Config(prune_ratio=0.5))
    assert packed.frame[0].tolist() == [0, 0, 0, 0, 1, 1]
    assert packed.position[0].tolist() == [0, 1, 2, 3, 1, 2]
    in_place = dycoke_ttm(video, Config(prune_ratio=0.5, order="position"))
    assert in_place.position[0].tolist() == [0, 1, 2, 3, 1, 2]  # already ascending here
    swapped = dycoke_ttm(video[:, :, [0, 2, 1, 3]], Config(prune_ratio=0.5))
    assert swapped.position[0, 4:].tolist() == [2, 1]  # least similar first, not by position


def test_single_frame_and_odd_counts() -> None:
    """One frame stays whole; an odd count drops its last frame (official windows only)."""
    one = dycoke_ttm(_video(T=1), Config())
    assert one.lengths.tolist() == [10, 10]
    three = dycoke_ttm(_video(T=3), Config(prune_ratio=0.5))
    assert three.frame[0].unique().tolist() == [0, 1] and three.lengths.tolist() == [15, 15]
    every = dycoke_ttm(_video(T=3), Config(prune_ratio=0.5, windows="every"))
    assert every.lengths.tolist() == [20, 20]


def test_static_video_keeps_only_the_window_anchors() -> None:
    """Threshold mode: frames identical to their reference vanish, the anchors stay (official
    windows: frame 6 of 8 is whole, frame 8 of 9 is dropped)."""
    frame = _video(T=1)
    packed = dycoke_ttm(frame.expand(2, 9, 10, 6), Config(threshold=0.99))
    assert packed.lengths.tolist() == [20, 20]  # frames 0, 4
    assert packed.frame[0].unique().tolist() == [0, 4]
    video = frame.expand(2, 8, 10, 6)
    packed = dycoke_ttm(video, Config(threshold=0.99))
    assert packed.frame[0].unique().tolist() == [0, 4, 6]
    every = dycoke_ttm(frame.expand(2, 9, 10, 6), Config(threshold=0.99, windows="every"))
    assert every.frame[0].unique().tolist() == [0, 4, 8]
    dense, kept = unpack(packed, frames=8, positions=10)
    assert kept[:, [0, 4, 6]].all() and kept.sum() == 2 * 30
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
    """keep 1 -> K 0; keep 1/4 -> K 1 (anchors only); in between the kept share is exact for
    every window pruned in full (windows="every"); officially frame 6 of 8 stays whole."""
    assert dycoke.config_for(1.0).prune_ratio == 0.0
    assert dycoke.config_for(0.25).prune_ratio == 1.0
    assert dycoke.config_for(0.1).prune_ratio == 1.0
    config = dycoke.config_for(0.55)  # K = 0.6: (1 + 3 * 0.4) / 4 = 0.55
    every = Config(prune_ratio=config.prune_ratio, windows="every")
    assert dycoke_ttm(_video(T=8, N=10), every).lengths.tolist() == [44, 44]
    assert dycoke_ttm(_video(T=8, N=10), config).lengths.tolist() == [50, 50]
    with pytest.raises(AssertionError):
        Config(prune_ratio=1.5)
    with pytest.raises(AssertionError):
        Config(windows="all")  # type: ignore[arg-type]


def test_decode_keep_reselects_only_when_attention_moves() -> None:
    """First step: the int(n (1 - P)) most attended image tokens, ascending. A step whose
    attention has cosine >= 0.9 with the previous one: None (the whole cache this step)."""
    first = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    assert decode_keep(first, None, prune_ratio=0.6).tolist() == [1, 3]  # int(5 * 0.4) = 2
    assert decode_keep(first * 2, first, prune_ratio=0.6) is None  # cosine 1
    moved = torch.tensor([0.5, 0.0, 0.4, 0.0, 0.1])  # cosine with `first` < 0.9
    assert decode_keep(moved, first, prune_ratio=0.6).tolist() == [0, 2]  # type: ignore[union-attr]
    assert decode_keep(first, None, prune_ratio=0.0).tolist() == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
