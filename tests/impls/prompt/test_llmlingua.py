"""LLMLingua: the budget controller's allocation, exact token budgets, identity at keep 1, the
iterative token-level compression against a naive loop, and a planted fact on the real SmolLM2."""

from __future__ import annotations

import math
import re

import pytest
import torch

from reference_impls.prompt import llmlingua as ll
from reference_impls.prompt.scorer import LlamaScorer, smollm2_scorer, tiny_scorer

from ..llm.common import smollm2, tiny_llama  # noqa: F401

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


SEP = "\n\n"  # the official joint between instruction, demonstrations and question


def full_prompt(scorer: LlamaScorer) -> list[int]:
    """The prompt's ids as the module lays them out: the parts joined by the separator."""
    parts = [INSTRUCTION, *DEMOS, QUESTION]
    ids: list[int] = []
    for i, part in enumerate(parts):
        ids += (scorer.tokenize(SEP) if i else []) + scorer.tokenize(part)
    return ids


def whole_parts(scorer: LlamaScorer) -> int:
    """Tokens of the instruction and question with their joints (kept whole by default)."""
    return len(scorer.tokenize(INSTRUCTION + SEP)) + len(scorer.tokenize(SEP + QUESTION))


def naive_iterative(
    model, ids: list[int], pieces: list[tuple[int, int]], counts: list[int], score_next: bool
) -> list[int]:  # type: ignore[no-untyped-def]
    """Algorithm 2 with plain loops: each token's surprisal from its own forward pass over the
    compressed prefix and the segment up to it; a token's score is its own surprisal, or (the
    official rule) the next token's, the segment's last token first; keep the `count` best
    (earlier on ties)."""
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
        score = [*surprisal[1:], math.inf] if score_next else surprisal
        ranked = sorted(range(e - s), key=lambda i: (-score[i], i))
        kept.extend(sorted(s + i for i in ranked[:n]))
    return kept


class FixedScorer:
    """Every token's surprisal is a fixed number per id, whatever its context."""

    def __init__(self, surprisal: dict[int, float]) -> None:
        self.surprisal = surprisal

    def tokenize(self, text: str) -> list[int]:
        return [int(c) for c in text]

    def detokenize(self, ids: list[int]) -> str:
        return "".join(str(i) for i in ids)

    def token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        return -torch.tensor([[self.surprisal[int(i)] for i in ids[0]]], dtype=torch.float64)


def test_budget_controller_worked_example() -> None:
    """Paper eqs. 1-2 by hand, instruction and question whole (official): tau=0.5, L=120,
    tau_dems=(60-10-10)/100=0.4, limit 80; demonstrations by perplexity 1 (30), 2 (40), 3 (10)
    fit (80), 0 (20) would not; the demonstrations get 60-20=40."""
    plan = ll.budget_controller(10, [20, 30, 40, 10], 10, [1.0, 4.0, 3.0, 2.0], ll.Config(keep=0.5))
    assert plan == ll.Allocation((1, 2, 3), 10, 40, 10)


def test_budget_controller_with_shares_below_one() -> None:
    """tau_ins=0.85, tau_que=0.9: tau_dems=(60-8.5-9)/100=0.425, limit 85; 1, 2, 3 fit (80);
    the bonus (85-80)/20 lifts instruction and question to whole; demonstrations get 40."""
    config = ll.Config(keep=0.5, instruction_keep=0.85, question_keep=0.9)
    plan = ll.budget_controller(10, [20, 30, 40, 10], 10, [1.0, 4.0, 3.0, 2.0], config)
    assert plan == ll.Allocation((1, 2, 3), 10, 40, 10)
    tight = ll.Config(keep=0.1, instruction_keep=0.5, question_keep=0.5)
    small = ll.budget_controller(10, [20, 30, 40, 10], 10, [1.0, 4.0, 3.0, 2.0], tight)
    assert small.instruction + small.demos + small.question == 12  # ceil(0.1 * 120), cut
    whole = ll.budget_controller(10, [20, 30, 40, 10], 10, [1.0] * 4, ll.Config(keep=0.1))
    assert (whole.instruction, whole.demos, whole.question) == (10, 0, 10)  # never cut


def test_budget_controller_stops_at_the_first_demonstration_that_does_not_fit() -> None:
    """The highest-perplexity demonstration is too long: the loop stops there (paper's Break)."""
    plan = ll.budget_controller(10, [90, 5, 5], 10, [9.0, 1.0, 2.0], ll.Config(keep=0.5))
    assert plan.demonstrations == ()
    assert (plan.instruction, plan.demos, plan.question) == (10, 0, 10)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9])
def test_exact_budget(scorer: LlamaScorer, keep: float) -> None:
    """ceil(keep * L) tokens whenever the kept demonstrations can hold their share."""
    prompt = full_prompt(scorer)
    L = len(prompt)
    out = ll.compress(
        DEMOS, QUESTION, scorer, ll.Config(keep=keep, segment=16), instruction=INSTRUCTION
    )
    assert out.original_tokens == L
    assert out.compressed_tokens == len(out.ids) == math.ceil(keep * L)
    assert out.ratio == out.compressed_tokens / L
    assert list(out.ids) == [prompt[p] for p in out.positions]
    assert list(out.positions) == sorted(set(out.positions)), "order is kept"
    assert out.text == scorer.detokenize(out.ids)


def test_never_above_budget_unless_the_whole_parts_are(scorer: LlamaScorer) -> None:
    """When the demonstration stage keeps fewer tokens than the budget, all of them stay; the
    budget is only exceeded by an instruction and question (kept whole) longer than it."""
    short = over = 0
    for keep in (0.05, 0.15, 0.3, 0.6, 0.95):
        for k in (1.0, 1.5, 2.0):
            config = ll.Config(keep=keep, k=k, segment=16)
            out = ll.compress(DEMOS, QUESTION, scorer, config, instruction=INSTRUCTION)
            budget = math.ceil(keep * out.original_tokens)
            assert out.compressed_tokens <= max(budget, whole_parts(scorer))
            short += out.compressed_tokens < budget
            over += out.compressed_tokens > budget
    assert short > 0, "the grid should include prompts the coarse stage cut below the budget"
    assert over > 0, "and prompts whose question and instruction alone exceed it"


@pytest.mark.parametrize("keep", [0.05, 0.2, 0.5, 0.8])
def test_question_and_instruction_kept_whole(scorer: LlamaScorer, keep: float) -> None:
    """The official code never compresses the question or the instruction."""
    out = ll.compress(DEMOS, QUESTION, scorer, ll.Config(keep=keep), instruction=INSTRUCTION)
    assert out.text.startswith(INSTRUCTION + SEP) and out.text.endswith(SEP + QUESTION)
    L = out.original_tokens
    n_que = len(scorer.tokenize(SEP + QUESTION))
    assert list(out.positions[-n_que:]) == list(range(L - n_que, L))


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
        start = len(scorer.tokenize(INSTRUCTION + SEP))
        assert any(start <= p < start + len(context) for p in out.positions)


@pytest.mark.parametrize("keep", [1.0, 2.0])
def test_identity_at_keep_one(scorer: LlamaScorer, keep: float) -> None:
    """keep >= 1 returns the input unchanged."""
    out = ll.compress(DEMOS, QUESTION, scorer, ll.config_for(keep), instruction=INSTRUCTION)
    assert out.text == SEP.join([INSTRUCTION, *DEMOS, QUESTION])
    assert out.positions == tuple(range(out.original_tokens)) and out.ratio == 1.0
    joined = ll.compress(DEMOS, QUESTION, scorer, ll.Config(keep=1.0, separator=""))
    assert joined.text == "".join(DEMOS) + QUESTION  # no instruction: left out


def test_list_items_are_separated() -> None:
    """Sentences given as a list are joined by the separator, as officially, not run together."""
    scorer = FixedScorer({i: float(i) for i in range(10)})
    out = ll.compress(["12", "34"], "5", scorer, ll.Config(keep=1.0, separator="0"))  # type: ignore[arg-type]
    assert out.text == "1203405" and out.original_tokens == 7


def test_segments_cut_each_component_and_counts_add_up() -> None:
    assert ll.segments(5, 10, 4) == [(5, 9), (9, 13), (13, 15)]
    assert ll.segments(3, 0, 4) == []
    assert ll.split_counts([(0, 4), (4, 8), (8, 10)], 5) == [2, 2, 1]
    assert sum(ll.split_counts(ll.segments(0, 37, 8), 19)) == 19


@pytest.mark.parametrize("score_next", [True, False])
@pytest.mark.parametrize("segment", [7, 16, 200])
def test_iterative_compression_equals_naive_loop(
    scorer: LlamaScorer, segment: int, score_next: bool
) -> None:
    """Algorithm 2 (segments scored on the compressed prefix) equals the token-by-token loop."""
    ids = scorer.tokenize("".join(DEMOS))
    pieces = ll.segments(0, len(ids), segment)
    counts = ll.split_counts(pieces, len(ids) // 2)
    got = ll.iterative_compress(ids, pieces, counts, scorer, score_next)
    assert len(got) == len(ids) // 2
    assert got == naive_iterative(scorer.model, ids, pieces, counts, score_next)


def test_official_off_by_one_by_hand() -> None:
    """Surprisal by token: 0 -> 0, 1 -> 5, 2 -> 1, 3 -> 3. Tokens [0, 1, 2, 3], keep 2: by its
    own surprisal tokens 1 and 3; officially each token gets the next one's (5, 1, 3) and the
    last ranks first, so tokens 0 and 3."""
    scorer = FixedScorer({0: 0.0, 1: 5.0, 2: 1.0, 3: 3.0})
    ids = [0, 1, 2, 3]
    assert ll.iterative_compress(ids, [(0, 4)], [2], scorer, score_next=False) == [1, 3]  # type: ignore[arg-type]
    assert ll.iterative_compress(ids, [(0, 4)], [2], scorer) == [0, 3]  # type: ignore[arg-type]
    scores = ll.segment_scores(torch.tensor([0.0, 5.0, 1.0, 3.0]))
    assert scores.tolist() == [5.0, 1.0, 3.0, math.inf]


def test_token_level_is_conditioned_on_the_compressed_prefix(scorer: LlamaScorer) -> None:
    """Iterating matters: scoring the second segment on the full prefix picks other tokens."""
    ids = scorer.tokenize("".join(DEMOS))
    pieces = [(0, 40), (40, len(ids))]
    counts = [10, (len(ids) - 40) // 3]
    iterative = ll.iterative_compress(ids, pieces, counts, scorer)
    surprisal = -scorer.token_logprobs(torch.tensor([ids]))[0, 40:].double()
    one_pass = [40 + int(p) for p in ll.keep_highest(ll.segment_scores(surprisal), counts[1])]
    assert iterative[10:] != one_pass


def test_smollm2_keeps_a_planted_passkey(smollm2) -> None:  # noqa: F811
    """On the real SmolLM2, the demonstration with the passkey survives the budget controller
    and its digits the token-level pass at 50%; the question stays whole; list items apart."""
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
    key = "The pass key is 71432. Remember it. 71432 is the pass key.\n"
    demos = [filler, filler, key, filler, filler]
    scorer = smollm2_scorer()
    out = ll.compress(demos, "What is the pass key?", scorer, ll.Config(keep=0.5, segment=32))
    assert out.original_tokens < 300
    assert out.compressed_tokens == math.ceil(0.5 * out.original_tokens)
    # The official rule keeps a token when the next one is surprising: the digit before the
    # predictable "." goes ("7143. Remember."); scored by their own surprisal all digits stay.
    assert "7143" in out.text, out.text
    own = ll.Config(keep=0.5, segment=32, score_next=False)
    assert "71432" in ll.compress(demos, "What is the pass key?", scorer, own).text
    assert out.text.endswith("\n\nWhat is the pass key?")  # the question whole

    # Sentences given as a list stay apart (concatenated, they ran together: "applesThe sun").
    sentences = ["I like apples.", "Two dogs ran home after the long walk in the park."]
    sentences += ["The sun is hot today.", "My sister bought a red bicycle."]
    run_together = re.compile(r"[a-z.?][A-Z]")
    for keep in (0.3, 0.5, 0.7):
        text = ll.compress(sentences, "What did my sister buy?", scorer, ll.Config(keep=keep)).text
        assert not run_together.search(text), text
        assert text.endswith("\n\nWhat did my sister buy?")
    old = ll.Config(keep=0.5, separator="", score_next=False)
    assert run_together.search(ll.compress(sentences, "What did my sister buy?", scorer, old).text)
