"""TokenPacker: counts, point queries, point-to-region attention against a loop over regions,
locality, multi-level keys, gradients and a short training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.projector import tokenpacker
from reference_impls.projector.tokenpacker import Config, TokenPacker

from ..common import device_param
from ..vlm.common import fit

SMALL = Config(in_dim=6, out_dim=7, width=8, heads=2)


def _features(B: int = 2, side: int = 8, C: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, side * side, C, generator=generator)


def _model(config: Config = SMALL, seed: int = 0) -> TokenPacker:
    torch.manual_seed(seed)
    return TokenPacker(config).eval()


@device_param
@pytest.mark.parametrize(("side", "scale"), [(4, 2), (6, 2), (8, 2), (6, 3), (9, 3), (8, 4)])
def test_exact_output_count(side: int, scale: int, device: str) -> None:
    config = Config(in_dim=6, out_dim=7, width=8, heads=2, scale=scale)
    out = _model(config).to(device)(_features(side=side).to(device))
    M = (side // scale) ** 2
    assert out.shape == (2, M, 7) and torch.isfinite(out).all()
    assert tokenpacker.output_tokens(side * side, config) == M


def test_point_queries_are_region_means_at_scale_two() -> None:
    """Bilinear downsampling by exactly 2 averages each 2x2 region."""
    model, x = _model(), _features()
    queries = model.point_queries(x)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                region = [x[b, (2 * i + dy) * 8 + 2 * j + dx] for dy in range(2) for dx in range(2)]
                torch.testing.assert_close(queries[b, i * 4 + j], torch.stack(region).mean(0))


def test_matches_a_loop_over_regions() -> None:
    """Each query attends, alone, to the keys and values of its own s x s region."""
    model, x = _model(), _features()
    with torch.no_grad():
        query = model.q_norm(model.q_proj(model.point_queries(x)))  # (B, 16, D)
        key, value = model.k_norm(model.k_proj(x)), model.v_norm(model.v_proj(x))  # (B, 64, D)
        expected = torch.zeros(2, 16, 7)
        for b in range(2):
            for i in range(4):
                for j in range(4):
                    cells = [(2 * i + dy) * 8 + 2 * j + dx for dy in range(2) for dx in range(2)]
                    q = query[b, i * 4 + j].reshape(1, 1, -1)
                    k, v = key[b, cells].unsqueeze(0), value[b, cells].unsqueeze(0)
                    attended = model.attn(q, k, v, need_weights=False)[0]
                    expected[b, i * 4 + j] = model.mlp(attended[0, 0])
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3])
def test_output_token_depends_only_on_its_region(scale: int) -> None:
    """Autograd: the gradient of output token i is non-zero exactly on its region."""
    model = _model(Config(in_dim=6, out_dim=7, width=8, heads=2, scale=scale))
    x = _features(B=1, side=6).requires_grad_(True)
    out = model(x)
    g = 6 // scale
    for i, j in [(0, 0), (g - 1, 0), (1, 1)]:
        (grad,) = torch.autograd.grad(out[0, i * g + j].sum(), x, retain_graph=True)
        touched = {int(t) for t in grad[0].abs().sum(-1).nonzero().flatten()}
        region = {
            (scale * i + dy) * 6 + scale * j + dx for dy in range(scale) for dx in range(scale)
        }
        assert touched == region


def test_multi_level_keys() -> None:
    """With L levels the keys and values read (B, N, L * C_vis); a wrong width is an error."""
    model = _model(Config(in_dim=6, out_dim=7, width=8, heads=2, levels=3))
    x = _features()
    levels = torch.cat([x, x.flip(-1), 2 * x], dim=-1)
    assert model(x, levels).shape == (2, 16, 7)
    with pytest.raises(ValueError, match="in_dim \\* levels"):
        model(x)


def test_rejects_indivisible_grids() -> None:
    with pytest.raises(ValueError, match="divisible"):
        _model()(_features(side=5))


def test_config_for() -> None:
    assert tokenpacker.config_for(0.25).scale == 2  # TokenPacker's 75% reduction
    assert tokenpacker.config_for(0.11).scale == 3  # ~89% reduction
    assert tokenpacker.config_for(1.0).scale == 1


def test_gradient_reaches_every_parameter() -> None:
    model = _model().train()
    model(_features()).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_fits_a_pooled_linear_target() -> None:
    """60 Adam steps on a fixed batch cut the loss by more than 5x."""
    model = _model(Config(in_dim=8, out_dim=8, width=16, heads=2)).train()
    x = _features(B=8, C=8)
    target = F.avg_pool2d(x.transpose(1, 2).reshape(8, 8, 8, 8), 2).flatten(2).transpose(1, 2)
    target = target @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    losses = fit(model, x, target, lr=1e-2)
    assert losses[-1] < losses[0] / 5, losses[::10]


def test_official_norm_eps_and_float32_point_queries() -> None:
    """The official norms use eps 1e-6; the fp16 point queries are interpolated in float32 and
    cast back to fp16: at scale 2 the mean of 1, 2, 3, 2048 is 513.5, which fp16 holds."""
    packer = tokenpacker.TokenPacker(tokenpacker.Config())
    assert {packer.q_norm.eps, packer.k_norm.eps, packer.v_norm.eps} == {1e-6}
    x = torch.tensor([1.0, 2.0, 3.0, 2048.0], dtype=torch.float16).reshape(1, 4, 1)
    got = packer.point_queries(x)
    assert got.dtype == torch.float16 and got.flatten().tolist() == [513.5]
