"""LLMLingua: the budget controller's allocation, exact token budgets, identity at keep 1, the
iterative token-level compression against a naive loop, and a planted fact on the real SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.prompt import llmlingua as ll
from reference_impls.prompt.scorer import LlamaScorer, smollm2_scorer, tiny_scorer

from .common import smollm2, tiny_llama  # noqa: F401

INSTRUCTION = "Answer the sums.\n"
DEMOS = [
    "Q: 2+2? A: 4.\n",
    "Q: 13+5? A: 18.\n",
    "Q: what is the capital of France? A: Paris.\n",
    "Q: 7*6? A: 42.\n",
    "Q: 100-1? A: 99, as one less than a hundred.\n",
]
QUESTION = "Q: 9+1? A:"


@pytest.fixture(scope="module")
def scorer() -> LlamaScorer:
    return tiny_scorer(tiny_llama())


def lengths(scorer: LlamaScorer) -> tuple[int, list[int], int]:
    return (
        len(scorer.tokenize(INSTRUCTION)),
        [len(scorer.tokenize(d)) for d in DEMOS],
        len(scorer.tokenize(QUESTION)),
    )


def naive_iterative(
    model, ids: list[int], pieces: list[tuple[int, int]], counts: list[int]
) -> list[int]:  # type: ignore[no-untyped-def]
    """Algorithm 2 with plain loops: each token's surprisal from its own forward pass over the
    compressed prefix and the segment up to it; keep the `count` largest (earlier on ties)."""
    kept: list[int] = []
    for (s, e), n in zip(pieces, counts, strict=True):
        prefix = [ids[p] for p in kept]
        surprisal = []
        for t in range(s, e):
            seq = prefix + ids[s : t + 1]
            if len(seq) == 1:
                surprisal.append(0.0)  # no context: log-probability 0, as the scorer defines
                continue
            with torch.no_grad():
                logits = model(torch.tensor([seq[:-1]]))[0, -1].double()
            surprisal.append(-float(logits.log_softmax(-1)[seq[-1]]))
        ranked = sorted(range(e - s), key=lambda i: (-surprisal[i], i))
        kept.extend(sorted(s + i for i in ranked[:n]))
    return kept


def test_budget_controller_worked_example() -> None:
    """Paper eqs. 1-2 by hand: tau=0.5, L=120, tau_dems=(60-8.5-9)/100=0.425, limit 85;
    demonstrations by perplexity 1 (30), 2 (40), 3 (10) fit (80), 0 (20) would not; the bonus
    (85-80)/20 lifts instruction and question to whole; the demonstrations get 60-20=40."""
    plan = ll.budget_controller(10, [20, 30, 40, 10], 10, [1.0, 4.0, 3.0, 2.0], ll.Config(keep=0.5))
    assert plan == ll.Allocation((1, 2, 3), 10, 40, 10)


def test_budget_controller_stops_at_the_first_demonstration_that_does_not_fit() -> None:
    """The highest-perplexity demonstration is too long: the loop stops there (paper's Break)."""
    plan = ll.budget_controller(10, [90, 5, 5], 10, [9.0, 1.0, 2.0], ll.Config(keep=0.5))
    assert plan.demonstrations == ()
    assert (plan.instruction, plan.demos, plan.question) == (10, 0, 10)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9])
def test_exact_budget(scorer: LlamaScorer, keep: float) -> None:
    """ceil(keep * L) tokens whenever the kept demonstrations can hold their share."""
    L_ins, L_dems, L_que = lengths(scorer)
    L = L_ins + sum(L_dems) + L_que
    out = ll.compress(
        DEMOS, QUESTION, scorer, ll.Config(keep=keep, segment=16), instruction=INSTRUCTION
    )
    assert out.original_tokens == L
    assert out.compressed_tokens == len(out.ids) == math.ceil(keep * L)
    assert out.ratio == out.compressed_tokens / L
    prompt = scorer.tokenize(INSTRUCTION) + [t for d in DEMOS for t in scorer.tokenize(d)]
    prompt += scorer.tokenize(QUESTION)
    assert list(out.ids) == [prompt[p] for p in out.positions]
    assert list(out.positions) == sorted(set(out.positions)), "order is kept"
    assert out.text == scorer.detokenize(out.ids)


def test_never_above_budget(scorer: LlamaScorer) -> None:
    """When the demonstration stage keeps fewer tokens than the budget, all of them stay."""
    short = 0
    for keep in (0.05, 0.15, 0.3, 0.6, 0.95):
        for k in (1.0, 1.5, 2.0):
            config = ll.Config(keep=keep, k=k, segment=16)
            out = ll.compress(DEMOS, QUESTION, scorer, config, instruction=INSTRUCTION)
            budget = math.ceil(keep * out.original_tokens)
            assert out.compressed_tokens <= budget
            short += out.compressed_tokens < budget
    assert short > 0, "the grid should include prompts the coarse stage cut below the budget"


def test_without_coarse_stage_all_demonstrations_compete(scorer: LlamaScorer) -> None:
    out = ll.compress(
        DEMOS, QUESTION, scorer, ll.Config(keep=0.4, coarse=False), instruction=INSTRUCTION
    )
    assert out.compressed_tokens == math.ceil(0.4 * out.original_tokens)


def test_a_single_demonstration_is_never_dropped_whole(scorer: LlamaScorer) -> None:
    """A plain-string context skips the demonstration stage and meets the budget exactly."""
    context = "".join(DEMOS)
    for keep in (0.2, 0.5):
        out = ll.compress(context, QUESTION, scorer, ll.Config(keep=keep), instruction=INSTRUCTION)
        assert out.compressed_tokens == math.ceil(keep * out.original_tokens)
        start = len(scorer.tokenize(INSTRUCTION))
        assert any(start <= p < start + len(context) for p in out.positions)


@pytest.mark.parametrize("keep", [1.0, 2.0])
def test_identity_at_keep_one(scorer: LlamaScorer, keep: float) -> None:
    """keep >= 1 returns the input unchanged."""
    out = ll.compress(DEMOS, QUESTION, scorer, ll.config_for(keep), instruction=INSTRUCTION)
    assert out.text == INSTRUCTION + "".join(DEMOS) + QUESTION
    assert out.positions == tuple(range(out.original_tokens)) and out.ratio == 1.0


def test_segments_cut_each_component_and_counts_add_up() -> None:
    assert ll.segments(5, 10, 4) == [(5, 9), (9, 13), (13, 15)]
    assert ll.segments(3, 0, 4) == []
    assert ll.split_counts([(0, 4), (4, 8), (8, 10)], 5) == [2, 2, 1]
    assert sum(ll.split_counts(ll.segments(0, 37, 8), 19)) == 19


@pytest.mark.parametrize("segment", [7, 16, 200])
def test_iterative_compression_equals_naive_loop(scorer: LlamaScorer, segment: int) -> None:
    """Algorithm 2 (segments scored on the compressed prefix) equals the token-by-token loop."""
    ids = scorer.tokenize("".join(DEMOS))
    pieces = ll.segments(0, len(ids), segment)
    counts = ll.split_counts(pieces, len(ids) // 2)
    got = ll.iterative_compress(ids, pieces, counts, scorer)
    assert len(got) == len(ids) // 2
    assert got == naive_iterative(scorer.model, ids, pieces, counts)


def test_token_level_is_conditioned_on_the_compressed_prefix(scorer: LlamaScorer) -> None:
    """Iterating matters: scoring the second segment on the full prefix picks other tokens."""
    ids = scorer.tokenize("".join(DEMOS))
    pieces = [(0, 40), (40, len(ids))]
    counts = [10, (len(ids) - 40) // 3]
    iterative = ll.iterative_compress(ids, pieces, counts, scorer)
    surprisal = -scorer.token_logprobs(torch.tensor([ids]))[0, 40:].double()
    one_pass = [40 + int(p) for p in ll.keep_highest(surprisal, counts[1])]
    assert iterative[10:] != one_pass


def test_smollm2_keeps_a_planted_passkey(smollm2) -> None:  # noqa: F811
    """On the real SmolLM2, the demonstration with the passkey survives the budget controller
    and its digits survive the token-level pass at 50%."""
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
    key = "The pass key is 71432. Remember it. 71432 is the pass key.\n"
    demos = [filler, filler, key, filler, filler]
    out = ll.compress(
        demos, "What is the pass key?", smollm2_scorer(), ll.Config(keep=0.5, segment=32)
    )
    assert out.original_tokens < 300
    assert out.compressed_tokens == math.ceil(0.5 * out.original_tokens)
    assert "71432" in out.text, out.text
