"""LDPv2 (MobileVLM V2): counts, a naive loop re-computation, locality, gradients, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.projector import ldp_v2
from reference_impls.projector.ldp_v2 import Config, LDPv2

from ..common import device_param
from ..vlm.common import fit


def _features(B: int = 2, side: int = 8, C: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, side * side, C, generator=generator)


def _model(m: int = 4, seed: int = 0) -> LDPv2:
    torch.manual_seed(seed)
    return LDPv2(Config(in_dim=6, out_dim=5, output_side=m)).eval()


@device_param
@pytest.mark.parametrize("side", [4, 6, 8, 12, 7])
def test_output_count_is_fixed_by_the_pooled_grid(side: int, device: str) -> None:
    """Adaptive pooling: m x m tokens whatever the input grid (12 x 12 = 144 officially)."""
    out = _model(m=4).to(device)(_features(side=side).to(device))
    assert out.shape == (2, 16, 5) and torch.isfinite(out).all()
    assert ldp_v2.output_tokens(side * side, Config(output_side=4)) == 16


def test_matches_a_naive_loop() -> None:
    """Per-token MLP, 2x2 window means, then `y + depthwise 3x3 conv(y)` with zero padding."""
    model, x = _model(m=4), _features(B=1)
    with torch.no_grad():
        h = model.mlp(x[0])  # (64, C)
        pooled = torch.zeros(4, 4, 5)
        for i in range(4):
            for j in range(4):
                window = [h[(2 * i + dy) * 8 + 2 * j + dx] for dy in range(2) for dx in range(2)]
                pooled[i, j] = torch.stack(window).mean(0)
        weight, bias = model.peg.weight[:, 0], model.peg.bias  # (C, 3, 3), (C,)
        assert bias is not None
        expected = torch.zeros(16, 5)
        for i in range(4):
            for j in range(4):
                conv = bias.clone()
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < 4 and 0 <= j + dj < 4:
                            conv = conv + weight[:, di + 1, dj + 1] * pooled[i + di, j + dj]
                expected[i * 4 + j] = conv + pooled[i, j]
        torch.testing.assert_close(model(x)[0], expected, rtol=1e-5, atol=1e-6)


def test_output_token_depends_on_its_neighbourhood_only() -> None:
    """Autograd: token (i, j) sees the 2x2 windows of cells (i +- 1, j +- 1), nothing else."""
    model = _model(m=4)
    x = _features(B=1).requires_grad_(True)
    out = model(x)
    for i, j in [(0, 0), (1, 2), (3, 3)]:
        (grad,) = torch.autograd.grad(out[0, i * 4 + j].sum(), x, retain_graph=True)
        touched = {int(t) for t in grad[0].abs().sum(-1).nonzero().flatten()}
        cells = [
            (a, b)
            for a in range(i - 1, i + 2)
            for b in range(j - 1, j + 2)
            if 0 <= a < 4 and 0 <= b < 4
        ]
        expected = {
            (2 * a + dy) * 8 + 2 * b + dx for a, b in cells for dy in range(2) for dx in range(2)
        }
        assert touched == expected


def test_config_for() -> None:
    assert ldp_v2.config_for(0.25).output_side == 12  # 576 -> 144, MobileVLM V2's setting
    assert ldp_v2.config_for(1.0, num_patches=64).output_side == 8
    with pytest.raises(AssertionError):
        Config(output_side=0)


def test_gradient_reaches_every_parameter() -> None:
    model = _model().train()
    model(_features()).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_fits_a_pooled_linear_target() -> None:
    """60 Adam steps on a fixed batch cut the loss by more than 5x."""
    torch.manual_seed(0)
    model = LDPv2(Config(in_dim=8, out_dim=8, output_side=4))
    x = _features(B=8, C=8)
    target = F.avg_pool2d(x.transpose(1, 2).reshape(8, 8, 8, 8), 2).flatten(2).transpose(1, 2)
    target = target @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    losses = fit(model, x, target, lr=3e-2)
    assert losses[-1] < losses[0] / 5, losses[::10]
