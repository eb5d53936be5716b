"""C-Abstractor (Honeybee): counts, pooling windows against a naive loop, locality of the pooling,
the global channel gate, gradients and a short training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reference_impls.projector import c_abstractor
from reference_impls.projector.c_abstractor import Bottleneck, CAbstractor, Config

from ..common import device_param
from ..vlm.common import fit


def _config(side: int = 8, m: int = 3, depth: int = 1, pos_emb: bool = True) -> Config:
    return Config(6, 7, hidden=8, depth=depth, output_side=m, input_side=side, pos_emb=pos_emb)


def _features(B: int = 2, side: int = 8, C: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, side * side, C, generator=generator)


def _model(config: Config, seed: int = 0) -> CAbstractor:
    torch.manual_seed(seed)
    return CAbstractor(config).eval()


@device_param
@pytest.mark.parametrize(("side", "m"), [(8, 4), (8, 3), (12, 6), (9, 4), (6, 6)])
def test_exact_output_count(side: int, m: int, device: str) -> None:
    config = _config(side, m)
    out = _model(config).to(device)(_features(side=side).to(device))
    assert out.shape == (2, m * m, 7) and torch.isfinite(out).all()
    assert c_abstractor.output_tokens(side * side, config) == m * m


def _windows(side: int, m: int) -> list[list[range]]:
    """Adaptive pooling windows: rows floor(i S / m) .. ceil((i + 1) S / m) - 1, columns alike."""
    bounds = [range(math.floor(i * side / m), math.ceil((i + 1) * side / m)) for i in range(m)]
    return [[bounds[i], bounds[j]] for i in range(m) for j in range(m)]


@pytest.mark.parametrize(("side", "m"), [(8, 4), (8, 3), (7, 3)])
def test_pooling_windows_match_a_naive_loop(side: int, m: int) -> None:
    """Without ResNet stages (depth 0) the abstractor is readout(window means of x + pos)."""
    model = _model(_config(side, m, depth=0))
    x = _features(side=side)
    assert model.pos_emb is not None
    with torch.no_grad():
        shifted = x + model.pos_emb
        pooled = torch.stack(
            [
                torch.stack(
                    [
                        torch.stack([shifted[b, r * side + c] for r in rows for c in cols]).mean(0)
                        for rows, cols in _windows(side, m)
                    ]
                )
                for b in range(2)
            ]
        )
        torch.testing.assert_close(model(x), model.readout(pooled), rtol=1e-5, atol=1e-6)


def test_pooling_is_local_without_resnet_stages() -> None:
    """Autograd: with depth 0, output token (i, j) depends on its pooling window only."""
    model = _model(_config(8, 4, depth=0))
    x = _features(B=1).requires_grad_(True)
    out = model(x)
    for k, (rows, cols) in enumerate(_windows(8, 4)):
        (grad,) = torch.autograd.grad(out[0, k].sum(), x, retain_graph=True)
        touched = {int(t) for t in grad[0].abs().sum(-1).nonzero().flatten()}
        assert touched == {r * 8 + c for r in rows for c in cols}


def test_squeeze_excitation_makes_every_token_reach_every_output() -> None:
    """With ResNet stages, the SE gate (a global mean) links a corner output to the far corner,
    which 3x3 convolutions alone could not reach in one block."""
    model = _model(_config(8, 4, depth=1))
    x = _features(B=1).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[0, 0].sum(), x)
    assert grad[0, 63].abs().sum() > 0


def test_positional_embedding_must_fit_the_grid() -> None:
    with pytest.raises(ValueError, match="positional embedding"):
        _model(_config(8, 4))(_features(side=6))
    out = _model(_config(8, 2, pos_emb=False))(_features(side=6))
    assert out.shape == (2, 4, 7)


def test_bottleneck_shortcut() -> None:
    """Identity shortcut at equal widths, a projection when the width changes."""
    assert isinstance(Bottleneck(8, 8).shortcut, torch.nn.Identity)
    assert not isinstance(Bottleneck(6, 8).shortcut, torch.nn.Identity)
    out = Bottleneck(6, 8)(torch.randn(2, 6, 5, 5))
    assert out.shape == (2, 8, 5, 5)


def test_config_for() -> None:
    config = c_abstractor.config_for(0.25)
    assert (config.input_side, config.output_side) == (24, 12)  # Honeybee's 144 tokens
    assert c_abstractor.config_for(1.0, num_patches=64).output_side == 8


def test_gradient_reaches_every_parameter() -> None:
    model = _model(_config(8, 4, depth=2)).train()
    model(_features()).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_fits_a_pooled_linear_target() -> None:
    """60 Adam steps on a fixed batch cut the loss by more than 5x."""
    model = _model(Config(in_dim=8, out_dim=8, hidden=16, output_side=4, input_side=8)).train()
    x = _features(B=8, C=8)
    target = F.avg_pool2d(x.transpose(1, 2).reshape(8, 8, 8, 8), 2).flatten(2).transpose(1, 2)
    target = target @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    losses = fit(model, x, target, lr=1e-2)
    assert losses[-1] < losses[0] / 5, losses[::10]


def test_depth_zero_is_pooling_then_readout_and_leaves_the_input_alone() -> None:
    """Depth 0 (as the official `net = sampler`): a 2 x 2 grid of values 1, 2, 3, 6 plus a
    positional embedding 0.5 pools to 3.5, and a one-layer readout `2 y + 1` gives 8. The
    embedding is added out of place: the caller's tensor keeps its values (the official code adds
    it in place)."""
    model = CAbstractor(
        Config(in_dim=1, out_dim=1, depth=0, mlp_depth=1, output_side=1, input_side=2)
    )
    with torch.no_grad():
        model.readout[0].weight.fill_(2.0)
        model.readout[0].bias.fill_(1.0)
        assert model.pos_emb is not None
        x = torch.tensor([1.0, 2.0, 3.0, 6.0]).reshape(1, 4, 1)
        model.pos_emb.fill_(0.5)
        out = model(x)
    assert out.flatten().tolist() == [8.0]
    assert x.flatten().tolist() == [1.0, 2.0, 3.0, 6.0]
