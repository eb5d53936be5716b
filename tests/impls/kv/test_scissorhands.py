"""Scissorhands: drop the tokens most often below-average in a rolling history of attention."""

from __future__ import annotations

import pytest
import torch

from reference_impls.kv import recent as recent_baseline
from reference_impls.kv.base import Budget
from reference_impls.kv.scissorhands import (
    Config,
    config_for,
    keep_scores,
    make_press,
    official_masked_attention,
    unimportance,
)
from reference_impls.llm.llama import TINY_LLAMA, KVCache, generate

from ..llm.common import (
    H_KV,
    TEXT,
    H,
    causal_attention,
    continuation_perplexity,
    fake_context,
    prompt,
    smollm2,  # noqa: F401 (a fixture)
    tiny_llama,
)

GROUPS = H // H_KV


def row_attention(B: int, L: int, generator: torch.Generator) -> torch.Tensor:
    """One decode query's random attention over `L` entries: `(B, H, 1, L)`."""
    return (3 * torch.randn(B, H, 1, L, generator=generator, dtype=torch.float64)).softmax(-1)


def run_press(  # type: ignore[no-untyped-def]
    press, prefill_attn: torch.Tensor, steps: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Positions `(B, H_kv, n_t)` held after prefill and after each decode step, and the random
    attention rows fed to the decode steps (drawn for the cache length of each step)."""
    B, _, T, _ = prefill_attn.shape
    positions = torch.arange(T).expand(B, H_KV, T)
    keys, _ = press.prefill(fake_context(0, positions, prefill_attn, seen=0))
    held, rows = [keys[..., 0].long()], []
    for step in range(steps):
        positions = torch.cat([held[-1], torch.full((B, H_KV, 1), T + step)], dim=2)
        rows.append(row_attention(B, positions.shape[2], generator))
        keys, _ = press.decode(fake_context(0, positions, rows[-1], seen=T + step))
        held.append(keys[..., 0].long())
    return held, rows


def test_config_checks_ranges() -> None:
    """History and drop amount must be positive."""
    with pytest.raises(AssertionError):
        Config(history=0)
    with pytest.raises(AssertionError):
        Config(drop=0)
    assert config_for(0.2) == Config(Budget(keep=0.2, window=8))
    assert config_for(1.5).budget.keep == 1.0


def test_unimportance_counts_below_average_marks_per_kv_head() -> None:
    attn = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64).expand(1, H, 1, 4)
    assert unimportance(attn, H_KV)[0, :, 0].tolist() == [[0, GROUPS, 0, GROUPS]] * H_KV
    causal = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.3, 0.0], [0.5, 0.3, 0.2]])
    marks = unimportance(causal.expand(1, H, 3, 3), H_KV)[0, 0]  # (T_q, T)
    # averages 1, 1/2, 1/3; masked (future) entries are never marked
    assert marks.tolist() == [[0, 0, 0], [0, GROUPS, 0], [0, GROUPS, GROUPS]]


def plain_causal(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.inf).softmax(-1)


def test_official_mask_keeps_keys_important_in_the_window_and_the_position_window() -> None:
    """T 4, quantile 0.5: a key is important for a query when above the row's 3rd-smallest
    value. Query 1 favours key 0, query 2 favours key 1; query 3 (from start 3) sees only
    those, the last `position_window` keys, and itself."""
    scores = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    scores[0, 0, 1, 0] = 1.0
    scores[0, 0, 2, 1] = 1.0

    def row3(lru: int, pos: int) -> list[float]:
        attn = official_masked_attention(scores, lru, pos, start=3, quantile=0.5)
        assert torch.equal(attn[..., :3, :], plain_causal(scores)[..., :3, :])
        return [round(v, 12) for v in attn[0, 0, 3].tolist()]

    third, half = round(1 / 3, 12), 0.5
    assert row3(2, 0) == [third, third, 0.0, third]
    assert row3(1, 0) == [0.0, half, 0.0, half]
    assert row3(1, 2) == [0.0, third, third, third]
    assert row3(0, 0) == [0.0, 0.0, 0.0, 1.0]


def test_official_mask_reads_marks_from_already_masked_rows() -> None:
    """Query 4 (window 1) reads query 3's masked row [0, .5, 0, .5]: keys 1 and 3 exceed the
    threshold .25 of query 3's unmasked row, so query 4 sees them (unmasked: none would)."""
    scores = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    scores[0, 0, 2, 1] = 1.0
    attn = official_masked_attention(scores, 1, 0, start=3, quantile=0.5)
    third = round(1 / 3, 12)
    assert [round(v, 12) for v in attn[0, 0, 3].tolist()] == [0.0, 0.5, 0.0, 0.5, 0.0]
    assert [round(v, 12) for v in attn[0, 0, 4].tolist()] == [0.0, third, 0.0, third, third]


def test_official_mask_is_plain_attention_when_nothing_can_be_masked() -> None:
    """Start at or past T, or windows covering every key: plain causal attention, per sample."""
    scores = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    plain = plain_causal(scores)
    assert torch.equal(official_masked_attention(scores, 4, 2, start=9), plain)
    assert torch.allclose(official_masked_attention(scores, 9, 9, start=0), plain, atol=1e-7)
    masked = official_masked_attention(scores, 1, 1, start=2)
    assert masked.shape == (2, 3, 9, 9)
    assert torch.allclose(masked.sum(-1), torch.ones(2, 3, 9))
    assert (masked[..., 2:, :] == 0).sum() > (plain[..., 2:, :] == 0).sum()


def test_keep_scores_prefer_fewer_marks_then_newer_tokens() -> None:
    counts = torch.tensor([[[2, 1, 1, 2, 0]]])
    order = keep_scores(counts).argsort(dim=-1, descending=True)[0, 0].tolist()
    assert order == [4, 2, 1, 3, 0]


def test_prefill_and_decode_keep_exact_budget_in_every_layer() -> None:
    """Every layer holds exactly Budget.tokens(T) entries per KV head after prefill and after
    each decode step of a generation on the tiny model (drop 1)."""
    model = tiny_llama()
    cache = KVCache()
    with torch.no_grad():
        model(prompt(40), cache, make_press(config_for(0.3)))
    assert [cache.length(layer) for layer in range(TINY_LLAMA.depth)] == [12] * TINY_LLAMA.depth
    tokens, cache = generate(model, prompt(40), max_new_tokens=8, press=make_press(config_for(0.3)))
    assert tokens.shape == (1, 8) and cache.seen == 47
    assert [cache.keys[layer].shape for layer in range(TINY_LLAMA.depth)] == [
        (1, H_KV, 12, TINY_LLAMA.head_dim)
    ] * TINY_LLAMA.depth


def test_dropping_several_at_once_never_exceeds_the_budget() -> None:
    """With drop m = 3, an overflow frees 3 slots, which then refill: n, n-2, n-1, n, n-2, ..."""
    generator = torch.Generator().manual_seed(1)
    config = Config(Budget(keep=0.5, window=4), history=8, drop=3)
    held, _ = run_press(make_press(config), causal_attention(1, 30, generator), 7, generator)
    assert [p.shape[2] for p in held] == [15, 13, 14, 15, 13, 14, 15, 13]


def test_recent_window_and_sinks_are_never_evicted() -> None:
    """The recent window and configured sinks survive even when always below average."""
    generator = torch.Generator().manual_seed(2)
    T = 30
    attn = causal_attention(1, T, generator)
    attn[:, :, :, [0, T - 3, T - 2, T - 1]] = 0.0  # always "unimportant"
    config = Config(Budget(keep=0.4, sinks=1, window=3), history=6)
    held, _ = run_press(make_press(config), attn, 6, generator)
    for step, positions in enumerate(held):
        last = T - 1 + step
        for g in range(H_KV):
            assert {0, last - 2, last - 1, last} <= set(positions[0, g].tolist())


def naive_scissorhands(
    prefill_attn: torch.Tensor,
    rows: list[torch.Tensor],
    n: int,
    history: int,
    sinks: int,
    window: int,
    drop: int,
) -> list[list[list[list[int]]]]:
    """The paper's algorithm with plain loops, per KV head: remember, for each of the last
    `history` queries, which cached tokens got less than that query's average attention (per
    query head of the group); when the cache is over budget, drop the unprotected tokens with
    the most marks (older first on ties). Returns held[step][b][g] -> positions."""
    B, _, T, _ = prefill_attn.shape

    def marks_of(attn: torch.Tensor, b: int, g: int, q: int, cache: list[int]) -> dict[int, int]:
        marks = {}
        for k, p in enumerate(cache):
            marks[p] = 0
            for h in range(g * GROUPS, (g + 1) * GROUPS):
                if float(attn[b, h, q, k]) < 1.0 / len(cache):
                    marks[p] += 1
        return marks

    def compress(cache: list[int], window_marks: list[dict[int, int]], keep: int) -> list[int]:
        count = {p: sum(m.get(p, 0) for m in window_marks) for p in cache}
        protected = set(cache[:sinks]) | set(cache[len(cache) - window :])
        others = sorted((p for p in cache if p not in protected), key=lambda p: (count[p], -p))
        return sorted(protected | set(others[: keep - len(protected)]))

    held: list[list[list[list[int]]]] = [[[[] for _ in range(H_KV)] for _ in range(B)]]
    for _ in rows:
        held.append([[[] for _ in range(H_KV)] for _ in range(B)])
    for b in range(B):
        for g in range(H_KV):
            window_marks = [
                marks_of(prefill_attn, b, g, i, list(range(i + 1)))
                for i in range(max(0, T - history), T)
            ]
            cache = compress(list(range(T)), window_marks, n)
            held[0][b][g] = list(cache)
            for step, row in enumerate(rows):
                cache = [*cache, T + step]
                window_marks = [*window_marks, marks_of(row, b, g, 0, cache)][-history:]
                if len(cache) > n:
                    keep = max(min(n, len(cache) - drop), min(len(cache), sinks + window))
                    cache = compress(cache, window_marks, keep)
                held[step + 1][b][g] = list(cache)
    return held


@pytest.mark.parametrize(
    ("T", "keep", "history", "sinks", "window", "drop", "seed"),
    [
        (30, 0.5, 8, 0, 4, 1, 0),
        (41, 0.3, 16, 0, 8, 1, 1),
        (25, 0.4, 4, 2, 3, 3, 2),
        (20, 0.5, 40, 0, 0, 2, 3),
    ],
)
def test_matches_naive_loop(
    T: int, keep: float, history: int, sinks: int, window: int, drop: int, seed: int
) -> None:
    """Prefill and 9 decode steps keep exactly the tokens of the naive loop, per KV head."""
    generator = torch.Generator().manual_seed(seed)
    config = Config(Budget(keep=keep, sinks=sinks, window=window), history=history, drop=drop)
    n = config.budget.tokens(T)
    prefill_attn = causal_attention(2, T, generator)
    ours, rows = run_press(make_press(config), prefill_attn, 9, generator)
    expected = naive_scissorhands(prefill_attn, rows, n, history, sinks, window, drop)
    assert [p.tolist() for p in ours] == expected


def test_smollm2_keeps_quality_at_a_quarter_of_the_cache(smollm2) -> None:  # noqa: F811
    """On the real model, Scissorhands at a quarter of the prompt beats the recent-only window
    of the same budget, stays near the full cache, and decoding holds the budget in all 30
    layers."""
    model, tokenizer = smollm2
    ids = tokenizer(TEXT, return_tensors="pt").input_ids

    full = continuation_perplexity(model, ids, 30)
    window = continuation_perplexity(
        model, ids, 30, recent_baseline.make_press(recent_baseline.config_for(0.25))
    )
    scissorhands = continuation_perplexity(model, ids, 30, make_press(config_for(0.25)))
    assert scissorhands < 0.7 * window
    assert scissorhands < 1.5 * full  # 1.30x on this text

    _, cache = generate(model, ids[:, :60], max_new_tokens=4, press=make_press(config_for(0.5)))
    assert {tuple(k.shape) for k in cache.keys} == {(1, 3, 30, 64)}
    assert cache.seen == 63
