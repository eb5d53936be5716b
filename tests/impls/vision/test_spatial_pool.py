"""2x2 spatial pooling (baseline)."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision import spatial_pool

from ..common import images, tiny_vit


def test_exact_counts() -> None:
    model = tiny_vit()
    with spatial_pool.patch(model, spatial_pool.Config(blocks=(0,))):
        model(images())
    assert model.token_counts() == [(65, 17), (17, 17), (17, 17), (17, 17)]


def test_conserves_the_size_weighted_sum_and_keeps_cls() -> None:
    x = torch.randn(2, 17, 3)
    size = torch.rand(2, 17, 1) + 0.5
    out, new_size = spatial_pool.spatial_pool(x, size)
    assert out.shape == (2, 5, 3) and new_size is not None
    torch.testing.assert_close(out[:, 0], x[:, 0])
    torch.testing.assert_close((out * new_size).sum(1), (x * size).sum(1))


def test_rejects_a_non_grid() -> None:
    with pytest.raises(ValueError, match="even square grid"):
        spatial_pool.spatial_pool(torch.randn(1, 10, 3))


def test_identity_without_blocks() -> None:
    model = tiny_vit()
    x = images()
    reference = model(x)
    with spatial_pool.patch(model, spatial_pool.config_for(1.0, 4)):
        torch.testing.assert_close(model(x), reference)


def test_matches_a_naive_loop() -> None:
    """Each pooled token is the mean of its 2x2 block in row-major patch order."""
    x = torch.randn(2, 1 + 16, 3, generator=torch.Generator().manual_seed(0))
    out, _ = spatial_pool.spatial_pool(x)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                cells = [1 + (2 * i + di) * 4 + (2 * j + dj) for di in (0, 1) for dj in (0, 1)]
                expected = sum(x[b, c] for c in cells) / 4
                torch.testing.assert_close(out[b, 1 + i * 2 + j], expected)
