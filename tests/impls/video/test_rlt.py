"""Run-length tokenization: static videos collapse, changing ones do not, exact counts, run
lengths, and the keep rule against a naive loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.video import rlt
from reference_impls.video.packing import unpack
from reference_impls.video.rlt import Config, patchify, run_length_tokenize, run_lengths

from ..common import device_param

SMALL = Config(patch_size=4, tubelet=2, threshold=0.1)


def _video(B: int = 2, T: int = 8, H: int = 8, W: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, H, W, generator=generator)


@device_param
def test_static_video_collapses_to_one_tubelet(device: str) -> None:
    """A still video keeps the first tubelet's N patches, each with run length T'."""
    video = _video(T=1).expand(2, 8, 3, 8, 12).to(device)
    out = run_length_tokenize(video, SMALL)
    N = (8 // 4) * (12 // 4)
    assert out.packed.lengths.tolist() == [N, N]
    assert (out.packed.frame == 0).all()
    assert out.run_length.tolist() == [[4] * N] * 2
    first = patchify(video, 4, 2)[:, 0].flatten(2)  # (B, N, tubelet * C * p * p)
    torch.testing.assert_close(out.packed.tokens, first, rtol=0, atol=0)


def test_changing_video_keeps_everything() -> None:
    """Every frame brighter than the last: nothing repeats, every run length is 1."""
    steps = torch.arange(8.0).reshape(1, 8, 1, 1, 1)
    out = run_length_tokenize(_video() * 0.01 + steps, SMALL)
    assert out.packed.lengths.tolist() == [24, 24]
    assert (out.run_length == 1).all()


def test_exact_counts_and_run_lengths() -> None:
    """One still video; patch 0 changes at tubelet 2 only, patch 5 at tubelets 1 and 3."""
    video = _video(B=1, T=1).expand(1, 8, 3, 8, 12).clone()
    video[:, 4:, :, 0:4, 0:4] += 1.0  # frames 4..7: patch (0, 0) from tubelet 2 on
    video[:, 2:, :, 4:8, 8:12] += 1.0  # patch (1, 2) from tubelet 1 on
    video[:, 6:, :, 4:8, 8:12] += 1.0  # and again from tubelet 3 on
    out = run_length_tokenize(video, SMALL)
    assert out.packed.lengths.tolist() == [6 + 1 + 2]
    kept = list(zip(out.packed.frame[0].tolist(), out.packed.position[0].tolist(), strict=True))
    assert kept == [(0, n) for n in range(6)] + [(1, 5), (2, 0), (3, 5)]
    assert out.run_length[0].tolist() == [2, 4, 4, 4, 4, 1, 2, 2, 1]
    for position in range(6):  # the runs of each position cover the whole video
        runs = out.run_length[0][out.packed.position[0] == position]
        assert int(runs.sum()) == 4


def test_keep_rule_matches_a_naive_loop() -> None:
    """Kept: tubelet 0, and patches whose last frame differs from the previous patch's first
    frame by a mean absolute difference above the threshold (tubelets of 2 and of 1)."""
    base = _video(B=2, T=1).expand(2, 8, 3, 8, 12).clone()
    generator = torch.Generator().manual_seed(5)
    noise = torch.rand(2, 8, 3, 8, 12, generator=generator)
    jitter = torch.rand(2, 8, 1, 1, 1, generator=generator) < 0.6  # some frames jitter
    video = base + 0.25 * noise * jitter
    for tubelet in (2, 1):
        config = Config(patch_size=4, tubelet=tubelet, threshold=0.06)
        out = run_length_tokenize(video, config)
        _, keep = unpack(out.packed, frames=8 // tubelet, positions=6)
        for b in range(2):
            for t in range(8 // tubelet):
                for n in range(6):
                    r, c = divmod(n, 3)
                    if t == 0:
                        assert keep[b, t, n]
                        continue
                    last = video[
                        b, t * tubelet + tubelet - 1, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4
                    ]
                    first = video[b, (t - 1) * tubelet, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
                    changed = float((last - first).abs().mean()) > config.threshold
                    assert bool(keep[b, t, n]) == changed, (tubelet, b, t, n)
        assert 6 < int(out.packed.lengths.min()) < 6 * 8 // tubelet  # the test is not trivial


def test_run_lengths_match_a_naive_loop() -> None:
    keep = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(2)) < 0.4
    keep[:, 0] = True
    lengths = run_lengths(keep)
    for b in range(3):
        for n in range(5):
            for t in range(7):
                if not keep[b, t, n]:
                    assert lengths[b, t, n] == 0
                    continue
                after = [u for u in range(t + 1, 7) if keep[b, u, n]]
                assert lengths[b, t, n] == (after[0] if after else 7) - t


def test_patchify_layout() -> None:
    video = _video(B=1, T=4)
    patches = patchify(video, 4, 2)  # (1, 2, 6, 2, 48)
    assert patches.shape == (1, 2, 6, 2, 48)
    torch.testing.assert_close(
        patches[0, 1, 4, 0], video[0, 2, :, 4:8, 4:8].flatten(), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="does not divide"):
        patchify(_video(T=3), 4, 2)


def test_length_encoding() -> None:
    code = rlt.length_encoding(torch.tensor([[1, 3]]), dim=6)
    assert code.shape == (1, 2, 6)
    frequency = 1000.0 ** (-torch.tensor([0.0, 0.0, 2.0, 2.0, 4.0, 4.0]) / 6)
    angle = 3 * frequency
    expected = torch.where(torch.arange(6) % 2 == 0, angle.sin(), angle.cos())
    torch.testing.assert_close(code[0, 1], expected)


def test_config_for() -> None:
    """No budget: keep 1 keeps everything, anything else is the official threshold."""
    assert rlt.config_for(0.5).threshold == 0.1
    everything = rlt.config_for(1.0)
    video = _video(T=1).expand(2, 8, 3, 8, 12)
    config = Config(patch_size=4, tubelet=2, threshold=everything.threshold)
    assert run_length_tokenize(video, config).packed.lengths.tolist() == [24, 24]
