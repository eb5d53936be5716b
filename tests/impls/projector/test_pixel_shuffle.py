"""Pixel shuffle projector (InternVL): space-to-depth order, locality, counts, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.projector import pixel_shuffle
from reference_impls.projector.pixel_shuffle import Config, PixelShuffleProjector, space_to_depth

from ..common import device_param
from ..vlm.common import fit


def _features(B: int = 2, side: int = 8, C: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, side * side, C, generator=generator)


@device_param
@pytest.mark.parametrize(("side", "scale"), [(4, 2), (6, 2), (8, 2), (6, 3), (9, 3), (5, 1)])
def test_exact_output_count(side: int, scale: int, device: str) -> None:
    torch.manual_seed(0)
    config = Config(in_dim=5, out_dim=7, scale=scale)
    model = PixelShuffleProjector(config).to(device)
    out = model(_features(side=side).to(device))
    M = (side // scale) ** 2
    assert out.shape == (2, M, 7) and torch.isfinite(out).all()
    assert pixel_shuffle.output_tokens(side * side, config) == M


@pytest.mark.parametrize("scale", [2, 3])
def test_space_to_depth_matches_a_naive_loop(scale: int) -> None:
    """Token (i, j) holds the block's tokens (s*i + dy, s*j + dx), dy-major, concatenated."""
    side, C = 6, 4
    x = _features(side=side, C=C)
    folded = space_to_depth(x, scale)
    g = side // scale
    for b in range(2):
        for i in range(g):
            for j in range(g):
                parts = [
                    x[b, (scale * i + dy) * side + (scale * j + dx)]
                    for dy in range(scale)
                    for dx in range(scale)
                ]
                torch.testing.assert_close(folded[b, i * g + j], torch.cat(parts), rtol=0, atol=0)


def test_order_matches_internvl_view_permute_sequence() -> None:
    """The official `pixel_shuffle(x, 0.5)` with ps_version v2, written out step by step."""
    x = _features(B=3, side=8, C=6)
    n, c = 3, 6
    y = x.reshape(n, 8, 8, c)  # (n, w, h, c) in the official names
    y = y.reshape(n, 8, 4, c * 2).permute(0, 2, 1, 3)  # (n, h/2, w, 2c)
    y = y.reshape(n, 4, 4, c * 4).permute(0, 2, 1, 3)  # (n, w/2, h/2, 4c), v2 swaps back
    torch.testing.assert_close(space_to_depth(x, 2), y.reshape(n, 16, 4 * c), rtol=0, atol=0)


def test_output_token_depends_only_on_its_block() -> None:
    """Autograd: the gradient of output token (i, j) is non-zero exactly on its 2x2 block."""
    torch.manual_seed(0)
    model = PixelShuffleProjector(Config(in_dim=5, out_dim=7, scale=2))
    x = _features(B=1, side=6).requires_grad_(True)
    out = model(x)
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        (grad,) = torch.autograd.grad(out[0, i * 3 + j].sum(), x, retain_graph=True)
        touched = {int(t) for t in grad[0].abs().sum(-1).nonzero().flatten()}
        block = {(2 * i + dy) * 6 + 2 * j + dx for dy in range(2) for dx in range(2)}
        assert touched == block


def test_rejects_bad_grids() -> None:
    model = PixelShuffleProjector(Config(in_dim=5, out_dim=7, scale=2))
    with pytest.raises(ValueError, match="square"):
        model(torch.randn(1, 10, 5))
    with pytest.raises(ValueError, match="divisible"):
        model(_features(side=5))
    with pytest.raises(AssertionError):
        Config(scale=0)


def test_config_for_picks_the_closest_share() -> None:
    assert pixel_shuffle.config_for(0.25).scale == 2  # 24 x 24 -> 12 x 12, InternVL's setting
    assert pixel_shuffle.config_for(1.0).scale == 1
    assert pixel_shuffle.config_for(0.5).scale == 2  # 1/4 is closer to 0.5 than 1
    assert pixel_shuffle.config_for(0.1).scale == 3  # 1/9
    assert pixel_shuffle.config_for(0.25, num_patches=25).scale == 5  # 1/25 beats 1 for a 5x5


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = PixelShuffleProjector(Config(in_dim=5, out_dim=7))
    model(_features()).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_fits_a_pooled_linear_target() -> None:
    """60 Adam steps on a fixed batch cut the loss by more than 5x."""
    torch.manual_seed(0)
    model = PixelShuffleProjector(Config(in_dim=8, out_dim=8))
    x = _features(B=8, side=8, C=8)
    target = F.avg_pool2d(x.transpose(1, 2).reshape(8, 8, 8, 8), 2).flatten(2).transpose(1, 2)
    target = target @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    losses = fit(model, x, target, lr=3e-2)
    assert losses[-1] < losses[0] / 5, losses[::10]
