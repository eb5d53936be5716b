"""H2O: heavy hitters plus recent window, exact budget, scores kept aligned while decoding."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.kv import recent as recent_baseline
from reference_impls.kv.base import Budget
from reference_impls.kv.h2o import (
    Config,
    accumulated_attention,
    config_for,
    heavy_recent_mask,
    local_heavy_hitter_mask,
    make_press,
    masked_scores,
    recent_count,
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
    run_press,
    smollm2,  # noqa: F401 (a fixture)
    tiny_llama,
)

GROUPS = H // H_KV


def row_attention(B: int, L: int, generator: torch.Generator, own: float = 0.0) -> torch.Tensor:
    """One decode query's random attention over `L` entries, `own` added to the logit of the new
    token itself (queries often attend to their own token): `(B, H, 1, L)`."""
    logits = 3 * torch.randn(B, H, 1, L, generator=generator, dtype=torch.float64)
    logits[..., -1] += own
    return logits.softmax(dim=-1)


def test_config_checks_the_heavy_share() -> None:
    """A heavy-hitter share outside [0, 1] is rejected."""
    with pytest.raises(AssertionError):
        Config(heavy=1.5)
    assert config_for(0.2) == Config(Budget(keep=0.2), heavy=0.5)
    assert config_for(3.0).budget.keep == 1.0


def test_budget_split_in_equal_halves() -> None:
    assert recent_count(20, 0.5, Budget()) == 10
    assert recent_count(11, 0.5, Budget()) == 6
    assert recent_count(20, 0.5, Budget(window=14)) == 14  # a larger protected window wins
    assert recent_count(20, 0.5, Budget(sinks=4, window=18)) == 16  # never crowds out sinks


def test_accumulated_attention_is_column_sums_averaged_per_kv_head() -> None:
    attn = causal_attention(1, 5, torch.Generator().manual_seed(0))
    scores = accumulated_attention(attn, H_KV)
    expected = attn.sum(dim=2)[:, :GROUPS].mean(dim=1)  # first KV head's query heads
    torch.testing.assert_close(scores[:, 0], expected)


def test_prefill_and_decode_keep_exact_budget_in_every_layer() -> None:
    """Every layer holds exactly Budget.tokens(T) entries per KV head after prefill and after
    each decode step of a generation on the tiny model."""
    model = tiny_llama()
    press = make_press(config_for(0.25))
    cache = KVCache()
    with torch.no_grad():
        model(prompt(40), cache, press)
    assert [cache.length(layer) for layer in range(TINY_LLAMA.depth)] == [10] * TINY_LLAMA.depth
    tokens, cache = generate(model, prompt(40), max_new_tokens=8, press=press)
    assert tokens.shape == (1, 8) and cache.seen == 47
    assert [cache.keys[layer].shape for layer in range(TINY_LLAMA.depth)] == [
        (1, H_KV, 10, TINY_LLAMA.head_dim)
    ] * TINY_LLAMA.depth
    assert all(press.state[layer][2].shape == (1, H_KV, 10) for layer in range(3))  # type: ignore[index]


def test_recent_window_and_sinks_are_never_evicted() -> None:
    """The recent half of the budget (and configured sinks) survive prefill and every step."""
    generator = torch.Generator().manual_seed(3)
    T, steps = 40, 6
    config = Config(Budget(keep=0.5, sinks=2))  # n = 20: 2 sinks, 10 recent, 8 heavy hitters
    rows = [row_attention(2, 21, generator) for _ in range(steps)]
    held = run_press(make_press(config), causal_attention(2, T, generator), rows)
    for step, positions in enumerate(held):
        last = T - 1 + step
        assert positions.shape == (2, H_KV, 20)
        for b in range(2):
            for g in range(H_KV):
                kept = set(positions[b, g].tolist())
                assert {0, 1} <= kept
                assert set(range(last - 9, last + 1)) <= kept


def test_heavy_share_zero_is_the_recent_window() -> None:
    """With no heavy hitters, H2O keeps exactly what the recent-only baseline keeps."""
    generator = torch.Generator().manual_seed(4)
    attn = causal_attention(1, 30, generator)
    positions = torch.arange(30).expand(1, H_KV, 30)
    ours, _ = make_press(Config(Budget(keep=0.4), heavy=0.0)).prefill(
        fake_context(0, positions, attn, 0)
    )
    window, _ = recent_baseline.make_press(recent_baseline.config_for(0.4)).prefill(
        fake_context(0, positions, attn, 0)
    )
    assert torch.equal(ours, window)


def naive_h2o(
    prefill_attn: torch.Tensor, rows: list[torch.Tensor], n: int, recent: int, sinks: int
) -> tuple[list[list[list[list[int]]]], dict[tuple[int, int], dict[int, float]]]:
    """The paper's policy with plain loops: per KV head, accumulate every query's attention
    (averaged over the head's query heads); keep sinks, the last `recent` and the best-scored
    others; then per step add the new query's attention and evict the lowest-scored entry
    outside the sinks and the recent window. Returns held[step][b][g] -> positions, and the
    accumulated score of every position per (b, g)."""
    B, _, T, _ = prefill_attn.shape
    held: list[list[list[list[int]]]] = [[[[] for _ in range(H_KV)] for _ in range(B)]]
    state = {}
    for b in range(B):
        for g in range(H_KV):
            heads = range(g * GROUPS, (g + 1) * GROUPS)
            score = {}
            for j in range(T):
                total = 0.0
                for h in heads:
                    column = 0.0
                    for i in range(T):
                        column += float(prefill_attn[b, h, i, j])
                    total += column
                score[j] = total / GROUPS
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
                    total = 0.0
                    for h in range(g * GROUPS, (g + 1) * GROUPS):
                        total += float(row[b, h, 0, k])
                    score[p] += total / GROUPS
                if len(cache) > n:
                    candidates = cache[sinks : len(cache) - recent]
                    cache.remove(min(candidates, key=lambda p: score[p]))
                state[b, g] = (cache, score)
                held[-1][b][g] = list(cache)
    return held, {key: score for key, (_, score) in state.items()}


@pytest.mark.parametrize(
    ("T", "keep", "heavy", "sinks", "seed"),
    [(30, 0.5, 0.5, 0, 0), (41, 0.3, 0.5, 0, 1), (25, 0.4, 0.75, 2, 2), (20, 0.5, 1.0, 0, 3)],
)
def test_matches_naive_loop(T: int, keep: float, heavy: float, sinks: int, seed: int) -> None:
    """Prefill and 12 decode steps keep exactly the entries of the naive loop, per KV head, and
    the press's accumulated scores stay aligned with the entries it holds."""
    generator = torch.Generator().manual_seed(seed)
    config = Config(Budget(keep=keep, sinks=sinks), heavy=heavy)
    n = config.budget.tokens(T)
    recent = n - math.floor(heavy * n)
    prefill_attn = causal_attention(2, T, generator)
    rows = [row_attention(2, n + 1, generator, own=4.0) for _ in range(12)]
    press = make_press(config)
    ours = run_press(press, prefill_attn, rows)
    held, scores = naive_h2o(prefill_attn, rows, n, recent, sinks)
    assert [positions.tolist() for positions in ours] == held
    accumulated = press.state[0][2]  # type: ignore[index]
    for (b, g), score in scores.items():
        expected = [score[p] for p in held[-1][b][g]]
        torch.testing.assert_close(accumulated[b, g].tolist(), expected, rtol=1e-12, atol=1e-12)


# --- the official absolute budget: hh_size + recent_size -----------------------------------------


def test_absolute_budget_needs_both_sizes() -> None:
    with pytest.raises(AssertionError):
        Config(hh_size=4)
    with pytest.raises(AssertionError):
        Config(hh_size=-1, recent_size=2)
    assert Config(hh_size=0, recent_size=3).absolute and not Config().absolute


@pytest.mark.parametrize(
    ("T", "hh", "recent", "seed"),
    [(8, 6, 6, 0), (12, 4, 8, 1), (30, 5, 7, 2), (20, 0, 6, 3), (20, 6, 0, 4), (3, 2, 2, 5)],
)
def test_absolute_budget_matches_naive_loop(T: int, hh: int, recent: int, seed: int) -> None:
    """A prompt that fits is kept whole (and scored); as soon as the cache holds more than
    hh_size + recent_size entries, prefill or decode, the loop's entry is evicted."""
    generator = torch.Generator().manual_seed(seed)
    n = hh + recent
    prefill_attn = causal_attention(2, T, generator)
    rows = [
        row_attention(2, min(T, n) + 1 + min(step, max(0, n - T)), generator, own=4.0)
        for step in range(12)
    ]
    press = make_press(Config(hh_size=hh, recent_size=recent))
    ours = run_press(press, prefill_attn, rows)
    held, scores = naive_h2o(prefill_attn, rows, n, recent, 0)
    assert [positions.tolist() for positions in ours] == held
    assert ours[0].shape[2] == min(T, n)
    assert ours[-1].shape[2] == min(T + 12, n)
    accumulated = press.state[0][2]  # type: ignore[index]
    for (b, g), score in scores.items():
        expected = [score[p] for p in held[-1][b][g]]
        torch.testing.assert_close(accumulated[b, g].tolist(), expected, rtol=1e-12, atol=1e-12)


def test_absolute_budget_evicts_during_generation() -> None:
    """On the tiny model a 10-token prompt under a budget of 12 stays whole, then every layer
    holds exactly 12 entries from the third generated token on."""
    model = tiny_llama()
    press = make_press(Config(hh_size=4, recent_size=8))
    tokens, cache = generate(model, prompt(10), max_new_tokens=6, press=press)
    assert tokens.shape == (1, 6) and cache.seen == 15
    assert {cache.length(layer) for layer in range(TINY_LLAMA.depth)} == {12}


# --- the masked-attention variant (local_heavy_hitter_mask) ------------------------------------


def naive_local_heavy_hitter_mask(probs: list[list[float]], h: int) -> list[list[bool]]:
    """One head, plain loops: rows before h see the first block causally; row t >= h sees the
    h - 1 best accumulated scores (earlier first among equals) and itself, then adds its own
    attention and zeroes the scores it did not see."""
    T = len(probs)
    mask = [[i < h and j < h and j <= i for j in range(T)] for i in range(T)]
    score = [sum(probs[i][j] for i in range(min(h, T))) if j < h else 0.0 for j in range(T)]
    for t in range(h, T):
        row = set(sorted(range(T), key=lambda j: (-score[j], j))[: h - 1]) | {t}
        mask[t] = [j in row and j <= t for j in range(T)]
        score = [score[j] + probs[t][j] if j in row else 0.0 for j in range(T)]
    return mask


def causal_scores(B: int, heads: int, T: int, seed: int, dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(B, heads, T, T, generator=generator, dtype=torch.float64)
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).to(dtype)


@pytest.mark.parametrize(
    ("T", "h", "seed"), [(9, 3, 0), (16, 1, 1), (12, 5, 2), (6, 6, 3), (5, 8, 4)]
)
def test_local_heavy_hitter_mask_matches_naive_loop(T: int, h: int, seed: int) -> None:
    scores = causal_scores(2, 3, T, seed)
    mask = local_heavy_hitter_mask(scores, h)
    probs = scores.softmax(dim=-1)
    for b in range(2):
        for head in range(3):
            expected = naive_local_heavy_hitter_mask(probs[b, head].tolist(), h)
            assert mask[b, head].tolist() == expected
    # every row after the first block sees exactly h keys, the diagonal among them
    for t in range(h, T):
        assert (mask[..., t, :].sum(-1) == h).all() and mask[..., t, t].all()


def test_local_heavy_hitter_mask_hand_case() -> None:
    """One head, T = 4, h = 2. Attention rows (causal): r0 = [1], r1 = [.9 .1], r2 = [.2 .7 .1],
    r3 = [.5 .1 .1 .3]. Scores after rows 0-1: [1.9, .1]; row 2 keeps the best one (key 0) and
    itself: [1, 0, 1, 0]; scores become [2.1, 0, .1] (key 1 evicted); row 3 keeps key 0."""
    probs = torch.tensor(
        [[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0.2, 0.7, 0.1, 0], [0.5, 0.1, 0.1, 0.3]],
        dtype=torch.float64,
    )
    scores = probs.log()  # softmax(log p) = p; log 0 = -inf is the causal mask
    mask = local_heavy_hitter_mask(scores, 2).int().tolist()
    assert mask == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
    assert not local_heavy_hitter_mask(scores, 0).any()  # no heavy budget: nothing


def test_heavy_recent_mask_adds_the_band_and_stays_causal() -> None:
    """T = 10: heavy 0.2 -> 2 keys, recent 0.3 -> the 3 previous tokens and itself."""
    scores = causal_scores(1, 2, 10, 7)
    mask = heavy_recent_mask(scores, 0.2, 0.3)
    heavy = local_heavy_hitter_mask(scores, 2)
    for i in range(10):
        for j in range(10):
            band = i - 3 <= j <= i
            assert bool(mask[0, 0, i, j]) == (j <= i and (band or bool(heavy[0, 0, i, j])))
    assert not mask.triu(1).any()
    only_band = heavy_recent_mask(scores, 0.0, 0.3)
    assert only_band[0, 0].sum(-1).tolist() == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]


def test_masked_scores_in_half_precision() -> None:
    """fp16 scores: masked entries get fp16's minimum, kept ones are unchanged, the mask equals
    the one computed from the same scores in float32 for these well-separated values."""
    scores = causal_scores(1, 2, 12, 8, torch.float16)
    out = masked_scores(scores, 0.25, 0.25)
    keep = heavy_recent_mask(scores, 0.25, 0.25)
    assert out.dtype == torch.float16
    assert (out[~keep] == torch.finfo(torch.float16).min).all()
    assert torch.equal(out[keep], scores[keep])
    assert torch.equal(keep, heavy_recent_mask(scores.float(), 0.25, 0.25))


def test_smollm2_heavy_hitters_beat_a_plain_window(smollm2) -> None:  # noqa: F811
    """On the real model, H2O at a quarter of the prompt beats the recent-only window of the same
    budget, stays near the full cache, and decoding holds the budget in all 30 layers."""
    model, tokenizer = smollm2
    ids = tokenizer(TEXT, return_tensors="pt").input_ids

    full = continuation_perplexity(model, ids, 30)
    window = continuation_perplexity(
        model, ids, 30, recent_baseline.make_press(recent_baseline.config_for(0.25))
    )
    h2o = continuation_perplexity(model, ids, 30, make_press(config_for(0.25)))
    assert h2o < 0.7 * window
    assert h2o < 1.3 * full

    _, cache = generate(model, ids[:, :60], max_new_tokens=4, press=make_press(config_for(0.5)))
    assert {tuple(k.shape) for k in cache.keys} == {(1, 3, 30, 64)}
    assert cache.seen == 63
