"""A-ViT: exact halting on constructed inputs, the ponder loss, training, a naive-loop check."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from reference_impls.vision import avit
from reference_impls.vision.avit import AViT, Config, Halting, patch
from reference_impls.vision.vit import TokenState

from ..common import TINY, device_param, images, tiny_vit

EVERY_BLOCK = (1, 2, 3)  # halting before each block of TINY after the first


def constant(h: float, **changes: object) -> Config:
    """Every token gets halting score `h` at every block (gamma 0, beta = logit h)."""
    beta = math.log(h / (1 - h))
    return replace(Config(gamma=0.0, beta=beta, blocks=EVERY_BLOCK), **changes)  # type: ignore[arg-type]


def toy_task(n: int = 8, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of noise images told apart by a brightness offset."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randn(n, 3, TINY.img_size, TINY.img_size, generator=g)
    return x + (labels.float() * 2 - 1)[:, None, None, None] * 0.5, labels


def tokens_with_first_channel(first: list[list[float]], width: int = 6) -> torch.Tensor:
    """Tokens `(B, 1 + P, width)`: CLS then patches whose channel 0 is `first[b][k]`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(first), 1 + len(first[0]), width, generator=g)
    x[:, 1:, 0] = torch.tensor(first)
    return x


# --- invariants ------------------------------------------------------------------------------


def test_constructed_input_exact_counts_and_padding() -> None:
    """Each image keeps its running tokens; the batch pads with size-0 halted ones; CLS stays."""
    up, down = 20.0, -20.0  # halting scores ~1 and ~0 with gamma 1, beta 0
    logit = math.log(0.3 / 0.7)  # score 0.3
    x = tokens_with_first_channel([[up, 0.0, logit, down], [up, up, 0.0, down]])
    reducer = AViT(depth=4, config=Config(gamma=1.0, beta=0.0, blocks=EVERY_BLOCK)).eval()
    with torch.no_grad():
        out, size = reducer(TokenState(x, None, index=1))
    # image 0: token 0 halts, 3 run; image 1: tokens 0 and 1 halt, 2 run -> 1 + 3 tokens.
    assert out.shape == (2, 4, 6)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[0, 1:], x[0, 2:], rtol=0, atol=0)
    torch.testing.assert_close(out[1, 1:], x[1, [1, 3, 4]], rtol=0, atol=0)  # token 0 pads
    assert size is not None
    assert size[..., 0].tolist() == [[1, 1, 1, 1], [1, 0, 1, 1]]
    assert reducer.positions is not None and reducer.positions.tolist() == [[1, 2, 3], [0, 2, 3]]
    # Second check, scores 0.5: token 1 of image 0 and token 2 of image 1 reach 1.0 and halt;
    # image 0 runs 2 tokens, image 1 runs token 3 and pads with its earliest halted one (0).
    y = out.clone()
    y[:, 1:, 0] = 0.0
    with torch.no_grad():
        out2, size2 = reducer(TokenState(y, size, index=2))
    assert out2.shape == (2, 3, 6)
    assert reducer.positions.tolist() == [[2, 3], [0, 3]]
    assert size2 is not None and size2[..., 0].tolist() == [[1, 1, 1], [1, 0, 1]]


@device_param
def test_model_counts_with_constant_halting(device: str) -> None:
    """Scores 0.5 everywhere: every patch halts at the second check, leaving CLS alone."""
    model, x = tiny_vit(device=device), images(device=device)
    with torch.no_grad(), patch(model, constant(0.5)):
        out = model(x)
        assert model.token_counts() == [(65, 65), (65, 65), (1, 1), (1, 1)]
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()


def test_nothing_halts_is_identity() -> None:
    """Scores ~0: no token halts and the output equals the unpatched model's exactly."""
    model, x = tiny_vit(), images()
    with torch.no_grad():
        reference = model(x)
        with patch(model, constant(1e-9)):
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
            assert model.token_counts() == [(65, 65)] * 4
    assert avit.config_for(1.0, 12).blocks == ()


def test_training_masks_instead_of_removing() -> None:
    """Train mode keeps every token and gives halted ones size 0 from then on."""
    model, x = tiny_vit(), images()
    reducer = AViT(4, constant(0.5)).train()
    with torch.no_grad(), patch(model, constant(0.5), reducer):
        model(x)
        assert model.token_counts() == [(65, 65)] * 4
    assert reducer.halting is not None and not reducer.halting.running.any()
    sizes = []
    state = TokenState(torch.randn(2, 65, TINY.width), None, index=1)
    reducer = AViT(4, constant(0.5)).train()
    for index in EVERY_BLOCK:
        _, size = reducer(TokenState(state.x, sizes[-1] if sizes else None, index))
        sizes.append(size)
    assert [s[:, 1:].sum().item() for s in sizes] == [128, 0, 0]
    assert all(s[:, 0].eq(1).all() for s in sizes)


# --- the training terms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "ponder"),
    [
        (0.3, 1 + 1 + 1 + 1 + (1 - 0.9)),  # never halts: 4 blocks, remainder 0.1
        (0.5, 1 + 1 + (1 - 0.5)),  # halts at the 2nd check: 2 blocks, remainder 0.5
        (0.995, 1 + 1.0),  # halts at once: 1 block, remainder 1
    ],
)
def test_ponder_loss_by_hand(h: float, ponder: float) -> None:
    """Ponder = blocks run + remainder, the last block forcing a halt."""
    model, x = tiny_vit(), images()
    reducer = AViT(4, constant(h)).train()
    with torch.no_grad(), patch(model, constant(h), reducer):
        model(x)
    torch.testing.assert_close(reducer.ponder_loss(), torch.tensor(ponder))


def test_halting_step_mixed_tokens_by_hand() -> None:
    """Two images, tokens halting at checks 1, 2 and never; per-token ponder as officially.

    Official A-ViT (rho_token): each block a running token runs adds 1, halting adds the
    remainder; the last block forces a halt. Depth 4, checks after blocks 0, 1, 2, eps 0.01."""
    scores = [
        torch.tensor([[0.995, 0.5, 0.2], [0.2, 0.995, 0.5]]),
        torch.tensor([[0.9, 0.5, 0.2], [0.2, 0.9, 0.5]]),
        torch.tensor([[0.9, 0.9, 0.2], [0.2, 0.9, 0.9]]),
    ]
    state = Halting.start(torch.zeros(2, 4, 1))
    running = []
    for h in scores:
        state = avit.halting_step(state, h, 1, 0.01)
        running.append(state.running.tolist())
    assert running == [
        [[False, True, True], [True, False, True]],
        [[False, False, True], [True, False, False]],
        [[False, False, True], [True, False, False]],
    ]
    last = state.running.float() * (1 + state.remainder)  # the forced halt in the last block
    expected = torch.tensor([[1 + 1.0, 2 + 0.5, 4 + 0.4], [4 + 0.4, 1 + 1.0, 2 + 0.5]])
    torch.testing.assert_close(state.ponder + last, expected)


def test_prior_loss_vanishes_at_the_target() -> None:
    """KL is 0 when the per-block mean scores follow the target Gaussian, positive otherwise."""
    config = replace(constant(0.5), target_depth=1.0)
    reducer = AViT(4, config)
    target = avit.gaussian_prior([0, 1, 2], 1.0, torch.device("cpu"))
    reducer.mean_scores = list(target * 0.3)
    torch.testing.assert_close(reducer.prior_loss(), torch.tensor(0.0))
    reducer.mean_scores = [torch.tensor(0.1), torch.tensor(0.1), torch.tensor(0.8)]
    assert reducer.prior_loss() > 0.1


def test_ponder_gradient_reaches_the_backbone() -> None:
    """The ponder loss is differentiable in the embedding's first channel: finite, non-zero."""
    model = tiny_vit().train()
    config = avit.config_for(0.5, TINY.depth)
    reducer = AViT(4, config).train()
    with patch(model, config, reducer):
        model(images(batch=4))
    reducer.ponder_loss().backward()
    grad = model.patch_embed.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad[0].abs().sum() > 0


def test_training_reduces_the_loss() -> None:
    """25 Adam steps on a seeded 2-class toy task: the total loss falls by more than half."""
    torch.manual_seed(0)
    model = tiny_vit(config=replace(TINY, num_classes=2)).train()
    config = replace(avit.config_for(0.5, TINY.depth), ponder_weight=0.01, prior_weight=0.01)
    reducer = AViT(4, config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, labels = toy_task()
    losses = [avit.train_step(model, reducer, optimizer, x, labels) for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_ponder_training_halts_tokens_earlier() -> None:
    """Minimising the ponder loss alone makes tokens halt sooner: fewer tokens at inference."""
    torch.manual_seed(0)
    model, x = tiny_vit().train(), images(batch=4)
    config = avit.config_for(0.5, TINY.depth)
    reducer = AViT(4, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def last_count() -> int:
        reducer.eval()
        with torch.no_grad(), patch(model, config, reducer):
            model(x)
        reducer.train()
        return model.token_counts()[-1][0]

    before = last_count()
    ponders = []
    for _ in range(15):
        optimizer.zero_grad()
        with patch(model, config, reducer):
            model(x)
        loss = reducer.ponder_loss()
        loss.backward()
        optimizer.step()
        ponders.append(loss.item())
    assert ponders[-1] < ponders[0] - 0.5, ponders
    assert last_count() < before


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        Config(eps=0.0)
    with pytest.raises(AssertionError):
        Config(blocks=(0, 1))
    config = avit.config_for(0.5, 12)
    assert config.blocks == tuple(range(1, 12))
    assert 1 / (1 + math.exp(-config.beta)) == pytest.approx(1 / 6)  # a neutral token: 6 checks


# --- equivalence with a naive loop ------------------------------------------------------------


def naive_halting(
    scores: list[torch.Tensor], gaps: list[int], eps: float
) -> tuple[list[list[float]], ...]:
    """A-ViT's per-token accumulators, one image, token and check at a time."""
    B, P = scores[0].shape
    cum = [[0.0] * P for _ in range(B)]
    rem = [[1.0] * P for _ in range(B)]
    ponder = [[0.0] * P for _ in range(B)]
    running = [[True] * P for _ in range(B)]
    for h, gap in zip(scores, gaps, strict=True):
        for b in range(B):
            for k in range(P):
                if not running[b][k]:
                    continue
                ponder[b][k] += gap
                cum[b][k] += h[b, k].item()
                if cum[b][k] >= 1 - eps:
                    ponder[b][k] += rem[b][k]
                    running[b][k] = False
                else:
                    rem[b][k] -= h[b, k].item()
    return cum, rem, ponder, running


def naive_drop(
    x: torch.Tensor, positions: list[list[int]], running: list[list[bool]]
) -> tuple[torch.Tensor, list[list[int]], list[list[float]]]:
    """Each image's running tokens in order, padded with its earliest halted ones."""
    alive = [[running[b][p] for p in positions[b]] for b in range(len(positions))]
    k = max(sum(a) for a in alive)
    rows, kept, sizes = [], [], []
    for b, flags in enumerate(alive):
        picks = [i for i, a in enumerate(flags) if a]
        picks += [i for i, a in enumerate(flags) if not a][: k - len(picks)]
        picks.sort()
        rows.append(torch.stack([x[b, 0]] + [x[b, 1 + i] for i in picks]))
        kept.append([positions[b][i] for i in picks])
        sizes.append([1.0] + [1.0 if flags[i] else 0.0 for i in picks])
    return torch.stack(rows), kept, sizes


def test_matches_naive_loop() -> None:
    """Vectorised accumulators and padding equal the naive loops on random scores."""
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(3, 10, generator=g) * 0.6 for _ in range(4)]
    gaps = [1, 2, 1, 3]
    state = Halting.start(torch.zeros(3, 11, 1))
    for h, gap in zip(scores, gaps, strict=True):
        state = avit.halting_step(state, h, gap, 0.01)
    cum, rem, ponder, running = naive_halting(scores, gaps, 0.01)
    torch.testing.assert_close(state.cumulative, torch.tensor(cum))
    torch.testing.assert_close(state.remainder, torch.tensor(rem))
    torch.testing.assert_close(state.ponder, torch.tensor(ponder))
    assert state.running.tolist() == running

    x = torch.randn(3, 11, 4, generator=g)
    positions = torch.randperm(10, generator=g)[None].repeat(3, 1)
    out, size, kept = avit.drop_halted(x, None, positions, state.running)
    naive_out, naive_kept, naive_sizes = naive_drop(x, positions.tolist(), running)
    torch.testing.assert_close(out, naive_out, rtol=0, atol=0)
    assert kept.tolist() == naive_kept and size[..., 0].tolist() == naive_sizes
