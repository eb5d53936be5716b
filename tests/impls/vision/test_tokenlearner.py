"""TokenLearner: counts, pooling invariants, training and a naive-loop equivalence."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from reference_impls.vision import tokenlearner
from reference_impls.vision.tokenlearner import Config, TokenLearner, make_learner, patch
from reference_impls.vision.vit import TokenState

from ..common import TINY, device_param, images, tiny_vit

HALF = Config(keep_rate=0.25, blocks=(2,))  # 16 learned tokens before block 3 of TINY


def toy_task(n: int = 8, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of noise images told apart by a brightness offset."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randn(n, 3, TINY.img_size, TINY.img_size, generator=g)
    return x + (labels.float() * 2 - 1)[:, None, None, None] * 0.5, labels


@device_param
@pytest.mark.parametrize("form", tokenlearner.ATTENTION_FORMS)
def test_counts_and_shape(device: str, form: str) -> None:
    """S = round(0.25 * 64) = 16 tokens (plus CLS) from the chosen block on."""
    model, x = tiny_vit(device=device), images(device=device)
    with torch.no_grad(), patch(model, replace(HALF, attention=form)):
        out = model(x)
        assert model.token_counts() == [(65, 65), (65, 65), (17, 17), (17, 17)]
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()


def test_rate_one_is_identity() -> None:
    """config_for(1.0) attaches nothing: the output equals the unpatched model's."""
    model, x = tiny_vit(), images()
    config = tokenlearner.config_for(1.0, TINY.depth)
    assert config.blocks == ()
    with torch.no_grad():
        reference = model(x)
        with patch(model, config):
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
    assert tokenlearner.config_for(0.5, 12) == Config(keep_rate=0.5, blocks=(6,))


def test_cls_is_kept_unchanged() -> None:
    """Row 0 of the output is the input CLS token, bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(3, 65, TINY.width)
    learner = TokenLearner(TINY.width, 16, HALF)
    with torch.no_grad():
        out, size = learner(TokenState(x, None, index=2))
    assert out.shape == (3, 17, TINY.width) and size is None
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)


def test_softmax_tokens_are_convex_combinations() -> None:
    """Softmax maps sum to 1 over space: identical patch tokens give that token back."""
    torch.manual_seed(0)
    v = torch.randn(TINY.width)
    x = torch.cat([torch.randn(2, 1, TINY.width), v.expand(2, 64, -1)], dim=1)
    learner = TokenLearner(TINY.width, 16, replace(HALF, attention="softmax"))
    with torch.no_grad():
        out, _ = learner(TokenState(x, None, index=2))
        weights = learner.weights(torch.randn(2, 65, TINY.width))
    torch.testing.assert_close(out[:, 1:], v.expand(2, 16, -1))
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 16))
    assert (weights >= 0).all()


def test_default_is_the_official_version_11() -> None:
    """Softmax maps from LayerNorm(eps 1e-6), Dense, tanh-GELU, Dense, as in scenic's v1.1."""
    learner = TokenLearner(TINY.width, 4, Config())
    assert Config().attention == "softmax" and Config().hidden == 64
    norm, _, act, _ = learner.maps
    assert isinstance(norm, torch.nn.LayerNorm) and norm.eps == 1e-6
    assert isinstance(act, torch.nn.GELU) and act.approximate == "tanh"


@pytest.mark.parametrize(("use_sum_pooling", "scale"), [(True, 0.5), (False, 0.5 / 16)])
def test_version_1_pools_by_sum_or_mean(use_sum_pooling: bool, scale: float) -> None:
    """Zero logits gate every patch by sigmoid(0) = 1/2: learned token = sum (or mean) / 2."""
    config = replace(HALF, attention="sigmoid", use_sum_pooling=use_sum_pooling)
    learner = TokenLearner(TINY.width, 3, config)
    for conv in learner.maps.convs:
        torch.nn.init.zeros_(conv.weight)
    x = torch.randn(2, 17, TINY.width)  # a 4x4 grid
    with torch.no_grad():
        out, _ = learner(TokenState(x, None, index=0))
    expected = (scale * x[:, 1:].sum(dim=1, keepdim=True)).expand(-1, 3, -1)
    torch.testing.assert_close(out[:, 1:], expected)


def test_version_1_maps_see_a_9x9_neighbourhood() -> None:
    """Four 3x3 convolutions: a change at grid cell (0, 0) reaches logits up to 4 cells away."""
    torch.manual_seed(0)
    learner = TokenLearner(TINY.width, 3, replace(HALF, attention="sigmoid"))
    x = torch.randn(1, 81, TINY.width)  # a 9x9 grid
    y = x.clone()
    y[0, 0] = torch.randn(TINY.width)  # not a constant shift, which LayerNorm removes
    with torch.no_grad():
        changed = (learner.maps(x) - learner.maps(y)).abs().amax(dim=-1).reshape(9, 9) > 0
    rows, cols = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    assert torch.equal(changed, torch.maximum(rows, cols) <= 4)
    with pytest.raises(AssertionError, match="square patch grid"):
        learner.maps(x[:, :12])


def test_size_restarts_at_one() -> None:
    """With a size vector, the learned tokens and CLS get size 1."""
    learner = TokenLearner(TINY.width, 16, HALF)
    x, size = torch.randn(2, 65, TINY.width), torch.rand(2, 65, 1) + 1
    with torch.no_grad():
        _, new = learner(TokenState(x, size, index=2))
    assert new is not None and new.shape == (2, 17, 1) and new.eq(1).all()


def test_patch_leaves_no_trace() -> None:
    """The model's modules are the same before, during and after patching."""
    model = tiny_vit()
    names = [name for name, _ in model.named_modules()]
    with patch(model, HALF):
        assert [name for name, _ in model.named_modules()] == names
    assert all(b.pre_reducer is None for b in model.blocks)


def test_training_reduces_the_loss() -> None:
    """25 Adam steps on a seeded 2-class toy task: the loss falls by more than half."""
    torch.manual_seed(0)
    model = tiny_vit(config=replace(TINY, num_classes=2)).train()
    learner = make_learner(model, HALF)
    optimizer = torch.optim.Adam([*model.parameters(), *learner.parameters()], lr=1e-3)
    x, labels = toy_task()
    losses = [tokenlearner.train_step(model, learner, optimizer, x, labels) for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert learner.maps[-1].weight.grad is not None and learner.maps[-1].weight.grad.abs().sum() > 0


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        Config(keep_rate=0.0)
    with pytest.raises(AssertionError):
        Config(blocks=(2, 5))
    with pytest.raises(AssertionError):
        Config(attention="relu")
    assert Config(keep_rate=8 / 196).num_tokens(196) == 8


# --- equivalence with a naive loop ------------------------------------------------------------


def naive_token_learner(learner: TokenLearner, x: torch.Tensor) -> torch.Tensor:
    """Each learned token summed over patch positions, one image, token and position at a time."""
    B, N, C = x.shape
    P, S = N - 1, learner.num_tokens
    out = torch.zeros(B, 1 + S, C)
    for b in range(B):
        out[b, 0] = x[b, 0]
        if learner.config.attention == "softmax":  # a per-token MLP
            logits = [learner.maps(x[b, 1 + p]) for p in range(P)]  # S logits per position
        else:  # convolutions over the grid: all positions at once
            logits = list(learner.maps(x[b : b + 1, 1:])[0])
        for s in range(S):
            if learner.config.attention == "softmax":
                exps = [torch.exp(logits[p][s]) for p in range(P)]
                total = sum(exps)
                weights = [e / total for e in exps]
            elif learner.config.use_sum_pooling:
                weights = [torch.sigmoid(logits[p][s]) for p in range(P)]
            else:
                weights = [torch.sigmoid(logits[p][s]) / P for p in range(P)]
            for p in range(P):
                out[b, 1 + s] += weights[p] * x[b, 1 + p]
    return out


@pytest.mark.parametrize(
    ("form", "use_sum_pooling"), [("softmax", True), ("sigmoid", True), ("sigmoid", False)]
)
def test_matches_naive_loop(form: str, use_sum_pooling: bool) -> None:
    """Vectorised pooling equals the naive loop for both attention forms and both poolings."""
    torch.manual_seed(0)
    config = replace(HALF, attention=form, use_sum_pooling=use_sum_pooling)
    learner = TokenLearner(TINY.width, 5, config)
    x = torch.randn(2, 17, TINY.width)
    with torch.no_grad():
        out, _ = learner(TokenState(x, None, index=2))
        naive = naive_token_learner(learner, x)
    torch.testing.assert_close(out, naive)
