"""The scorer base of the KV methods: exact budgets, one tie rule, the three hooks."""

from __future__ import annotations

import torch
from torch import Tensor

from reference_impls.kv.base import Budget, ScorerPress, keep_top
from reference_impls.llm.llama import PressContext

from ..llm.common import H, fake_context


def positions(t: Tensor) -> list[int]:
    return [int(p) for p in t[0, 0, :, 0]]


def test_keep_top_keeps_the_earlier_position_on_ties_in_order() -> None:
    scores = torch.tensor([[[1.0, 3.0, 1.0, 3.0, 1.0, 2.0]]])
    keys = torch.arange(6.0).view(1, 1, 6, 1)
    kept, _, index = keep_top(keys, keys, scores, 4)
    assert index.tolist() == [[[0, 1, 3, 5]]]
    assert positions(kept) == [0, 1, 3, 5]


class Fixed(ScorerPress):
    """Scores given per position; layer 1 keeps one entry fewer; 1 sink, 1 window entry."""

    evict_on_decode = True

    def __init__(self, scores: list[float]) -> None:
        super().__init__(Budget(keep=0.5))
        self.scores = scores

    def score(self, ctx: PressContext) -> Tensor:
        B, H_kv, T, _ = ctx.keys.shape
        return torch.tensor(self.scores[:T], dtype=torch.float64).expand(B, H_kv, T)

    def tokens(self, ctx: PressContext) -> int:
        return super().tokens(ctx) - ctx.layer

    def protected(self, ctx: PressContext, n: int) -> tuple[int, int]:
        return 1, 1


def context(layer: int, T: int, seen: int) -> PressContext:
    pos = torch.arange(T).expand(2, 2, T)  # batch 2, two KV heads
    attn = torch.zeros(2, H, 1 if seen else T, T, dtype=torch.float64)
    return fake_context(layer, pos, attn, seen)


def test_hooks_budget_protection_and_decode_cap() -> None:
    """T = 8, keep 0.5: 4 entries in layer 0, 3 in layer 1; position 0 and 7 protected, the
    rest by score (5 > 2 > 1 ...); decoding evicts back to the prefill count."""
    scores = [0.0, 1.0, 5.0, 0.0, 2.0, 0.0, 0.0, 0.0, 9.0, 0.5]
    press = Fixed(scores)
    keys, _ = press.prefill(context(0, 8, 0))
    assert positions(keys) == [0, 2, 4, 7]
    assert torch.equal(keys[1, 1, :, 0], torch.tensor([0.0, 2, 4, 7]))
    keys, _ = press.prefill(context(1, 8, 0))
    assert positions(keys) == [0, 2, 7]
    assert press.cap == {0: 4, 1: 3}
    # decoding: layer 1 holds positions 0, 2, 7 plus the new 8, one over its cap of 3: the sink
    # 0 and the newest entry 8 are protected, 2 (score 5) beats 7 (score 0)
    grown = torch.tensor([0, 2, 7, 8]).expand(2, 2, 4)
    ctx = fake_context(1, grown, torch.zeros(2, H, 1, 4, dtype=torch.float64), 8)
    press.scores = [0.0, 5.0, 0.0, 9.0]  # scores by place in the cache: 0, 2, 7, 8
    keys, _ = press.decode(ctx)
    assert positions(keys) == [0, 2, 8]


def test_full_budget_leaves_the_cache_and_sets_no_cap() -> None:
    press = Fixed([0.0] * 4)
    press.budget = Budget(keep=1.0)
    ctx = context(0, 4, 0)
    keys, values = press.prefill(ctx)
    assert keys is ctx.keys and values is ctx.values
    assert press.cap == {0: None}
    assert press.decode(context(0, 5, 4))[0].shape[2] == 5
