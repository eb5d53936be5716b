"""TPS (eTPS): invariants, and equivalence with a naive loop over images and tokens."""

from __future__ import annotations

import math

import torch

from reference_impls.vision.adapter import attach
from reference_impls.vision.tps import Config, TokenPruneSqueeze, config_for, patch, squeeze, tps
from reference_impls.vision.vit import TokenState

from ..common import TINY, device_param, images, tiny_vit


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


def test_kept_counts_follow_the_official_rule() -> None:
    """Stage p keeps int(n0 * keep_rate ** (p + 1)) of the model's n0 patches (truncated, not
    rounded per stage): 44, 31, 21 of 64 at 0.7."""
    config = Config(keep_rate=0.7, blocks=(0, 1, 2))
    assert [config.kept(64, p) for p in range(3)] == [44, 31, 21]
    assert [config.kept(196, p) for p in range(3)] == [137, 96, 67]
    model = tiny_vit()
    with torch.no_grad(), patch(model, config):
        model(images())
    assert model.token_counts()[:3] == [(65, 45), (45, 32), (32, 22)]


def test_config_for_full_rate_is_identity() -> None:
    """At keep rate 1 no block is patched; below it, three stages compound to the rate."""
    assert config_for(1.0, 12).blocks == ()
    config = config_for(0.5, 12)
    assert config.blocks == (3, 6, 9)
    assert math.isclose(config.keep_rate**3, 0.5)


def test_reserving_everything_only_reorders() -> None:
    """With k equal to the number of patches nothing is squeezed; the tokens come in order of
    decreasing score, as the official code leaves them."""
    x, scores, size = _inputs()
    out, new_size = tps(x, scores, x.shape[1] - 1, size)
    order = scores.argsort(dim=1, descending=True) + 1
    index = torch.cat([torch.zeros(3, 1, dtype=torch.long), order], dim=1)
    torch.testing.assert_close(out, x.gather(1, index.unsqueeze(-1).expand_as(x)), rtol=0, atol=0)
    torch.testing.assert_close(new_size, size.gather(1, index.unsqueeze(-1)), rtol=0, atol=0)


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
    scores = torch.linspace(1, 0, 12, dtype=torch.float64).expand(2, -1)  # first six reserved
    out, new_size = tps(x, scores, 6, x.new_ones(2, 13, 1))
    torch.testing.assert_close(out[:, 1:], a)
    assert new_size is not None and torch.equal(
        new_size[:, 1:], torch.full((2, 6, 1), 2.0).double()
    )


def test_reducer_reserves_by_cls_attention() -> None:
    """The tokens the CLS token attends to most are reserved, most attended first."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(1, 6, 8, generator=g)
    x = torch.cat([torch.zeros(1, 1, 8), a, a.flip(1)], dim=1)  # (1, 13, 8)
    attn = torch.full((1, 2, 13, 13), 1 / 13)
    attn[:, :, 0, 7:] = torch.linspace(0.15, 0.2, 6)  # the CLS row favours the copies, last most
    x_out, _ = TokenPruneSqueeze(Config(keep_rate=0.5))(TokenState(x, None, 0, attn, x))
    torch.testing.assert_close(x_out[:, 1:], a)  # copies 12, 11, ..., 7 are a[0], ..., a[5]


def test_squeeze_weights_by_hand() -> None:
    """One host h, one guest p at cosine c: h' = (e h + exp(c / T) p) / (e + exp(c / T)); the
    host's weight stays e whatever the temperature T."""
    h = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    p = torch.tensor([[[0.6, 0.8]]], dtype=torch.float64)
    c = 0.6 / (1 + 1e-6) ** 2
    for temperature in (1.0, 0.5, 2.0):
        out, match = squeeze(h, p, temperature)
        w = math.exp(c / temperature)
        torch.testing.assert_close(out, (math.e * h + w * p) / (math.e + w))
        assert match.tolist() == [[[1.0]]]


def test_similarity_normalises_with_an_epsilon() -> None:
    """The official normalisation x / (||x|| + 1e-6): a guest of norm 1e-6 has cosine 0.5 with
    a host along it, not 1."""
    h = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    p = torch.tensor([[[1e-6, 0.0]]], dtype=torch.float64)
    out, _ = squeeze(h, p)
    w = math.exp(0.5 / (1 + 1e-6))
    torch.testing.assert_close(out, (math.e * h + w * p) / (math.e + w))


def test_tied_hosts_share_a_guest() -> None:
    """A guest equally similar to two hosts is squeezed into both; its size is split."""
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1]])  # hosts: tokens 1, 2, 3; guest: token 4
    out, size = tps(x, scores, 3, torch.ones(1, 5, 1))
    w = math.exp(1 / ((2**0.5 + 1e-6) * (1 + 1e-6)))  # cosine of (1, 1) with (1, 0) or (0, 1)
    for host in (1, 2, 3):  # token 4 is at 45 degrees from every host
        ref = (math.e * x[0, host] + w * x[0, 4]) / (math.e + w)
        torch.testing.assert_close(out[0, host], ref)
    torch.testing.assert_close(size.flatten(), torch.tensor([1.0, 4 / 3, 4 / 3, 4 / 3]))


def test_patch_uses_no_proportional_attention() -> None:
    """TPS fuses by similarity, not by size: the model keeps its size vector off."""
    model = tiny_vit()
    with patch(model, config_for(0.5, TINY.depth)):
        assert model.track_size is False


# --- equivalence with a naive loop --------------------------------------------------------------


def naive_tps(x: torch.Tensor, scores: torch.Tensor, k: int, size: torch.Tensor, temperature=1.0):
    """eTPS one image and one token at a time, as the official code computes it: reserved by
    decreasing score, similarity of x / (||x|| + 1e-6), ties squeezed into every tied host."""
    outs, sizes = [], []
    for b in range(x.shape[0]):
        n = x.shape[1] - 1
        ranked = sorted(range(n), key=lambda i: -float(scores[b, i]))
        reserved, pruned = ranked[:k], ranked[k:]
        num = {h: math.e * x[b, 1 + h] for h in reserved}
        den = dict.fromkeys(reserved, math.e)
        count = {h: float(size[b, 1 + h]) for h in reserved}
        for p in pruned:
            u = x[b, 1 + p] / (x[b, 1 + p].norm() + 1e-6)
            sims = {
                h: float(u @ (x[b, 1 + h] / (x[b, 1 + h].norm() + 1e-6))) / temperature
                for h in reserved
            }
            best = max(sims.values())
            hosts = [h for h in reserved if sims[h] == best]
            for host in hosts:
                num[host] = num[host] + math.exp(best) * x[b, 1 + p]
                den[host] += math.exp(best)
                count[host] += float(size[b, 1 + p]) / len(hosts)
        outs.append(torch.stack([x[b, 0]] + [num[h] / den[h] for h in reserved]))
        sizes.append(torch.tensor([float(size[b, 0])] + [count[h] for h in reserved]))
    return torch.stack(outs), torch.stack(sizes).unsqueeze(-1).to(x.dtype)


def test_matches_naive_loop() -> None:
    """The vectorised function equals the naive loop on random inputs, for several k and
    temperatures."""
    x, scores, size = _inputs(batch=3, n=20, c=6, seed=7)
    for k, temperature in ((1, 1.0), (5, 0.5), (13, 2.0), (19, 1.0)):
        out, new_size = tps(x, scores, k, size, temperature=temperature)
        ref, ref_size = naive_tps(x, scores, k, size, temperature)
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
