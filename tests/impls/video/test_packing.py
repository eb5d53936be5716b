"""The packed representation shared by the video methods."""

from __future__ import annotations

import torch

from reference_impls.video.packing import pack, unpack


def _inputs(B: int = 3, T: int = 4, N: int = 5, C: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, T, N, C, generator=generator)
    keep = torch.rand(B, T, N, generator=generator) < 0.5
    keep[1] = False  # a sample that keeps nothing
    keep[2] = True  # and one that keeps everything
    return tokens, keep


def test_pack_matches_a_naive_loop() -> None:
    """Kept tokens left-aligned in time-major order, zero padding, -1 indices at padding."""
    tokens, keep = _inputs()
    packed = pack(tokens, keep)
    B, T, N, _ = tokens.shape
    assert packed.tokens.shape[1] == T * N  # the full sample sets the padded length
    for b in range(B):
        kept = [(t, n) for t in range(T) for n in range(N) if keep[b, t, n]]
        assert int(packed.lengths[b]) == len(kept)
        for m, (t, n) in enumerate(kept):
            assert (int(packed.frame[b, m]), int(packed.position[b, m])) == (t, n)
            torch.testing.assert_close(packed.tokens[b, m], tokens[b, t, n], rtol=0, atol=0)
        padding = slice(len(kept), None)
        assert not packed.mask[b, padding].any()
        assert (packed.frame[b, padding] == -1).all() and (packed.position[b, padding] == -1).all()
        assert (packed.tokens[b, padding] == 0).all()


def test_unpack_inverts_pack() -> None:
    tokens, keep = _inputs()
    dense, kept = unpack(pack(tokens, keep), frames=4, positions=5)
    assert torch.equal(kept, keep)
    torch.testing.assert_close(dense, tokens * keep[..., None], rtol=0, atol=0)


def test_nothing_dropped_is_the_identity() -> None:
    tokens, _ = _inputs()
    packed = pack(tokens, torch.ones(3, 4, 5, dtype=torch.bool))
    torch.testing.assert_close(packed.tokens, tokens.reshape(3, 20, 2), rtol=0, atol=0)
    assert packed.lengths.tolist() == [20, 20, 20]
