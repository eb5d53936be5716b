"""FastGen: per-head policies by profiling, exact per-head counts, naive loops, the real model."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.kv import fastgen
from reference_impls.kv.base import Budget
from reference_impls.llm.llama import TINY_LLAMA, KVCache, PressContext, generate, perplexity

from ..llm.common import prompt, smollm2, tiny_llama  # noqa: F401

SPECIAL = (0, 1, 2)
PUNCT = (3, 4, 5, 6, 7, 8)
LOCAL_POLICY = fastgen.POLICIES.index("special+punct+frequent+local")


def config(**changes: object) -> fastgen.Config:
    settings: dict = {"recovery": 0.9, "special_ids": SPECIAL, "punct_ids": PUNCT}
    settings.update(changes)
    return fastgen.Config(**settings)


class Recorder:
    """Wraps a press: records the attention it sees and the layer state before each call."""

    def __init__(self, press: fastgen.FastGenPress) -> None:
        self.press = press
        self.attn: dict[int, torch.Tensor] = {}
        self.before: dict[int, object] = {}

    def prefill(self, ctx: PressContext) -> tuple[torch.Tensor, torch.Tensor]:
        self.attn[ctx.layer] = ctx.attn
        return self.press.prefill(ctx)

    def decode(self, ctx: PressContext) -> tuple[torch.Tensor, torch.Tensor]:
        self.attn[ctx.layer] = ctx.attn
        self.before[ctx.layer] = self.press.state[ctx.layer]
        return self.press.decode(ctx)


def ranked(scores: list[float], best_first: bool = True) -> list[int]:
    """Indices by score (best first, or worst first), earlier index first on ties."""
    sign = -1.0 if best_first else 1.0
    return sorted(range(len(scores)), key=lambda j: (sign * scores[j], j))


def naive_profile(
    attn: torch.Tensor,
    special: list[list[bool]],
    punct: list[list[bool]],
    kv_heads: int,
    c: fastgen.Config,
    cap: int | None,
) -> tuple[list[list[int]], list[list[set[int]]], list[list[list[float]]]]:
    """Section 3.3-3.4 with plain loops: per batch row and KV head, the chosen policy, the set it
    keeps, and the accumulated attention."""
    B, H, T, _ = attn.shape
    groups = H // kv_heads
    local = math.ceil(c.local_ratio * T - 1e-9)
    frequent = math.ceil(c.frequent_ratio * T - 1e-9)
    policies, kept, scores = [], [], []
    for b in range(B):
        row_policies, row_kept, row_scores = [], [], []
        for g in range(kv_heads):
            heads = range(g * groups, (g + 1) * groups)
            score = [
                sum(float(attn[b, h, i, j]) for h in heads for i in range(T)) / groups
                for j in range(T)
            ]
            sp = {j for j in range(T) if special[b][j]}
            pu = {j for j in range(T) if punct[b][j]}
            heavy = set(ranked(score)[:frequent])
            recent_set = {j for j in range(T) if j >= T - local}
            sets = [sp, sp | pu, sp | pu | heavy, sp | pu | heavy | recent_set, set(range(T))]
            fixed = [sp, sp | pu, sp | pu | heavy, sp | pu | heavy]
            feasible = []
            for p in range(4):
                ok = True
                for h in heads:
                    mass = 0.0
                    for i in range(T):
                        for j in range(i + 1):
                            if j in fixed[p] or (p == 3 and i - j < local):
                                mass += float(attn[b, h, i, j])
                    ok = ok and mass / T >= c.recovery
                feasible.append(ok)
            feasible.append(True)
            fits = [cap is None or len(s) <= cap for s in sets]
            candidates = [p for p in range(5) if feasible[p] and fits[p]]
            if candidates:
                choice = min(candidates, key=lambda p: (len(sets[p]), p))
                chosen = sets[choice]
            elif any(fits):
                choice = max(p for p in range(5) if fits[p])
                chosen = sets[choice]
            else:
                choice = fastgen.FALLBACK
                chosen = set(ranked(score)[:cap])
            row_policies.append(choice)
            row_kept.append(chosen)
            row_scores.append(score)
        policies.append(row_policies)
        kept.append(row_kept)
        scores.append(row_scores)
    return policies, kept, scores


def naive_fill(kept: set[int], score: list[float], m: int) -> list[int]:
    """The policy's entries plus the least-attended others, up to m, in order."""
    others = [j for j in ranked(score, best_first=False) if j not in kept]
    return sorted(kept | set(others[: m - len(kept)]))


def structured_attention(seed: int, B: int, H: int, T: int, special, punct) -> torch.Tensor:
    """Causal attention whose heads follow the paper's structures: special-token heads,
    punctuation heads, local heads and broad ones, with random noise."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, H, T, T, generator=generator, dtype=torch.float64)
    rows = torch.arange(T)
    band = ((rows[:, None] - rows[None, :]) < 3).double()
    kinds = ["special", "special", "punct", "local", "broad", "special"]
    for b in range(B):
        sp = torch.tensor(special[b], dtype=torch.float64)
        pu = torch.tensor(punct[b], dtype=torch.float64)
        for h in range(H):
            kind = kinds[(h + b) % len(kinds)]
            if kind == "special":
                logits[b, h] += 7 * sp
            elif kind == "punct":
                logits[b, h] += 6 * (sp + pu)
            elif kind == "local":
                logits[b, h] += 6 * band
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return logits.masked_fill(future, float("-inf")).softmax(dim=-1)


def flags(ids: torch.Tensor) -> tuple[list[list[bool]], list[list[bool]]]:
    return (
        [[int(t) in SPECIAL for t in row] for row in ids],
        [[int(t) in PUNCT for t in row] for row in ids],
    )


@pytest.mark.parametrize("cap", [None, 12, 3])
def test_profile_matches_a_naive_loop(cap: int | None) -> None:
    """Policies, kept sets and fillers equal the loop version on structured random attention."""
    B, H, kv_heads, T = 2, 6, 2, 24
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 30, (B, T), generator=generator)
    ids[:, 0] = 0  # a begin-of-sequence special token
    special, punct = flags(ids)
    attn = structured_attention(1, B, H, T, special, punct)
    c = config(recovery=0.8)
    policy, kept, scores = fastgen.profile(
        attn,
        torch.isin(ids, torch.tensor(SPECIAL)),
        torch.isin(ids, torch.tensor(PUNCT)),
        kv_heads,
        c,
        cap,
    )
    want_policy, want_kept, want_scores = naive_profile(attn, special, punct, kv_heads, c, cap)
    assert policy.tolist() == want_policy
    for b in range(B):
        for g in range(kv_heads):
            assert set(kept[b, g].nonzero().flatten().tolist()) == want_kept[b][g]
            torch.testing.assert_close(
                scores[b, g], torch.tensor(want_scores[b][g], dtype=torch.float64)
            )
    m = cap if cap is not None else max(len(s) for row in want_kept for s in row)
    index = fastgen.fill_index(kept, scores, m)
    for b in range(B):
        for g in range(kv_heads):
            want = naive_fill(want_kept[b][g], want_scores[b][g], m)
            assert index[b, g].tolist() == want
    if cap is None:
        assert len({p for row in want_policy for p in row}) >= 2, "a single policy: weak test"


def test_tokens_are_recognised_by_layer_zero_input() -> None:
    """bind(model): the special and punctuation flags equal the ids' membership, prompt and
    generated tokens alike."""
    model = tiny_llama()
    ids = prompt(40)
    press = fastgen.make_press(config()).bind(model)
    tokens, _ = generate(model, ids, max_new_tokens=5, press=press)
    fed = torch.cat([ids, tokens[:, :-1]], dim=1)  # the last token is never fed back
    assert press.special is not None and press.punct is not None
    assert press.special.tolist() == torch.isin(fed, torch.tensor(SPECIAL)).tolist()
    assert press.punct.tolist() == torch.isin(fed, torch.tensor(PUNCT)).tolist()
    assert bool(press.special.any()) and bool(press.punct.any())


def test_unbound_press_with_token_ids_refuses() -> None:
    """Configured ids without bind(model) are an error, not a silent empty policy."""
    model = tiny_llama()
    with pytest.raises(RuntimeError, match="bind"), torch.no_grad():
        model(prompt(20), KVCache(), fastgen.make_press(config()))


def test_per_head_counts_are_exact_and_the_layer_stores_the_largest() -> None:
    """Each KV head keeps exactly its policy's set (the loop version's), plus its least-attended
    fillers up to the layer's largest count; special tokens are in every head."""
    model = tiny_llama()
    ids = prompt(40)
    special, punct = flags(ids)
    full, cache = KVCache(), KVCache()
    recorder = Recorder(fastgen.make_press(config()).bind(model))
    with torch.no_grad():
        model(ids, full)
        model(ids, cache, recorder)
    chosen = set()
    for layer in range(TINY_LLAMA.depth):
        stats = recorder.press.stats[layer]
        want_policy, want_kept, want_scores = naive_profile(
            recorder.attn[layer], special, punct, TINY_LLAMA.kv_heads, config(), None
        )
        counts = [len(s) for s in want_kept[0]]
        assert stats.policy.tolist() == want_policy
        assert stats.policy_kept.tolist() == [counts]
        assert stats.stored == max(counts) == cache.length(layer)
        chosen.update(want_policy[0])
        for head in range(TINY_LLAMA.kv_heads):
            positions = naive_fill(want_kept[0][head], want_scores[0][head], max(counts))
            torch.testing.assert_close(
                cache.keys[layer][0, head], full.keys[layer][0, head, positions]
            )
            assert {j for j in range(40) if special[0][j]} <= set(positions)
    assert len(chosen) >= 2, f"the tiny model chose only {chosen}: weak test"


def test_budget_mode_stores_exactly_the_budget() -> None:
    """config_for(keep): every layer stores exactly Budget.tokens(T) entries per KV head, and no
    policy keeps more."""
    model = tiny_llama()
    for keep in (0.25, 0.5, 0.75):
        press = fastgen.make_press(
            fastgen.Config(budget=Budget(keep=keep), special_ids=SPECIAL, punct_ids=PUNCT)
        ).bind(model)
        cache = KVCache()
        with torch.no_grad():
            model(prompt(40), cache, press)
        n = Budget(keep=keep).tokens(40)
        for layer in range(TINY_LLAMA.depth):
            assert cache.length(layer) == press.stats[layer].stored == n
            assert int(press.stats[layer].policy_kept.max()) <= n


@pytest.mark.parametrize("mode", ["paper", "budget"])
def test_decoding_reapplies_each_policy_like_a_naive_loop(mode: str) -> None:
    """Every step: the new token joins, each head's policy is re-applied to what it holds (local
    window, growing heavy hitters, special and punctuation entries), the layer never shrinks
    and grows by at most one entry; the stored positions equal the loop version's."""
    model = tiny_llama()
    ids = prompt(40)
    c = config(recovery=0.7, local_ratio=0.2, frequent_ratio=0.2)
    if mode == "budget":
        c = config(recovery=0.7, local_ratio=0.2, frequent_ratio=0.2, budget=Budget(keep=0.5))
    recorder = Recorder(fastgen.make_press(c).bind(model))
    cache, evictions = KVCache(), 0
    with torch.no_grad():
        logits = model(ids, cache, recorder)
        fed = ids
        for _ in range(6):
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            fed = torch.cat([fed, token], dim=1)
            lengths = [cache.length(layer) for layer in range(TINY_LLAMA.depth)]
            logits = model(token, cache, recorder)
            special, punct = flags(fed)
            length = fed.shape[1]
            frequent = math.ceil(0.2 * length - 1e-9)
            for layer in range(TINY_LLAMA.depth):
                before = recorder.before[layer]
                attn = recorder.attn[layer][0]  # (H, 1, S)
                groups = TINY_LLAMA.heads // TINY_LLAMA.kv_heads
                per_head = []
                for g in range(TINY_LLAMA.kv_heads):
                    pos = [*before.pos[0, g].tolist(), length - 1]
                    score = [*before.scores[0, g].tolist(), 0.0]
                    for s in range(len(pos)):
                        heads = range(g * groups, (g + 1) * groups)
                        score[s] += sum(float(attn[h, 0, s]) for h in heads) / groups
                    sp = {s for s, p in enumerate(pos) if special[0][p]}
                    pu = {s for s, p in enumerate(pos) if punct[0][p]}
                    heavy = set(ranked(score)[:frequent])
                    near = {s for s, p in enumerate(pos) if p >= length - before.local}
                    sets = [sp, sp | pu, sp | pu | heavy, sp | pu | heavy | near]
                    sets.append(set(range(len(pos))))
                    p = int(before.policy[0, g])
                    kept = set(ranked(score)[: before.cap]) if p == fastgen.FALLBACK else sets[p]
                    per_head.append((pos, score, kept, p))
                stored = max(before.pos.shape[2], *(len(k) for _, _, k, _ in per_head))
                assert lengths[layer] <= stored <= lengths[layer] + 1
                evictions += stored == lengths[layer]
                assert cache.length(layer) == stored
                for g, (pos, score, kept, p) in enumerate(per_head):
                    slots = naive_fill(kept, score, stored)
                    held = recorder.press.state[layer].pos[0, g].tolist()
                    assert held == [pos[s] for s in slots]
                    if p != fastgen.FALLBACK:  # every policy keeps the special tokens it holds
                        assert {q for q in pos if special[0][q]} <= set(held)
    policies = {int(p) for s in recorder.press.stats.values() for p in s.policy.flatten()}
    assert policies - {fastgen.FULL}, "only full heads: the decode test tests nothing"
    assert evictions > 0, "no step evicted anything"


def test_smollm2_profiles_heads_and_stays_close_to_the_full_cache(smollm2) -> None:  # noqa: F811
    """On the real model with its tokenizer's special and punctuation tokens: the flags match the
    ids, heads take several policies, each layer stores its largest policy count, special tokens
    are kept everywhere; at recovery 0.98 the policies keep under 90% of the entries and the
    answer's perplexity stays within 25% of the full cache's; budget mode stores exactly."""
    model, tokenizer = smollm2
    special_ids, punct_ids = fastgen.token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in special_ids
    assert tokenizer.convert_tokens_to_ids(".") in punct_ids
    text = (
        "Remember this: the pass key is 48213. The weather was mild and the streets were quiet. "
        "A cat slept on the warm stones by the door. Someone in the next house was practising "
        "the piano. What is the pass key?"
    )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    T = ids.shape[1]
    paper = fastgen.Config(recovery=0.98, special_ids=special_ids, punct_ids=punct_ids)
    press = fastgen.make_press(paper).bind(model)
    cache = KVCache()
    with torch.no_grad():
        model(ids, cache, press)
    assert press.special is not None and press.punct is not None
    assert press.special[0].tolist() == torch.isin(ids[0], torch.tensor(special_ids)).tolist()
    assert press.punct[0].tolist() == torch.isin(ids[0], torch.tensor(punct_ids)).tolist()
    chosen = {int(p) for s in press.stats.values() for p in s.policy.flatten()}
    assert len(chosen) >= 2
    specials = set(torch.isin(ids[0], torch.tensor(special_ids)).nonzero().flatten().tolist())
    for layer in range(30):
        stats = press.stats[layer]
        assert cache.length(layer) == stats.stored == int(stats.policy_kept.max())
        for head in range(3):
            assert specials <= set(press.state[layer].pos[0, head].tolist())
    paper_memory = sum(int(s.policy_kept.sum()) for s in press.stats.values())
    assert paper_memory < 0.9 * 30 * 3 * T
    answer = tokenizer("The pass key is 48213.", return_tensors="pt").input_ids
    both = torch.cat([ids, answer], dim=1)
    profiled = perplexity(model, both, T, fastgen.make_press(paper).bind(model))
    assert profiled < 1.25 * perplexity(model, both, T)
    budget = fastgen.Config(budget=Budget(keep=0.5), special_ids=special_ids, punct_ids=punct_ids)
    press = fastgen.make_press(budget).bind(model)
    cache = KVCache()
    with torch.no_grad():
        model(ids, cache, press)
    assert [cache.length(layer) for layer in range(30)] == [Budget(keep=0.5).tokens(T)] * 30
