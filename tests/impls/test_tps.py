"""TPS (eTPS): invariants, and equivalence with a naive loop over images and tokens."""

from __future__ import annotations

import math

import torch

from reference_impls.vision.adapter import attach
from reference_impls.vision.tps import Config, TokenPruneSqueeze, config_for, patch, tps
from reference_impls.vision.vit import TokenState

from .common import TINY, device_param, images, tiny_vit


def _inputs(batch: int = 3, n: int = 20, c: int = 6, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1 + n, c, generator=g, dtype=dtype)
    scores = torch.rand(batch, n, generator=g, dtype=dtype)
    size = torch.randint(1, 4, (batch, 1 + n, 1), generator=g).to(dtype)
    return x, scores, size


@device_param
def test_kept_count_per_block(device: str) -> None:
    """Each chosen block leaves exactly 1 + round(keep_rate * patches) tokens for its MLP."""
    model, x = tiny_vit(device=device), images(device=device)
    with torch.no_grad(), patch(model, Config(keep_rate=0.5, blocks=(1, 2))):
        out = model(x)
        counts = model.token_counts()
    assert out.shape == (2, TINY.num_classes)
    assert counts == [(65, 65), (65, 33), (33, 17), (17, 17)]


def test_config_for_full_rate_is_identity() -> None:
    """At keep rate 1 no block is patched; below it, three stages compound to the rate."""
    assert config_for(1.0, 12).blocks == ()
    config = config_for(0.5, 12)
    assert config.blocks == (3, 6, 9)
    assert math.isclose(config.keep_rate**3, 0.5)


def test_reserving_everything_changes_nothing() -> None:
    """With k equal to the number of patches there is nothing to squeeze."""
    x, scores, size = _inputs()
    out, new_size = tps(x, scores, x.shape[1] - 1, size)
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(new_size, size)


def test_cls_row_unchanged_and_output_shape() -> None:
    """CLS stays at index 0, bit for bit; the output has 1 + k tokens."""
    x, scores, size = _inputs()
    out, new_size = tps(x, scores, 5, size)
    assert out.shape == (3, 6, 6) and new_size is not None and new_size.shape == (3, 6, 1)
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(new_size[:, 0], size[:, 0])


def test_sizes_are_summed_into_hosts() -> None:
    """Every patch is counted once after squeezing: the patch sizes sum to the same total."""
    x, scores, size = _inputs()
    _, new_size = tps(x, scores, 4, size)
    assert new_size is not None
    torch.testing.assert_close(new_size.sum(dim=1), size.sum(dim=1))


def test_squeezing_duplicates_changes_nothing() -> None:
    """A pruned copy of a reserved token is fused into it (cosine 1) and leaves it as it was."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    x = torch.cat([torch.zeros(2, 1, 8, dtype=torch.float64), a, a.flip(1)], dim=1)  # (2, 13, 8)
    scores = torch.cat([torch.ones(2, 6), torch.zeros(2, 6)], dim=1).double()
    out, new_size = tps(x, scores, 6, x.new_ones(2, 13, 1))
    torch.testing.assert_close(out[:, 1:], a)
    assert new_size is not None and torch.equal(
        new_size[:, 1:], torch.full((2, 6, 1), 2.0).double()
    )


def test_reducer_reserves_by_cls_attention() -> None:
    """The tokens the CLS token attends to most are the ones reserved (here the second half)."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(1, 6, 8, generator=g)
    x = torch.cat([torch.zeros(1, 1, 8), a, a.flip(1)], dim=1)  # (1, 13, 8)
    attn = torch.full((1, 2, 13, 13), 1 / 13)
    attn[:, :, 0, 7:] = 0.15  # the CLS row favours the copies
    x_out, _ = TokenPruneSqueeze(Config(keep_rate=0.5))(TokenState(x, None, 0, attn, x))
    torch.testing.assert_close(x_out[:, 1:], a.flip(1))


def test_patch_uses_no_proportional_attention() -> None:
    """TPS fuses by similarity, not by size: the model keeps its size vector off."""
    model = tiny_vit()
    with patch(model, config_for(0.5, TINY.depth)):
        assert model.track_size is False


# --- equivalence with a naive loop --------------------------------------------------------------


def naive_tps(x: torch.Tensor, scores: torch.Tensor, k: int, size: torch.Tensor):
    """The paper's eTPS step written one image and one token at a time."""
    outs, sizes = [], []
    for b in range(x.shape[0]):
        n = x.shape[1] - 1
        ranked = sorted(range(n), key=lambda i: -float(scores[b, i]))
        reserved, pruned = sorted(ranked[:k]), ranked[k:]
        num = {h: math.e * x[b, 1 + h] for h in reserved}
        den = dict.fromkeys(reserved, math.e)
        count = {h: float(size[b, 1 + h]) for h in reserved}
        for p in pruned:
            best, host = -math.inf, -1
            for h in reserved:
                u, v = x[b, 1 + p], x[b, 1 + h]
                cos = float(torch.dot(u, v) / (u.norm() * v.norm()))
                if cos > best:
                    best, host = cos, h
            num[host] = num[host] + math.exp(best) * x[b, 1 + p]
            den[host] += math.exp(best)
            count[host] += float(size[b, 1 + p])
        outs.append(torch.stack([x[b, 0]] + [num[h] / den[h] for h in reserved]))
        sizes.append(torch.tensor([float(size[b, 0])] + [count[h] for h in reserved]))
    return torch.stack(outs), torch.stack(sizes).unsqueeze(-1).to(x.dtype)


def test_matches_naive_loop() -> None:
    """The vectorised function equals the naive loop on random inputs, for several k."""
    x, scores, size = _inputs(batch=3, n=20, c=6, seed=7)
    for k in (1, 5, 13, 19):
        out, new_size = tps(x, scores, k, size)
        ref, ref_size = naive_tps(x, scores, k, size)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)


def test_model_matches_naive_loop_at_one_block() -> None:
    """Inside the ViT, the reducer applies the naive algorithm to this block's CLS attention."""
    model, x = tiny_vit(), images()
    captured: dict[str, torch.Tensor] = {}

    def spy(state: TokenState):
        assert state.attn is not None
        captured["x"], captured["scores"] = state.x, state.attn[:, :, 0, 1:].mean(dim=1)
        out, _ = TokenPruneSqueeze(Config(keep_rate=0.5))(state)
        captured["out"] = out
        return out, state.size

    with torch.no_grad(), attach(model, mid={1: spy}):
        model(x)
    ref, _ = naive_tps(captured["x"], captured["scores"], 32, torch.ones(2, 65, 1))
    torch.testing.assert_close(captured["out"], ref)
