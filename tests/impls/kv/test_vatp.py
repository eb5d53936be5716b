"""VATP: value-aware scores, exact budgets, protected tokens, the policy against a naive loop."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.kv import h2o
from reference_impls.kv.base import Budget
from reference_impls.kv.vatp import (
    SINKS,
    Config,
    VATPPress,
    config_for,
    make_press,
    value_aware_scores,
    value_norms,
)
from reference_impls.llm.llama import TINY_LLAMA, KVCache, PressContext, generate

from ..llm.common import H_KV, H, causal_attention, prompt, tiny_llama

GROUPS = H // H_KV
D = TINY_LLAMA.head_dim


def row_attention(B: int, L: int, generator: torch.Generator) -> torch.Tensor:
    """One decode query's random peaked attention over `L` entries: `(B, H, 1, L)`."""
    return (3 * torch.randn(B, H, 1, L, generator=generator, dtype=torch.float64)).softmax(-1)


def context(positions: torch.Tensor, table: torch.Tensor, attn: torch.Tensor) -> PressContext:
    """Layer 0's context for the entries at `positions (B, H_kv, T)`: keys carry the position in
    channel 0, values are the rows of `table (B, H_kv, T_max, D)` at those positions."""
    B, _, T = positions.shape
    keys = torch.zeros(B, H_KV, T, D, dtype=attn.dtype)
    keys[..., 0] = positions.to(attn.dtype)
    values = table.gather(2, positions.unsqueeze(-1).expand(-1, -1, -1, D))  # (B, H_kv, T, D)
    T_new = attn.shape[2]
    return PressContext(
        0,
        keys,
        values,
        torch.zeros(B, H, T_new, D, dtype=attn.dtype),
        attn,
        torch.zeros(B, T_new, TINY_LLAMA.width, dtype=attn.dtype),
        KVCache(),
        0 if T_new > 1 else T - 1,
        TINY_LLAMA,
    )


def drive(
    press: VATPPress, prefill_attn: torch.Tensor, rows: list[torch.Tensor], table: torch.Tensor
) -> list[torch.Tensor]:
    """Positions `(B, H_kv, n)` held after prefill and after each decode step."""
    B, _, T, _ = prefill_attn.shape
    positions = torch.arange(T).expand(B, H_KV, T)
    keys, _ = press.prefill(context(positions, table, prefill_attn))
    held = [keys[..., 0].long()]
    for step, row in enumerate(rows):
        positions = torch.cat([held[-1], torch.full((B, H_KV, 1), T + step)], dim=2)
        keys, _ = press.decode(context(positions, table, row))
        held.append(keys[..., 0].long())
    return held


def value_table(B: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Random value vectors of very different sizes per position: `(B, H_kv, length, D)`."""
    scale = torch.rand(B, H_KV, length, 1, generator=generator, dtype=torch.float64) * 4
    return scale * torch.randn(B, H_KV, length, D, generator=generator, dtype=torch.float64)


def test_config() -> None:
    with pytest.raises(AssertionError):
        Config(heavy=-0.1)
    assert config_for(0.3) == Config(Budget(keep=0.3, sinks=SINKS), heavy=0.5)
    assert config_for(2.0).budget.keep == 1.0


def test_score_is_attention_sum_times_value_l1_norm() -> None:
    """Against a plain loop: sum over queries of the attention, averaged over the query heads of
    the KV head, times the sum of the absolute value entries."""
    generator = torch.Generator().manual_seed(0)
    attn = causal_attention(2, 9, generator)
    values = value_table(2, 9, generator)
    scores = value_aware_scores(attn, values)
    for b in range(2):
        for g in range(H_KV):
            for j in range(9):
                attention = 0.0
                for h in range(g * GROUPS, (g + 1) * GROUPS):
                    for i in range(9):
                        attention += float(attn[b, h, i, j])
                norm = sum(abs(float(values[b, g, j, d])) for d in range(D))
                assert float(scores[b, g, j]) == pytest.approx(attention / GROUPS * norm)
    torch.testing.assert_close(value_norms(values), values.norm(p=1, dim=-1))


def test_prefill_and_decode_keep_exact_budget_in_every_layer() -> None:
    model = tiny_llama()
    press = make_press(config_for(0.25))
    tokens, cache = generate(model, prompt(40), max_new_tokens=8, press=press)
    assert tokens.shape == (1, 8) and cache.seen == 47
    assert [tuple(k.shape) for k in cache.keys] == [(1, H_KV, 10, D)] * TINY_LLAMA.depth
    assert [tuple(v.shape) for v in cache.values] == [(1, H_KV, 10, D)] * TINY_LLAMA.depth
    assert all(press.state[i][2].shape == (1, H_KV, 10) for i in range(3))  # type: ignore[index]


def test_sinks_and_recent_window_are_never_evicted() -> None:
    """The sinks survive even with zero value norms (which would score them zero), and the recent
    half of the budget survives prefill and every decode step."""
    generator = torch.Generator().manual_seed(3)
    T, steps = 40, 6
    table = value_table(2, T + steps, generator)
    table[:, :, :SINKS] = 0.0  # attention sinks carry (almost) nothing
    config = config_for(0.5)  # n = 20: 4 sinks, 10 recent, 6 heavy hitters
    rows = [row_attention(2, 21, generator) for _ in range(steps)]
    held = drive(make_press(config), causal_attention(2, T, generator), rows, table)
    for step, positions in enumerate(held):
        last = T - 1 + step
        assert positions.shape == (2, H_KV, 20)
        for b in range(2):
            for g in range(H_KV):
                kept = set(positions[b, g].tolist())
                assert set(range(SINKS)) <= kept
                assert set(range(last - 9, last + 1)) <= kept


def test_value_norm_changes_the_choice() -> None:
    """An entry with much attention but a zero value is kept by H2O and evicted by VATP."""
    T = 12
    attn = torch.full((1, H, T, T), 0.0, dtype=torch.float64)
    for i in range(T):
        attn[0, :, i, : i + 1] = 1.0 / (i + 1)
    attn[0, :, 3:, 2] += 1.0  # token 2 is a heavy hitter by attention...
    attn = attn / attn.sum(dim=-1, keepdim=True)
    table = torch.ones(1, H_KV, T, D, dtype=torch.float64)
    table[:, :, 2] = 0.0  # ...whose value is zero
    positions = torch.arange(T).expand(1, H_KV, T)
    budget = Budget(keep=0.5)
    ours, _ = make_press(Config(budget)).prefill(context(positions, table, attn))
    theirs, _ = h2o.make_press(h2o.Config(budget)).prefill(context(positions, table, attn))
    assert 2 in theirs[0, 0, :, 0].tolist()
    assert 2 not in ours[0, 0, :, 0].tolist()


def naive_vatp(
    prefill_attn: torch.Tensor,
    rows: list[torch.Tensor],
    table: torch.Tensor,
    n: int,
    recent: int,
    sinks: int,
) -> tuple[list[list[list[list[int]]]], dict[tuple[int, int], dict[int, float]]]:
    """The H2O w/ VATP policy with plain loops: per KV head, every query adds its attention
    (averaged over the head's query heads) times the entry's value L1 norm; keep the sinks, the
    last `recent` and the best-scored others; per step evict the lowest-scored entry outside the
    sinks and the recent window. Returns held[step][b][g] -> positions and the scores."""
    B, _, T, _ = prefill_attn.shape

    def norm(b: int, g: int, p: int) -> float:
        return sum(abs(float(table[b, g, p, d])) for d in range(D))

    held: list[list[list[list[int]]]] = [[[[] for _ in range(H_KV)] for _ in range(B)]]
    state = {}
    for b in range(B):
        for g in range(H_KV):
            score = {}
            for j in range(T):
                total = 0.0
                for h in range(g * GROUPS, (g + 1) * GROUPS):
                    total += sum(float(prefill_attn[b, h, i, j]) for i in range(T))
                score[j] = total / GROUPS * norm(b, g, j)
            cache = list(range(T))
            protected = set(cache[:sinks]) | set(cache[T - recent :])
            others = sorted((p for p in cache if p not in protected), key=lambda p: -score[p])
            cache = sorted(protected | set(others[: n - len(protected)]))
            state[b, g] = (cache, score)
            held[0][b][g] = list(cache)
    for step, row in enumerate(rows):
        held.append([[[] for _ in range(H_KV)] for _ in range(B)])
        for b in range(B):
            for g in range(H_KV):
                cache, score = state[b, g]
                cache = [*cache, T + step]
                score[T + step] = 0.0
                for k, p in enumerate(cache):
                    total = sum(float(row[b, h, 0, k]) for h in range(g * GROUPS, (g + 1) * GROUPS))
                    score[p] += total / GROUPS * norm(b, g, p)
                if len(cache) > n:
                    candidates = cache[sinks : len(cache) - recent]
                    cache.remove(min(candidates, key=lambda p: score[p]))
                state[b, g] = (cache, score)
                held[-1][b][g] = list(cache)
    return held, {key: score for key, (_, score) in state.items()}


@pytest.mark.parametrize(
    ("T", "keep", "heavy", "sinks", "seed"),
    [(30, 0.5, 0.5, 0, 0), (41, 0.3, 0.5, 4, 1), (25, 0.4, 0.75, 2, 2), (20, 0.5, 1.0, 0, 3)],
)
def test_matches_naive_loop(T: int, keep: float, heavy: float, sinks: int, seed: int) -> None:
    """Prefill and 10 decode steps keep exactly the entries of the naive loop, per KV head, and
    the press's accumulated scores stay aligned with the entries it holds."""
    generator = torch.Generator().manual_seed(seed)
    config = Config(Budget(keep=keep, sinks=sinks), heavy=heavy)
    n = config.budget.tokens(T)
    recent = n - math.floor(heavy * n)
    steps = 10
    table = value_table(2, T + steps, generator)
    prefill_attn = causal_attention(2, T, generator)
    rows = [row_attention(2, n + 1, generator) for _ in range(steps)]
    press = make_press(config)
    ours = drive(press, prefill_attn, rows, table)
    held, scores = naive_vatp(prefill_attn, rows, table, n, recent, sinks)
    assert [positions.tolist() for positions in ours] == held
    accumulated = press.state[0][2]  # type: ignore[index]
    for (b, g), score in scores.items():
        expected = [score[p] for p in held[-1][b][g]]
        torch.testing.assert_close(accumulated[b, g].tolist(), expected, rtol=1e-12, atol=1e-12)


def test_official_form_budgets_and_checks() -> None:
    """int(ratio * T) heavy and recent entries; recent_ratio defaults to heavy_ratio."""
    assert Config(heavy_ratio=0.25).official_budgets(30) == (7, 7)
    assert Config(heavy_ratio=0.2, recent_ratio=0.1).official_budgets(57) == (11, 5)
    with pytest.raises(AssertionError):
        Config(recent_ratio=0.1)
    with pytest.raises(AssertionError):
        Config(heavy_ratio=1.5)
    with pytest.raises(AssertionError):
        Config(heavy_ratio=0.1, sink_len=-1)


def test_official_form_pins_sinks_and_keeps_heavy_plus_recent() -> None:
    """T 10, heavy 2 and recent 2 (ratio 0.2), one sink: token 0 stays although its value is zero
    (its score is pinned to the maximum), token 5 (the most attended, unit value) is the other
    heavy hitter, tokens 8 and 9 the recent window."""
    T = 10
    attn = torch.zeros(1, H, T, T, dtype=torch.float64)
    for i in range(T):
        attn[0, :, i, : i + 1] = 1.0 / (i + 1)
    attn[0, :, 6:, 5] += 2.0
    attn = attn / attn.sum(dim=-1, keepdim=True)
    table = torch.ones(1, H_KV, T, D, dtype=torch.float64)
    table[:, :, 0] = 0.0
    positions = torch.arange(T).expand(1, H_KV, T)
    press = make_press(Config(heavy_ratio=0.2, sink_len=1))
    keys, _ = press.prefill(context(positions, table, attn))
    assert keys[..., 0].tolist() == [[[0.0, 5.0, 8.0, 9.0]] * H_KV]
    unpinned = make_press(Config(heavy_ratio=0.2, sink_len=0))
    keys, _ = unpinned.prefill(context(positions, table, attn))
    assert 0.0 not in keys[0, 0, :, 0].tolist()


def test_official_form_without_recent_window_never_evicts() -> None:
    """recent_ratio 0: the official mask keeps every entry visible, at prefill and later."""
    generator = torch.Generator().manual_seed(4)
    T, steps = 20, 3
    table = value_table(1, T + steps, generator)
    rows = [row_attention(1, T + 1 + step, generator) for step in range(steps)]
    press = make_press(Config(heavy_ratio=0.3, recent_ratio=0.0))
    held = drive(press, causal_attention(1, T, generator), rows, table)
    assert [p.shape[2] for p in held] == [20, 21, 22, 23]


@pytest.mark.parametrize(
    ("T", "heavy_ratio", "recent_ratio", "sink_len"), [(40, 0.25, 0.15, 3), (23, 0.3, None, 0)]
)
def test_official_form_matches_naive_loop(
    T: int, heavy_ratio: float, recent_ratio: float | None, sink_len: int
) -> None:
    """The official form is the naive H2O w/ VATP loop with n = heavy + recent and the sinks
    among the heavy hitters (sink_len <= heavy), batch 2, 10 decode steps."""
    generator = torch.Generator().manual_seed(T)
    config = Config(heavy_ratio=heavy_ratio, recent_ratio=recent_ratio, sink_len=sink_len)
    heavy, recent = config.official_budgets(T)
    steps = 10
    table = value_table(2, T + steps, generator)
    prefill_attn = causal_attention(2, T, generator)
    rows = [row_attention(2, heavy + recent + 1, generator) for _ in range(steps)]
    ours = drive(make_press(config), prefill_attn, rows, table)
    held, _ = naive_vatp(prefill_attn, rows, table, heavy + recent, recent, sink_len)
    assert [positions.tolist() for positions in ours] == held
