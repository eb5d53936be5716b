"""The small diffusion transformer the diffusion methods run on."""

from __future__ import annotations

import pytest
import torch

from reference_impls.diffusion.dit import DiT, DiTConfig, sincos_2d, timestep_embedding

from ..common import device_param

TINY = DiTConfig(in_channels=4, image_size=16, patch_size=2, width=24, depth=2, heads=2)


def _model(seed: int = 0, config: DiTConfig = TINY) -> DiT:
    torch.manual_seed(seed)
    return DiT(config).eval()


def _latent(B: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 16, 16, generator=generator), torch.tensor([10.0, 500.0])[:B]


@device_param
def test_output_shape_and_timestep_conditioning(device: str) -> None:
    model = _model().to(device)
    x, t = _latent()
    x, t = x.to(device), t.to(device)
    with torch.no_grad():
        out = model(x, t)
        other = model(x, t + 100)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, other)  # the timestep changes the prediction
    assert [block.attn.tokens_seen for block in model.dit_blocks()] == [64, 64]


def test_hook_replaces_the_attention_call() -> None:
    """A hook that calls `attn(h)` itself reproduces the model exactly; a zero hook changes it."""
    model, (x, t) = _model(), _latent()
    calls: list[tuple[tuple[int, ...], tuple[int, int]]] = []

    def passthrough(x_in, h, grid, attn):  # type: ignore[no-untyped-def]
        calls.append((tuple(x_in.shape), grid))
        return attn(h)

    with torch.no_grad():
        reference = model(x, t)
        for block in model.dit_blocks():
            block.attn_hook = passthrough
        torch.testing.assert_close(model(x, t), reference, rtol=0, atol=0)
        assert calls == [((2, 64, 24), (8, 8))] * 2
        for block in model.dit_blocks():
            block.attn_hook = lambda x_in, h, grid, attn: torch.zeros_like(h)
        assert not torch.allclose(model(x, t), reference)


def test_embeddings() -> None:
    assert timestep_embedding(torch.tensor([0.0, 3.0]), 7).shape == (2, 7)
    pos = sincos_2d(3, 4, 8)
    assert pos.shape == (12, 8)
    assert len({tuple(row.tolist()) for row in pos}) == 12  # every position distinct
    with pytest.raises(ValueError, match="built for"):
        _model()(torch.randn(1, 4, 8, 8), torch.tensor([1.0]))
