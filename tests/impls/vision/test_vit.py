"""The small ViT, its hook points, the adapter, the token helpers and the MAC counter."""

from __future__ import annotations

import pytest
import torch

from reference_impls.harness import measure
from reference_impls.vision.adapter import attach
from reference_impls.vision.macs import block_macs, schedule_counts, vit_macs
from reference_impls.vision.tokens import gather, keep_topk, weighted_merge
from reference_impls.vision.vit import DEIT_B, DEIT_S, DEIT_T, TokenState, ViTConfig, cls_attention

from ..common import TINY, device_param, images, tiny_vit


def test_deit_s_is_4_6_gmacs() -> None:
    """DeiT-S (depth 12, width 384, 6 heads, 197 tokens): 4.6 GMACs, as the DeiT paper reports."""
    assert round(vit_macs(DEIT_S) / 1e9, 1) == 4.6


def test_other_deit_sizes_match_their_papers() -> None:
    """DeiT-Ti 1.3 and DeiT-B 17.6 GMACs (DeiT, Table 1 reports 1.3 and 17.6 GFLOPs)."""
    assert round(vit_macs(DEIT_T) / 1e9, 1) == 1.3
    assert round(vit_macs(DEIT_B) / 1e9, 1) == 17.6


def test_block_macs_by_hand() -> None:
    """qkv 3nC^2 + scores/values 2n^2C + proj nC^2 + MLP 2*m*4C*C."""
    n, m, c = 10, 7, 8
    assert block_macs(n, m, c, 4.0) == 3 * n * c * c + 2 * n * n * c + n * c * c + 2 * m * 4 * c * c


def test_counter_follows_the_models_token_counts() -> None:
    model = tiny_vit()
    model(images())
    assert model.token_counts() == [(TINY.num_tokens, TINY.num_tokens)] * TINY.depth
    assert vit_macs(TINY, model.token_counts()) == vit_macs(TINY)


def test_schedule_counts() -> None:
    config = ViTConfig(depth=3)
    assert schedule_counts(config, [190, 180, 170]) == [(197, 190), (190, 180), (180, 170)]


@device_param
def test_forward_shapes_and_cls_attention(device: str) -> None:
    model = tiny_vit(device=device)
    seen: list[TokenState] = []

    def spy(state: TokenState) -> tuple[torch.Tensor, torch.Tensor | None]:
        seen.append(state)
        return state.x, state.size

    with attach(model, mid={1: spy}):
        logits = model(images(device=device))
    assert logits.shape == (2, TINY.num_classes)
    state = seen[0]
    assert state.index == 1 and state.x.shape == (2, TINY.num_tokens, TINY.width)
    assert state.attn is not None and state.attn.shape == (
        2,
        TINY.heads,
        TINY.num_tokens,
        TINY.num_tokens,
    )
    torch.testing.assert_close(
        state.attn.sum(-1), torch.ones(2, TINY.heads, TINY.num_tokens, device=device)
    )
    assert state.keys is not None and state.keys.shape == (
        2,
        TINY.num_tokens,
        TINY.width // TINY.heads,
    )
    assert cls_attention(state.attn).shape == (2, TINY.num_tokens - 1)


def test_size_zero_tokens_are_ignored_by_attention() -> None:
    """A padding token (size 0) changes nothing for the other tokens."""
    model = tiny_vit()
    attn = model.blocks[0].attn
    x = torch.randn(1, 5, TINY.width)
    out, _, _ = attn(x, torch.ones(1, 5, 1))
    padded = torch.cat([x, torch.randn(1, 1, TINY.width)], dim=1)
    size = torch.cat([torch.ones(1, 5, 1), torch.zeros(1, 1, 1)], dim=1)
    out_padded, weights, _ = attn(padded, size)
    torch.testing.assert_close(out_padded[:, :5], out)
    assert torch.all(weights[..., 5] == 0)


def test_proportional_attention_equals_duplicated_tokens() -> None:
    """A token of size 2 is attended to exactly like two copies of it (ToMe's motivation)."""
    attn = tiny_vit().blocks[0].attn
    x = torch.randn(1, 4, TINY.width)
    duplicated = torch.cat([x, x[:, 3:]], dim=1)
    out_dup, _, _ = attn(duplicated)
    out_prop, _, _ = attn(x, torch.tensor([[[1.0], [1.0], [1.0], [2.0]]]))
    torch.testing.assert_close(out_prop, out_dup[:, :4])


def test_attach_rejects_bad_block_and_restores() -> None:
    model = tiny_vit()
    with (
        pytest.raises(ValueError, match="block index 9 out of range"),
        attach(model, mid={9: lambda s: (s.x, s.size)}),
    ):
        pass
    with attach(model, pre={0: lambda s: (s.x, s.size)}, track_size=True):
        assert model.blocks[0].pre_reducer is not None and model.track_size
    assert model.blocks[0].pre_reducer is None and not model.track_size


def test_attach_leaves_no_submodule_behind() -> None:
    """A reducer that is an nn.Module is not registered in the model, during or after."""
    model = tiny_vit()
    keys = set(model.state_dict())
    reducer = torch.nn.Linear(2, 2)
    with attach(model, pre={1: lambda s: (s.x, s.size)}, mid={1: reducer}):  # type: ignore[dict-item]
        assert set(model.state_dict()) == keys
        assert model.blocks[1].mid_reducer is reducer
    assert set(model.state_dict()) == keys and "mid_reducer" not in model.blocks[1]._modules


def test_keep_topk_keeps_prefix_and_order() -> None:
    x = torch.arange(2 * 6 * 1, dtype=torch.float32).reshape(2, 6, 1)
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out, size, kept = keep_topk(x, scores, 2, torch.ones(2, 6, 1))
    assert kept.tolist() == [[1, 3], [0, 1]]
    assert out[:, :, 0].tolist() == [[0.0, 2.0, 4.0], [6.0, 7.0, 8.0]]
    assert size is not None and size.shape == (2, 3, 1)
    assert gather(x, torch.tensor([[5], [0]]))[:, 0, 0].tolist() == [5.0, 6.0]


def test_weighted_merge_conserves_the_weighted_sum() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, generator=generator)
    size = torch.rand(2, 7, 1, generator=generator) + 0.5
    dst = torch.tensor([[0, 1, 2, 0, 1, 2, 2], [3, 3, 3, 0, 1, 2, 0]])
    merged, new_size = weighted_merge(x, size, dst, 4)
    torch.testing.assert_close((merged * new_size).sum(1), (x * size).sum(1))
    torch.testing.assert_close(new_size.sum(1), size.sum(1))


def test_measure_reports_a_median() -> None:
    timing = measure(lambda: torch.ones(10).sum(), warmup=1, runs=3)
    assert timing.runs == 3 and 0 <= timing.min_s <= timing.median_s
