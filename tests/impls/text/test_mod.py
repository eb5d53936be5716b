"""Mixture-of-Depths: capacity, bit-exact skipping, the router's gradient, and naive loops."""

from __future__ import annotations

import pytest
import torch

from reference_impls.text import mod
from reference_impls.text.encoder import TINY_ENCODER, Block, TextEncoder

from .common import LENGTHS, device_param, inputs, tiny_encoder


@device_param
def test_exactly_capacity_tokens_per_routed_block(device: str) -> None:
    """Routed blocks (1 and 3) process round(capacity * N) tokens, the others all N."""
    model = tiny_encoder(device=device)
    ids, mask = inputs(device=device)
    routers = {
        i: r.to(device) for i, r in mod.make_routers(TINY_ENCODER.width, mod.Config()).items()
    }
    for capacity, k in [(0.125, 4), (0.5, 16), (0.3, 10), (1.0, 32)]:
        with torch.no_grad(), mod.patch(model, mod.Config(capacity=capacity), routers):
            logits = model(ids, mask)
            counts = model.token_counts()
            lengths = model.token_lengths()
        assert logits.shape == (3, TINY_ENCODER.num_classes)
        assert counts == [(32, 32), (k, k), (32, 32), (k, k)]
        # real tokens are routed first: a sample shorter than k sends all of its tokens
        assert lengths[1][0] == tuple(min(n, k) for n in LENGTHS)


def test_skipped_tokens_are_bit_identical_to_the_block_input() -> None:
    model = tiny_encoder()
    ids, mask = inputs()
    config = mod.Config(capacity=0.25, blocks=(1,))
    routers = mod.make_routers(TINY_ENCODER.width, config)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def grab(
        _: torch.nn.Module, args: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...]
    ) -> None:
        seen.append((args[0], out[0]))

    handle = model.blocks[1].register_forward_hook(grab)
    try:
        with torch.no_grad(), mod.patch(model, config, routers):
            model(ids, mask)
    finally:
        handle.remove()
    x, out = seen[0]
    scores = routers[1](x).masked_fill(~mask, float("-inf"))
    for b in range(3):
        chosen = set(scores[b].topk(8).indices.tolist())
        for i in range(32):
            if i in chosen:
                assert not torch.equal(out[b, i], x[b, i])
            else:
                assert torch.equal(out[b, i], x[b, i]), f"skipped token {b}, {i} changed"


def test_route_scales_the_update_by_the_router_weight() -> None:
    """x_i + r_i * f_i for the top-k, x_i for the others, with a constant update f = 1."""
    x = torch.zeros(1, 5, 2)
    mask = torch.ones(1, 5, dtype=torch.bool)
    weights = torch.tensor([[0.1, 0.7, -0.2, 0.5, 0.3]])
    out = mod.route(x, mask, weights, 2, lambda xs, m: torch.ones_like(xs))
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 0.7, 0.0, 0.5, 0.0])


def _naive_full_capacity(
    model: TextEncoder, routers: dict[int, mod.MoDRouter], ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Capacity 1, written out: every token goes through each routed block and gets
    x + r * (block(x) - x); unrouted blocks are plain."""
    x = model.embed(ids)
    for index, block in enumerate(model.blocks):
        assert isinstance(block, Block)
        out, _ = block.run(x, mask)
        x = x + routers[index](x).unsqueeze(-1) * (out - x) if index in routers else out
    return model.head(model.norm(x)[:, 0])


@pytest.mark.parametrize("pre_norm", [False, True])
def test_full_capacity_is_the_router_scaled_model(pre_norm: bool) -> None:
    """At capacity 1 nothing is skipped, yet every update is scaled by its router weight: the
    model equals that written out, not the unrouted model."""
    model = tiny_encoder(pre_norm=pre_norm)
    ids, mask = inputs()
    config = mod.config_for(1.0, TINY_ENCODER.depth)
    routers = mod.make_routers(TINY_ENCODER.width, config)
    with torch.no_grad():
        plain = model(ids, mask)
        with mod.patch(model, config, routers):
            routed = model(ids, mask)
            assert model.token_counts() == [(32, 32)] * 4
        expected = _naive_full_capacity(model, routers, ids, mask)
    torch.testing.assert_close(routed, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(routed, plain)


def test_gradient_reaches_the_router() -> None:
    model = tiny_encoder()
    ids, mask = inputs()
    config = mod.Config(capacity=0.5)
    routers = mod.make_routers(TINY_ENCODER.width, config)
    with mod.patch(model, config, routers):
        model(ids, mask).square().sum().backward()
    for router in routers.values():
        grad = router.proj.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_patch_is_reversible_and_checked() -> None:
    model = tiny_encoder()
    ids, mask = inputs()
    with torch.no_grad():
        reference = model(ids, mask)
        with pytest.raises(RuntimeError, match="boom"), mod.patch(model, mod.Config()):
            raise RuntimeError("boom")
        torch.testing.assert_close(model(ids, mask), reference, rtol=0, atol=0)
    assert all(isinstance(b, Block) and b.router is None for b in model.blocks)
    with (
        pytest.raises(ValueError, match="routers for blocks"),
        mod.patch(model, mod.Config(blocks=(1,)), mod.make_routers(32, mod.Config())),
    ):
        pass
    with pytest.raises(AssertionError):
        mod.Config(capacity=0.0)
    with pytest.raises(AssertionError):
        mod.Config(blocks=(1, 1))
    assert mod.config_for(0.5, 6).blocks == (1, 3, 5)


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_route(
    block: Block, router: mod.MoDRouter, x: torch.Tensor, mask: torch.Tensor, k: int
) -> torch.Tensor:
    """Per sample: rank real tokens by router weight (then padding by position), run the block
    on the chosen k alone, and add r_i times its update; leave the others untouched."""
    out = x.clone()
    for b in range(x.shape[0]):
        r = router(x[b : b + 1])[0]
        real = sorted((i for i in range(x.shape[1]) if mask[b, i]), key=lambda i: -float(r[i]))
        padding = [i for i in range(x.shape[1]) if not mask[b, i]]
        chosen = sorted((real + padding)[:k])
        xs, ms = x[b : b + 1, chosen], mask[b : b + 1, chosen]
        processed, _ = block.run(xs, ms)
        for j, i in enumerate(chosen):
            out[b, i] = x[b, i] + r[i] * (processed[0, j] - xs[0, j])
    return out


@pytest.mark.parametrize("k", [3, 12, 25])
def test_matches_naive_loop(k: int) -> None:
    model = tiny_encoder(seed=k)
    ids, mask = inputs()
    block = model.blocks[1]
    assert isinstance(block, Block)
    router = mod.make_routers(TINY_ENCODER.width, mod.Config(blocks=(1,), seed=k))[1]
    with torch.no_grad():
        x = model.embed(ids)
        got = mod.route(x, mask, router(x), k, block.residual)
        expected = _naive_route(block, router, x, mask, k)
    real = mask.unsqueeze(-1).expand_as(x)
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
