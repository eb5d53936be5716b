"""FastV: exact counts per layer and in the cache, the ranking rule against a plain loop."""

from __future__ import annotations

import pytest
import torch

from reference_impls.llm.llama import KVCache
from reference_impls.vlm import fastv
from reference_impls.vlm.llava import LlmState

from .common import DEPTH, PREFIX, SUFFIX, N, capture_llm, inputs, tiny_llava


def naive_kept(attn: torch.Tensor, start: int, n: int, k: int) -> list[list[int]]:
    """Per sample: the k image tokens with the largest head-averaged attention from the last
    token (earlier token first among equals), in their order."""
    B, H, T, _ = attn.shape
    kept = []
    for b in range(B):
        score = [sum(float(attn[b, h, T - 1, start + j]) for h in range(H)) / H for j in range(n)]
        ranked = sorted(range(n), key=lambda j: (-score[j], j))
        kept.append(sorted(ranked[:k]))
    return kept


def check_kept(
    state: LlmState,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    expected: list[list[int]],
    k: int,
) -> None:
    """Every text token unchanged at its position; the image tokens `expected[b]`."""
    for b in range(len(expected)):
        image = [p - PREFIX for p in positions[b, PREFIX : PREFIX + k].tolist()]
        assert image == expected[b]
        assert positions[b, :PREFIX].tolist() == list(range(PREFIX))
        assert positions[b, PREFIX + k :].tolist() == list(range(PREFIX + N, PREFIX + N + SUFFIX))
        torch.testing.assert_close(hidden[b, -SUFFIX:], state.hidden[b, -SUFFIX:], rtol=0, atol=0)
        torch.testing.assert_close(
            hidden[b, PREFIX : PREFIX + k], state.hidden[b, [PREFIX + j for j in expected[b]]]
        )


@pytest.mark.parametrize(("layer", "ratio", "k"), [(2, 0.5, 32), (1, 0.25, 48), (3, 0.9, 6)])
@torch.no_grad()
def test_counts_at_every_layer_and_in_the_cache(layer: int, ratio: float, k: int) -> None:
    model = tiny_llava()
    cache = KVCache()
    with fastv.patch(model, fastv.Config(layer=layer, ratio=ratio)):
        model.prefill(*inputs(), cache=cache)
    assert fastv.kept_count(N, ratio) == k
    assert model.counts.visual == [N] * layer + [k] * (DEPTH - layer)
    assert model.counts.text == [PREFIX + SUFFIX] * DEPTH
    full = PREFIX + N + SUFFIX
    assert [cache.length(i) for i in range(DEPTH)] == [full] * layer + [full - N + k] * (
        DEPTH - layer
    )
    assert cache.seen == full  # decoding continues at the original next position


@torch.no_grad()
def test_batch_keeps_sample_zeros_choice_as_officially() -> None:
    """The official code ranks with sample 0's attention and keeps those positions everywhere."""
    model = tiny_llava()
    state = capture_llm(model, 2)
    assert state.attn is not None
    hidden, positions, visual = fastv.FastVReducer(fastv.Config(layer=2, ratio=0.5))(state)
    expected = naive_kept(state.attn, PREFIX, N, 32)
    assert expected[0] != expected[1]  # the samples would choose differently
    assert visual == 32
    check_kept(state, hidden, positions, [expected[0], expected[0]], 32)


@torch.no_grad()
def test_rank_per_sample_equals_the_naive_rule() -> None:
    model = tiny_llava()
    state = capture_llm(model, 2)
    assert state.attn is not None
    config = fastv.Config(layer=2, ratio=0.5, rank_per_sample=True)
    hidden, positions, visual = fastv.FastVReducer(config)(state)
    assert visual == 32
    check_kept(state, hidden, positions, naive_kept(state.attn, PREFIX, N, 32), 32)


@torch.no_grad()
def test_batch_of_one_is_the_same_either_way() -> None:
    """With one sample the option changes nothing (the setting of the paper's numbers)."""
    state = capture_llm(tiny_llava(), 2, batch=1)
    shared = fastv.FastVReducer(fastv.Config(layer=2, ratio=0.75))(state)
    own = fastv.FastVReducer(fastv.Config(layer=2, ratio=0.75, rank_per_sample=True))(state)
    assert torch.equal(shared[0], own[0]) and torch.equal(shared[1], own[1])


def test_config_for() -> None:
    assert fastv.config_for(0.5) == fastv.Config(layer=2, ratio=0.5)
    assert fastv.config_for(1.0).ratio == 0.0
    assert fastv.config_for(0.25, depth=2).layer == 1
    with pytest.raises(AssertionError):
        fastv.Config(layer=0)
