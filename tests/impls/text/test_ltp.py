"""LTP: threshold pruning, variable lengths in a padded batch, the soft mask and its gradient."""

from __future__ import annotations

import pytest
import torch

from reference_impls.text import ltp
from reference_impls.text.encoder import TINY_ENCODER, TextTokenState, attach

from .common import LENGTHS, device_param, inputs, random_attention, tiny_encoder


def test_exact_counts_for_given_thresholds() -> None:
    """A token survives iff its score >= the threshold ([CLS] always): counts per sample."""
    score = torch.tensor([[0.0, 0.30, 0.10, 0.25, 0.35], [0.9, 0.05, 0.05, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    x = torch.arange(10, dtype=torch.float32).reshape(2, 5, 1)
    out, out_mask = ltp.prune(x, mask, score, 0.25)
    assert out_mask.sum(1).tolist() == [4, 1]  # [CLS] + 0.30, 0.25, 0.35 | [CLS] only
    assert (
        out[0, :, 0].tolist() == [0.0, 1.0, 3.0, 4.0] and out[1, :, 0].tolist() == [5.0] + [0] * 3
    )
    assert ltp.keep_mask(score, mask, 0.05)[1].tolist() == [True, True, True, False, False]
    assert ltp.keep_mask(score, mask, 1.0).sum().item() == 2  # only the two [CLS]


@device_param
def test_counts_in_the_model_follow_the_importance(device: str) -> None:
    """In the model, each sample keeps exactly the tokens whose importance (recomputed from the
    block's attention) reaches the block's threshold; the batch is cut to the longest."""
    model = tiny_encoder(device=device)
    ids, mask = inputs(device=device)
    config = ltp.Config(thresholds=(0.0, 0.03, 0.0, 0.06))
    reducer = ltp.LTPReducer(config, config.thresholds)
    expected: list[list[int]] = []

    def spy(state: TextTokenState) -> tuple[torch.Tensor, torch.Tensor]:
        threshold = config.thresholds[state.index]
        if threshold > 0:
            score = _naive_importance(state.attn.double().cpu(), state.mask.cpu())
            real = score[state.mask.cpu()]
            assert (real - threshold).abs().min() > 1e-5, "a score too close to call"
            expected.append([1 + int((s[1:] >= threshold).sum()) for s in score])
        return reducer(state)

    with torch.no_grad(), attach(model, mid=dict.fromkeys(range(4), spy)):
        logits = model(ids, mask)
    assert logits.shape == (3, TINY_ENCODER.num_classes)
    lengths = model.token_lengths()
    assert [list(lengths[1][1]), list(lengths[3][1])] == expected
    assert model.token_counts()[1][1] == max(expected[0]) and expected[0][0] < LENGTHS[0]
    assert expected[1] != [n for n in lengths[3][0]], "block 3 pruned nothing"
    assert lengths[0] == (tuple(LENGTHS), tuple(LENGTHS))  # threshold 0 prunes nothing


def test_identity_with_thresholds_zero() -> None:
    model = tiny_encoder()
    ids, mask = inputs()
    with torch.no_grad():
        reference = model(ids, mask)
        assert ltp.config_for(1.0, 4) == ltp.Config()
        with ltp.patch(model, ltp.Config(thresholds=(0.0,) * 4)):
            same = model(ids, mask)
            assert model.token_counts() == [(32, 32)] * 4
    torch.testing.assert_close(same, reference, rtol=0, atol=0)
    score = ltp.importance(random_attention(3, 2, mask, seed=0), mask)
    assert torch.equal(ltp.keep_mask(score, mask, 0.0), mask)  # the pure rule agrees


@pytest.mark.parametrize("pre_norm", [False, True])
def test_each_sample_pruned_as_if_alone(pre_norm: bool) -> None:
    """Per-sample pruning in a padded batch gives every sample its logits when run alone."""
    model = tiny_encoder(pre_norm=pre_norm)
    ids, mask = inputs()
    config = ltp.config_for(0.4, 4, seq_len=20)
    with torch.no_grad(), ltp.patch(model, config):
        batched = model(ids, mask)
        lengths = model.token_lengths()
        for b, n in enumerate(LENGTHS):
            alone = model(ids[b : b + 1, :n], mask[b : b + 1, :n])
            torch.testing.assert_close(batched[b : b + 1], alone, rtol=1e-5, atol=1e-6)
    assert lengths[-1][1] != lengths[0][0], "the configuration pruned nothing"


def test_importance_is_an_average_that_sums_to_one() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    attn = random_attention(2, 3, mask, seed=1)
    score = ltp.importance(attn, mask)
    torch.testing.assert_close(score.sum(1), torch.ones(2, dtype=torch.float64))
    assert score[1, 4:].abs().max() == 0
    torch.testing.assert_close(score, _naive_importance(attn, mask))


# --- the soft mask ----------------------------------------------------------------------------


def test_soft_mask_gradient_reaches_the_threshold() -> None:
    """d/dtheta sigmoid((s - theta) / T) = -sigma (1 - sigma) / T, by autograd; [CLS] at 1."""
    score = torch.tensor([[0.5, 0.010, 0.020, 0.030]], dtype=torch.float64)
    theta = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    m = ltp.soft_mask(score, theta, temperature=0.01)
    assert m[0, 0] == 1.0
    m.sum().backward()
    sigma = torch.sigmoid((score[0, 1:] - 0.02) / 0.01)
    assert theta.grad is not None
    torch.testing.assert_close(theta.grad, -(sigma * (1 - sigma) / 0.01).sum())


def test_soft_mask_tends_to_the_hard_rule() -> None:
    mask = torch.ones(2, 8, dtype=torch.bool)
    score = ltp.importance(random_attention(2, 2, mask, seed=4), mask)
    soft = ltp.soft_mask(score, 0.12, temperature=1e-9)
    assert torch.equal(soft > 0.5, ltp.keep_mask(score, mask, 0.12))


def test_soft_mode_trains_the_thresholds_through_the_model() -> None:
    """Soft mode keeps every token, scales each block's output, and lets a loss move the
    thresholds; hard mode with the same thresholds drops tokens."""
    model = tiny_encoder()
    ids, mask = inputs()
    thresholds = torch.full((4,), 0.03, requires_grad=True)
    config = ltp.Config(soft=True, temperature=0.01)
    with ltp.patch(model, config, thresholds=thresholds):
        logits = model(ids, mask)
        assert model.token_counts() == [(32, 32)] * 4
    logits.square().sum().backward()
    assert thresholds.grad is not None and torch.isfinite(thresholds.grad).all()
    assert (thresholds.grad[:3] != 0).all()
    # after the last block only [CLS] reaches the head, and [CLS] is never masked
    assert thresholds.grad[3] == 0
    with torch.no_grad(), ltp.patch(model, ltp.Config(), thresholds=thresholds.detach()):
        model(ids, mask)
        assert model.token_counts()[-1][1] < 32


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        ltp.Config(thresholds=(-0.1,))
    with pytest.raises(AssertionError):
        ltp.Config(temperature=0.0)
    with (
        pytest.raises(ValueError, match="5 thresholds"),
        ltp.patch(tiny_encoder(), ltp.Config(thresholds=(0.0,) * 5)),
    ):
        pass
    config = ltp.config_for(0.5, depth=4, seq_len=100)
    assert config.thresholds == pytest.approx((0.0025, 0.005, 0.0075, 0.01))


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_importance(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s_i = 1 / (H n) * sum_h sum_{real j} A_h[j, i], with loops."""
    B, H, N, _ = attn.shape
    out = torch.zeros(B, N, dtype=attn.dtype)
    for b in range(B):
        n = int(mask[b].sum())
        for i in range(N):
            total = 0.0
            for h in range(H):
                for j in range(N):
                    if mask[b, j]:
                        total += float(attn[b, h, j, i])
            out[b, i] = total / (H * n)
    return out


@pytest.mark.parametrize("threshold", [0.05, 0.09, 0.2])
def test_matches_naive_loop(threshold: float) -> None:
    """Per sample: keep [CLS] and the real tokens with s_i >= threshold, in order, then pad."""
    generator = torch.Generator().manual_seed(int(threshold * 100))
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 10 + [0] * 2], dtype=torch.bool)
    x = torch.randn(3, 12, 5, generator=generator, dtype=torch.float64)
    attn = random_attention(3, 2, mask, seed=int(threshold * 100))
    reducer = ltp.LTPReducer(ltp.Config(thresholds=(threshold,)), (threshold,))
    out, out_mask = reducer(TextTokenState(x, mask, 0, 12, attn))
    score = _naive_importance(attn, mask)
    kept = [
        [i for i in range(12) if i == 0 or (mask[b, i] and score[b, i] >= threshold)]
        for b in range(3)
    ]
    width = max(len(k) for k in kept)
    assert out.shape == (3, width, 5) and 1 < width < 12
    for b in range(3):
        n = len(kept[b])
        torch.testing.assert_close(out[b, :n], x[b, kept[b]], rtol=0, atol=0)
        assert out[b, n:].abs().max() == 0 if n < width else True
        assert out_mask[b].tolist() == [True] * n + [False] * (width - n)
