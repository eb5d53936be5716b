"""Q-Former resampler (BLIP-2 query branch): counts, permutation invariance, a naive re-computation,
gradients and a short training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_impls.projector import resampler
from reference_impls.projector.resampler import Config, QFormerResampler

from ..common import device_param
from ..vlm.common import fit

SMALL = Config(in_dim=6, out_dim=7, num_queries=5, width=8, depth=3, heads=2, mlp_ratio=2.0)


def _features(B: int = 2, N: int = 36, C: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, C, generator=generator)


def _model(config: Config = SMALL, seed: int = 0) -> QFormerResampler:
    torch.manual_seed(seed)
    return QFormerResampler(config).eval()


@device_param
@pytest.mark.parametrize("N", [16, 36, 64, 10])
def test_output_count_is_the_number_of_queries(N: int, device: str) -> None:
    out = _model().to(device)(_features(N=N).to(device))
    assert out.shape == (2, 5, 7) and torch.isfinite(out).all()
    assert resampler.output_tokens(N, SMALL) == 5


def test_invariant_to_a_permutation_of_the_input_tokens() -> None:
    model, x = _model(), _features()
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, perm]), model(x), rtol=1e-5, atol=1e-5)


def test_samples_are_independent() -> None:
    model, x = _model(), _features(B=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]), rtol=1e-5, atol=1e-5)


def test_cross_attention_every_kth_layer() -> None:
    """BLIP-2 inserts a cross-attention in every other layer: 0, 2, 4, ..."""
    model = _model(Config(depth=5, cross_attention_every=2))
    assert [layer.cross_attn is not None for layer in model.layers] == [
        True,
        False,
        True,
        False,
        True,
    ]


def _attention(mha: nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of one sample written out with loops: `q (M, D)`, `kv (N, C)`."""
    D, H = mha.embed_dim, mha.num_heads
    d = D // H
    if mha.in_proj_weight is not None:
        wq, wk, wv = mha.in_proj_weight.split(D)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    assert mha.in_proj_bias is not None and mha.out_proj.bias is not None
    bq, bk, bv = mha.in_proj_bias.split(D)
    out = torch.zeros(q.shape[0], D)
    for m in range(q.shape[0]):
        heads = []
        for h in range(H):
            rows = slice(h * d, (h + 1) * d)
            query = q[m] @ wq[rows].T + bq[rows]
            scores = torch.stack(
                [(query * (kv[n] @ wk[rows].T + bk[rows])).sum() for n in range(kv.shape[0])]
            ) / math.sqrt(d)
            weights = scores.softmax(0)
            heads.append(sum(weights[n] * (kv[n] @ wv[rows].T + bv[rows]) for n in range(len(kv))))
        out[m] = torch.cat(heads) @ mha.out_proj.weight.T + mha.out_proj.bias
    return out


def test_matches_a_naive_recomputation() -> None:
    """The query embeddings layer-normalised (BERT's embedding LayerNorm, eps 1e-12), post-LN
    layers (self-attention, cross-attention where configured, FFN), then the projection."""
    model, x = _model(), _features(B=1, N=9)
    with torch.no_grad():
        image = F.layer_norm(x[0], (6,), model.image_norm.weight, model.image_norm.bias)
        norm = model.query_norm
        q = F.layer_norm(model.queries[0], (8,), norm.weight, norm.bias, eps=1e-12)
        for layer in model.layers:
            q = layer.norm_self(q + _attention(layer.self_attn, q, q))
            if layer.cross_attn is not None and layer.norm_cross is not None:
                q = layer.norm_cross(q + _attention(layer.cross_attn, q, image))
            q = layer.norm_ffn(q + layer.ffn(q))
        expected = model.proj(q)
        torch.testing.assert_close(model(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_config_for() -> None:
    assert resampler.config_for(0.25).num_queries == 144
    assert resampler.config_for(1.0, num_patches=64).num_queries == 64
    assert resampler.config_for(0.001, num_patches=64).num_queries == 1
    with pytest.raises(AssertionError):
        Config(width=10, heads=4)


def test_gradient_reaches_every_parameter() -> None:
    model = _model().train()
    model(_features()).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_fits_a_global_target() -> None:
    """60 Adam steps on a fixed batch cut the loss by more than 5x (target: a linear map of each
    image's mean feature, for every query)."""
    model = _model(Config(in_dim=8, out_dim=8, num_queries=4, width=16, depth=2, heads=2)).train()
    x = _features(B=8, N=16, C=8)
    weight = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    target = (x.mean(1, keepdim=True) @ weight * 4).expand(8, 4, 8)
    losses = fit(model, x, target, lr=1e-2)
    assert losses[-1] < losses[0] / 5, losses[::10]


def test_bert_layer_norms() -> None:
    """Every Q-Former LayerNorm uses BERT's eps 1e-12; the image norm (BLIP-2's `ln_vision`)
    keeps PyTorch's 1e-5. The queries are normalised before the first layer: queries that differ
    by a constant offset per row give the same output."""
    model = _model()
    eps = {m.eps for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {1e-12, 1e-5} and model.image_norm.eps == 1e-5
    x = _features()
    with torch.no_grad():
        before = model(x)
        model.queries.add_(torch.arange(5.0).reshape(1, 5, 1))
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
