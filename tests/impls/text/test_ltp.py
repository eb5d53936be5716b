"""LTP: threshold pruning, variable lengths in a padded batch, the soft mask and its gradient."""

from __future__ import annotations

from dataclasses import replace

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
            score = _naive_importance(state.attn.double().cpu(), state.mask.cpu(), state.input_len)
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
    """With `average_over="kept"`, per-sample pruning in a padded batch gives every sample its
    logits when run alone (the official average over the padded length does not: see below)."""
    model = tiny_encoder(pre_norm=pre_norm)
    ids, mask = inputs()
    config = replace(ltp.config_for(0.4, 4, seq_len=20), average_over="kept")
    with torch.no_grad(), ltp.patch(model, config):
        batched = model(ids, mask)
        lengths = model.token_lengths()
        for b, n in enumerate(LENGTHS):
            alone = model(ids[b : b + 1, :n], mask[b : b + 1, :n])
            torch.testing.assert_close(batched[b : b + 1], alone, rtol=1e-5, atol=1e-6)
    assert lengths[-1][1] != lengths[0][0], "the configuration pruned nothing"


def test_importance_is_an_average_that_sums_to_one() -> None:
    """Over the sample's own tokens a score row sums to 1; over the padded length (official) it
    sums to n / N: 4 / 6 for the padded sample."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    attn = random_attention(2, 3, mask, seed=1)
    score = ltp.importance(attn, mask)
    torch.testing.assert_close(score.sum(1), torch.ones(2, dtype=torch.float64))
    assert score[1, 4:].abs().max() == 0
    torch.testing.assert_close(score, _naive_importance(attn, mask))
    official = ltp.importance(attn, mask, rows=6)
    torch.testing.assert_close(official.sum(1), torch.tensor([1.0, 4 / 6], dtype=torch.float64))
    torch.testing.assert_close(official, _naive_importance(attn, mask, 6))


def test_official_average_over_the_padded_length_by_hand() -> None:
    """One head, 2 real tokens padded to 4: token 1 receives 0.5 + 0.75 = 1.25 from the real
    rows; officially 1.25 / (1 * 4) = 0.3125, over the sample's own tokens 1.25 / 2 = 0.625.
    A threshold of 0.4 keeps it in the second way only; [CLS] stays either way."""
    attn = torch.tensor([[[[0.5, 0.5, 0, 0], [0.25, 0.75, 0, 0], [0.5, 0.5, 0, 0], [1, 0, 0, 0]]]])
    mask = torch.tensor([[True, True, False, False]])
    x = torch.arange(4.0).view(1, 4, 1)
    state = TextTokenState(x, mask, 0, 4, attn)
    official = ltp.LTPReducer(ltp.Config(thresholds=(0.4,)), (0.4,))
    kept = ltp.LTPReducer(ltp.Config(thresholds=(0.4,), average_over="kept"), (0.4,))
    assert official(state)[1].tolist() == [[True]]
    assert kept(state)[1].tolist() == [[True, True]]
    torch.testing.assert_close(ltp.importance(attn, mask, rows=4)[0, 1], torch.tensor(0.3125))


def test_a_tiny_threshold_is_raised_to_the_official_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Officially a non-zero threshold is at least 1e-5: a score of 5e-6 is pruned at 1e-6."""
    score = torch.tensor([[1.0, 5e-6, 2e-5]])
    monkeypatch.setattr(ltp, "importance", lambda *args: score)
    mask = torch.ones(1, 3, dtype=torch.bool)
    state = TextTokenState(torch.arange(3.0).view(1, 3, 1), mask, 0, 3, torch.zeros(1, 1, 3, 3))
    out, _ = ltp.LTPReducer(ltp.Config(thresholds=(1e-6,)), (1e-6,))(state)
    floorless = ltp.LTPReducer(ltp.Config(thresholds=(1e-6,), min_threshold=0.0), (1e-6,))
    out_floorless, _ = floorless(state)
    assert out.flatten().tolist() == [0.0, 2.0]
    assert out_floorless.flatten().tolist() == [0.0, 1.0, 2.0]


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
    with pytest.raises(AssertionError):
        ltp.Config(average_over="all")
    with (
        pytest.raises(ValueError, match="5 thresholds"),
        ltp.patch(tiny_encoder(), ltp.Config(thresholds=(0.0,) * 5)),
    ):
        pass
    config = ltp.config_for(0.5, depth=4, seq_len=100)
    assert config.thresholds == pytest.approx((0.0025, 0.005, 0.0075, 0.01))


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_importance(
    attn: torch.Tensor, mask: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """s_i = 1 / (H n) * sum_h sum_{real j} A_h[j, i], with loops; n = `rows` (the official
    padded length) or the sample's real token count."""
    B, H, N, _ = attn.shape
    out = torch.zeros(B, N, dtype=attn.dtype)
    for b in range(B):
        n = int(mask[b].sum()) if rows is None else rows
        for i in range(N):
            total = 0.0
            for h in range(H):
                for j in range(N):
                    if mask[b, j]:
                        total += float(attn[b, h, j, i])
            out[b, i] = total / (H * n)
    return out


@pytest.mark.parametrize(
    ("threshold", "average_over"),
    [(0.05, "kept"), (0.09, "kept"), (0.2, "kept"), (0.04, "input"), (0.07, "input")],
)
def test_matches_naive_loop(threshold: float, average_over: str) -> None:
    """Per sample: keep [CLS] and the real tokens with s_i >= threshold, in order, then pad."""
    generator = torch.Generator().manual_seed(int(threshold * 100))
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 10 + [0] * 2], dtype=torch.bool)
    x = torch.randn(3, 12, 5, generator=generator, dtype=torch.float64)
    attn = random_attention(3, 2, mask, seed=int(threshold * 100))
    config = ltp.Config(thresholds=(threshold,), average_over=average_over)
    reducer = ltp.LTPReducer(config, (threshold,))
    out, out_mask = reducer(TextTokenState(x, mask, 0, 12, attn))
    score = _naive_importance(attn, mask, 12 if average_over == "input" else None)
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
