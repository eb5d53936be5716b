"""LongLLMLingua: exact budgets, instruction and question never dropped, identity at keep 1,
reordering and dynamic ratios, the whole pipeline against a naive loop, and a question-aware
passkey retrieval on the real SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.prompt import longllmlingua as lll
from reference_impls.prompt.scorer import LlamaScorer, apportion, smollm2_scorer, tiny_scorer

from ..llm.common import smollm2, tiny_llama  # noqa: F401

INSTRUCTION = "Use the notes.\n"
DOCS = [
    "Note 1: the red fox jumps over the dog.\n",
    "Note 2: code 5512 opens the blue gate.\n",
    "Note 3: rain falls, rivers rise, fish swim happily.\n",
    "Note 4: bread, milk and eggs are on the list.\n",
    "Note 5: the gate code was changed in May.\n",
]
QUESTION = "Q: what opens the gate?"


@pytest.fixture(scope="module")
def scorer() -> LlamaScorer:
    return tiny_scorer(tiny_llama())


def prompt_ids(scorer: LlamaScorer) -> tuple[list[int], list[list[int]], list[int]]:
    return (
        scorer.tokenize(INSTRUCTION),
        [scorer.tokenize(d) for d in DOCS],
        scorer.tokenize(QUESTION),
    )


def last_logprob(model, seq: list[int]) -> float:  # type: ignore[no-untyped-def]
    """log p(last token | the others) from one forward pass; 0 with no context."""
    if len(seq) == 1:
        return 0.0
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]]))[0, -1].double()
    return float(logits.log_softmax(-1)[seq[-1]])


def naive_longllmlingua(scorer: LlamaScorer, config: lll.Config) -> list[int]:
    """The paper's pipeline with plain loops over documents and tokens, one forward per token."""
    model = scorer.model
    ins, docs, q = prompt_ids(scorer)
    query = q + scorer.tokenize(config.restrict)
    r = []
    for d in docs:
        total = 0.0
        for i in range(len(query)):
            total -= last_logprob(model, d + query[: i + 1])
        r.append(total / len(query))
    ranked = sorted(range(len(docs)), key=lambda k: (r[k], k))
    L = len(ins) + sum(len(d) for d in docs) + len(q)
    budget = math.ceil(config.keep * L - 1e-9) - len(ins) - len(q)
    op, value = config.context_budget[0], float(config.context_budget[1:])
    target = budget + value if op == "+" else budget - value if op == "-" else budget * value
    kept_docs = []
    for k in ranked:
        target -= len(docs[k])
        kept_docs.append(k)
        if target < 0:
            break
    counts = lll.dynamic_counts([len(docs[k]) for k in kept_docs], budget, config.dynamic)
    count = dict(zip(kept_docs, counts, strict=True))
    order = kept_docs if config.reorder else sorted(kept_docs)
    starts = [len(ins)]
    for d in docs:
        starts.append(starts[-1] + len(d))
    positions = list(range(len(ins)))
    kept_ids: list[int] = []
    for k in order:
        d, n = docs[k], count[k]
        pieces = [(s, min(s + config.segment, len(d))) for s in range(0, len(d), config.segment)]
        sizes = [e - s for s, e in pieces]
        for (s, e), m in zip(
            pieces, apportion([n * x / len(d) for x in sizes], sizes, n), strict=True
        ):
            scores = []
            for t in range(s, e):
                seen = kept_ids + d[s : t + 1]
                scores.append(last_logprob(model, q + seen) - last_logprob(model, seen))
            best = sorted(range(e - s), key=lambda i: (-scores[i], i))[:m]
            for i in sorted(best):
                positions.append(starts[k] + s + i)
                kept_ids.append(d[s + i])
    positions.extend(range(starts[-1], starts[-1] + len(q)))
    return positions


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9])
def test_exact_budget_and_question_kept(scorer: LlamaScorer, keep: float) -> None:
    """ceil(keep * L) tokens; the instruction first and the question last, both whole."""
    ins, docs, q = prompt_ids(scorer)
    full = ins + [t for d in docs for t in d] + q
    out = lll.compress(
        DOCS, QUESTION, scorer, lll.Config(keep=keep, segment=12), instruction=INSTRUCTION
    )
    assert out.original_tokens == len(full)
    assert out.compressed_tokens == len(out.ids) == math.ceil(keep * len(full))
    assert list(out.positions[: len(ins)]) == list(range(len(ins)))
    assert list(out.positions[-len(q) :]) == list(range(len(full) - len(q), len(full)))
    assert len(set(out.positions)) == len(out.positions)
    assert list(out.ids) == [full[p] for p in out.positions]
    assert out.text == scorer.detokenize(out.ids) and out.text.endswith(QUESTION)


def test_tiny_budget_keeps_only_instruction_and_question(scorer: LlamaScorer) -> None:
    """Below the protected length, every document goes and nothing protected does."""
    ins, _, q = prompt_ids(scorer)
    out = lll.compress(DOCS, QUESTION, scorer, lll.Config(keep=0.05), instruction=INSTRUCTION)
    assert out.text == INSTRUCTION + QUESTION
    assert out.compressed_tokens == len(ins) + len(q)


@pytest.mark.parametrize("keep", [1.0, 3.0])
def test_identity_at_keep_one(scorer: LlamaScorer, keep: float) -> None:
    """keep >= 1 returns the input unchanged (no reordering either)."""
    out = lll.compress(DOCS, QUESTION, scorer, lll.config_for(keep), instruction=INSTRUCTION)
    assert out.text == INSTRUCTION + "".join(DOCS) + QUESTION
    assert out.positions == tuple(range(out.original_tokens)) and out.ratio == 1.0


def test_documents_appear_in_rank_order(scorer: LlamaScorer) -> None:
    """With reordering the kept documents follow r_k (lowest first); without, prompt order."""
    ins, docs, q = prompt_ids(scorer)
    ranked = lll.rank_documents(docs, q + scorer.tokenize(lll.RESTRICT), scorer)
    starts = [len(ins)]
    for d in docs:
        starts.append(starts[-1] + len(d))

    def doc_order(positions: tuple[int, ...]) -> list[int]:
        seen: list[int] = []
        for p in positions:
            k = next((k for k in range(len(docs)) if starts[k] <= p < starts[k + 1]), None)
            if k is not None and k not in seen:
                seen.append(k)
        return seen

    for reorder in (True, False):
        config = lll.Config(keep=0.6, reorder=reorder)
        out = lll.compress(DOCS, QUESTION, scorer, config, instruction=INSTRUCTION)
        order = doc_order(out.positions)
        assert order == ([k for k in ranked if k in order] if reorder else sorted(order))
    assert ranked != sorted(ranked), "this prompt should exercise a real reordering"


def test_keep_documents_includes_the_crossing_one() -> None:
    """The official rule: subtract each document, stop once the allowance is below zero."""
    assert lll.keep_documents([2, 0, 1], [10, 10, 10], budget=6, context_budget="*2") == [2, 0]
    # allowance 10 - 10 = 0 is not below zero: the next document is taken too
    assert lll.keep_documents([2, 0, 1], [10, 10, 10], budget=5, context_budget="*2") == [2, 0]
    assert lll.keep_documents([2, 0, 1], [10, 10, 10], budget=0, context_budget="*2") == [2]
    assert lll.keep_documents([2, 0, 1], [10, 10, 10], budget=6) == [2, 0, 1]  # "+100"
    assert lll.keep_documents([2, 0, 1], [10, 10, 10], budget=25, context_budget="-6") == [2, 0]
    assert lll.coarse_target(30, "*1.5") == 45.0
    with pytest.raises(AssertionError):
        lll.Config(context_budget="+x")


def test_dynamic_offsets_run_from_plus_to_minus_dtau() -> None:
    assert lll.dynamic_offsets(3, 0.3) == [0.3, 0.0, -0.3]
    assert lll.dynamic_offsets(1, 0.3) == [0.0]
    assert lll.dynamic_offsets(0, 0.3) == []


def test_dynamic_counts_follow_the_linear_schedule() -> None:
    """Shares tau + dtau * (1 - 2i/(K'-1)): 0.8, 0.5, 0.2 of 10 tokens around tau = 0.5."""
    assert lll.dynamic_counts([10, 10, 10], 15, 0.3) == [8, 5, 2]
    assert lll.dynamic_counts([10, 10, 10], 15, 0.0) == [5, 5, 5]
    assert lll.dynamic_counts([10], 4, 0.3) == [4]
    # The best document is capped at its length; its surplus goes to the next one.
    assert lll.dynamic_counts([10, 10], 18, 0.3) == [10, 8]


@pytest.mark.parametrize(
    "config",
    [lll.Config(keep=0.5, segment=9), lll.Config(keep=0.4, segment=200, reorder=False)],
    ids=["segments-reordered", "one-segment-original-order"],
)
def test_equals_naive_loop(scorer: LlamaScorer, config: lll.Config) -> None:
    """Ranking, coarse selection, dynamic ratios and contrastive token selection equal the
    plain-loop version token for token."""
    out = lll.compress(DOCS, QUESTION, scorer, config, instruction=INSTRUCTION)
    assert list(out.positions) == naive_longllmlingua(scorer, config)


def test_smollm2_finds_the_passkey_document(smollm2) -> None:  # noqa: F811
    """On the real SmolLM2, the question ranks the passkey document first among filler, it is
    placed first, keeps the largest share, and the passkey survives 50% compression."""
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
    key = "The pass key is 71432.\n"
    docs = [filler, filler, key, filler, filler]
    question = "Question: What is the pass key?\nAnswer:"
    scorer = smollm2_scorer()
    doc_ids = [scorer.tokenize(d) for d in docs]
    query = scorer.tokenize(question) + scorer.tokenize(lll.RESTRICT)
    assert lll.rank_documents(doc_ids, query, scorer)[0] == 2
    out = lll.compress(docs, question, scorer, lll.Config(keep=0.5))
    assert out.original_tokens < 300
    assert out.compressed_tokens == math.ceil(0.5 * out.original_tokens)
    assert "71432" in out.text, out.text
    assert out.text.endswith(question)
    starts = [0]
    for d in doc_ids:
        starts.append(starts[-1] + len(d))
    share = [
        sum(starts[k] <= p < starts[k + 1] for p in out.positions) / len(doc_ids[k])
        for k in range(5)
    ]
    assert starts[2] <= out.positions[0] < starts[3], "the passkey document comes first"
    assert share[2] == max(share) and share[2] > 0.5 > min(share)
