"""PoWER-BERT: invariants, padding, and equivalence with a naive loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.text import power_bert
from reference_impls.text.encoder import TINY_ENCODER, TextTokenState, attach

from .common import LENGTHS, device_param, inputs, random_attention, tiny_encoder


@device_param
def test_exact_counts_per_block(device: str) -> None:
    """Block j leaves round(r_j * N) word vectors; its MLP runs on them only."""
    model = tiny_encoder(device=device)
    ids, mask = inputs(device=device)
    config = power_bert.Config(retention=(0.75, 0.5, 0.5, 0.25))
    with torch.no_grad(), power_bert.patch(model, config):
        logits = model(ids, mask)
        tokens, out_mask = model.forward_tokens(ids, mask)
    assert logits.shape == (3, TINY_ENCODER.num_classes)
    assert model.token_counts() == [(32, 24), (24, 16), (16, 16), (16, 8)]
    assert tokens.shape == (3, 8, TINY_ENCODER.width)
    # a sample shorter than l_j keeps all its real tokens, padded; longer ones are cut to l_j
    assert model.token_lengths()[0] == ((32, 20, 9), (24, 20, 9))
    assert model.token_lengths()[1][1] == (16, 16, 9)
    assert out_mask.sum(1).tolist() == [8, 8, 8]


def test_identity_at_keep_one() -> None:
    model = tiny_encoder()
    ids, mask = inputs()
    with torch.no_grad():
        reference = model(ids, mask)
        assert power_bert.config_for(1.0, 4) == power_bert.Config()
        with power_bert.patch(model, power_bert.Config(retention=(1.0,) * 4)):
            same = model(ids, mask)
            assert model.token_counts() == [(32, 32)] * 4
    torch.testing.assert_close(same, reference, rtol=0, atol=0)


def test_cls_kept_order_kept_rows_unchanged() -> None:
    """[CLS] first, the top-(l-1) others by significance in their original order, rows copied."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    score = torch.rand(2, 9)
    score[:, 0] = -1.0  # [CLS] is kept even when it scores lowest
    out, out_mask = power_bert.eliminate(x, mask, score, keep=4)
    assert out.shape == (2, 4, 4) and out_mask.all()
    for b in range(2):
        top = score[b, 1:].topk(3).indices.sort().values + 1
        torch.testing.assert_close(out[b], x[b, [0, *top.tolist()]], rtol=0, atol=0)


def test_padding_ranks_last_and_padding_queries_count_as_officially() -> None:
    """Official Hard_Extract: all query rows count, padding ones too, and a token's attention to
    itself does not; `padding_queries=False` / `exclude_self=False` give the other variants."""
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    attn = random_attention(1, 2, mask, seed=3)
    diagonal = attn[0].diagonal(dim1=-2, dim2=-1).sum(dim=0)[:3]  # (3,) self-attention
    score = power_bert.significance(attn, mask)
    assert torch.isinf(score[0, 3:]).all() and (score[0, 3:] < 0).all()
    torch.testing.assert_close(score[0, :3], attn[0, :, :, :3].sum(dim=(0, 1)) - diagonal)
    real_rows = power_bert.significance(attn, mask, padding_queries=False)
    torch.testing.assert_close(real_rows[0, :3], attn[0, :, :3, :3].sum(dim=(0, 1)) - diagonal)
    with_self = power_bert.significance(attn, mask, exclude_self=False, padding_queries=False)
    torch.testing.assert_close(with_self[0, :3], attn[0, :, :3, :3].sum(dim=(0, 1)))
    _, out_mask = power_bert.eliminate(torch.randn(1, 5, 2), mask, score, keep=4)
    assert out_mask.tolist() == [[True, True, True, False]]


def test_significance_by_hand() -> None:
    """One head, three tokens: received attention column sums minus the diagonal."""
    attn = torch.tensor([[[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    score = power_bert.significance(attn, mask)
    torch.testing.assert_close(score, torch.tensor([[0.5, 0.7, 0.5]]))  # (1.0-.5, 1.3-.6, .7-.2)
    x = torch.arange(3.0).view(1, 3, 1)
    out, _ = power_bert.eliminate(x, mask, score, keep=2)
    assert out.flatten().tolist() == [0.0, 1.0]  # [CLS] and token 1 (0.7 beats 0.5)
    out, _ = power_bert.eliminate(x, mask, power_bert.significance(attn, mask, False), keep=2)
    assert out.flatten().tolist() == [0.0, 1.0]  # with self: 1.3 beats 0.7


def test_config_for_schedule() -> None:
    config = power_bert.config_for(0.25, depth=4)
    assert len(config.retention) == 4 and abs(config.retention[-1] - 0.25) < 1e-12
    assert list(config.retention) == sorted(config.retention, reverse=True)


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        power_bert.Config(retention=(0.5, 0.8))  # grows
    with pytest.raises(AssertionError):
        power_bert.Config(retention=(0.0,))
    with (
        pytest.raises(ValueError, match="retention has 5 entries"),
        power_bert.patch(tiny_encoder(), power_bert.Config(retention=(1.0,) * 5)),
    ):
        pass


# --- equivalence with a naive loop ------------------------------------------------------------


def _naive_power_bert(
    x: torch.Tensor,
    mask: torch.Tensor,
    attn: torch.Tensor,
    keep: int,
    exclude_self: bool,
    padding_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: significance of w = sum over heads h and queries w' (all, or only the real
    ones) of A_h[w', w]; keep [CLS] and the keep-1 most significant others (real before
    padding), in order."""
    B, H, N, _ = attn.shape
    rows, masks = [], []
    for b in range(B):
        sig = {}
        for w in range(1, N):
            total = 0.0
            for h in range(H):
                for q in range(N):
                    if (padding_queries or mask[b, q]) and not (exclude_self and q == w):
                        total += float(attn[b, h, q, w])
            sig[w] = (1 if mask[b, w] else 0, total)  # real tokens rank before padding
        ranked = sorted(sig, key=lambda w: sig[w], reverse=True)
        kept = [0, *sorted(ranked[: keep - 1])]
        rows.append(x[b, kept])
        masks.append(mask[b, kept])
    return torch.stack(rows), torch.stack(masks)


@pytest.mark.parametrize(
    ("keep", "exclude_self", "padding_queries"),
    [(3, False, False), (6, True, True), (11, False, True), (5, True, False)],
)
def test_matches_naive_loop(keep: int, exclude_self: bool, padding_queries: bool) -> None:
    generator = torch.Generator().manual_seed(keep)
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 10 + [0] * 2], dtype=torch.bool)
    x = torch.randn(3, 12, 5, generator=generator, dtype=torch.float64)
    attn = random_attention(3, 2, mask, seed=keep)
    reducer = power_bert.PowerBertReducer(
        power_bert.Config(
            retention=(keep / 12,), exclude_self=exclude_self, padding_queries=padding_queries
        )
    )
    out, out_mask = reducer(TextTokenState(x, mask, 0, 12, attn))
    expected, expected_mask = _naive_power_bert(x, mask, attn, keep, exclude_self, padding_queries)
    assert out.shape == (3, keep, 5)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(out_mask, expected_mask)


def test_model_eliminates_by_its_own_attention() -> None:
    """In the model, the kept rows are exactly those the naive rule picks from the block's
    attention (a spy sees the block's state)."""
    model = tiny_encoder(seed=2)
    ids, mask = inputs(seed=5)
    config = power_bert.Config(retention=(0.5,))
    reducer = power_bert.PowerBertReducer(config)
    seen: list[tuple[TextTokenState, tuple[torch.Tensor, torch.Tensor]]] = []

    def spy(state: TextTokenState) -> tuple[torch.Tensor, torch.Tensor]:
        result = reducer(state)
        seen.append((state, result))
        return result

    with torch.no_grad(), attach(model, mid={0: spy}):
        model(ids, mask)
    state, (out, out_mask) = seen[0]
    expected, expected_mask = _naive_power_bert(state.x, state.mask, state.attn, 16, True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(out_mask, expected_mask)
    assert out_mask.sum(1).tolist() == [16, 16, min(16, LENGTHS[2])]
