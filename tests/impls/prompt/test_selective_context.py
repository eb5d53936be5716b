"""Selective Context, and the shared prompt-compression scorer: exact budgets, identity at keep 1,
whole words, equality with a naive loop, and a planted fact surviving on the real SmolLM2."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from reference_impls.prompt import selective_context as sc
from reference_impls.prompt.scorer import (
    CharTokenizer,
    LlamaScorer,
    apportion,
    keep_highest,
    smollm2_scorer,
    tiny_scorer,
)

from ..llm.common import smollm2, tiny_llama  # noqa: F401

CONTEXT = (
    "The cat sat on the mat. The dog ran in the park, and the cat slept. "
    "Key 4821 opens door 7. The sun is warm; the sky is blue."
)
QUESTION = " Q: which key?"


@pytest.fixture(scope="module")
def scorer() -> LlamaScorer:
    return tiny_scorer(tiny_llama())


def naive_logprobs(model, ids: list[int], bos: int | None = None) -> list[float]:  # type: ignore[no-untyped-def]
    """log p(x_t | x_<t) one prefix at a time; 0 for the first token unless a BOS conditions it."""
    seq = ([bos] if bos is not None else []) + ids
    out = [] if bos is not None else [0.0]
    with torch.no_grad():
        for t in range(1, len(seq)):
            logits = model(torch.tensor([seq[:t]]))[0, -1].double()
            out.append(float(logits.log_softmax(-1)[seq[t]]))
    return out


def naive_selective_context(
    scorer: LlamaScorer, text: str, question: str, config: sc.Config
) -> list[int]:
    """The paper's filter with plain loops: per-token self-information, units, percentile cut."""
    ids, q = scorer.tokenize(text), scorer.tokenize(question)
    info = [-lp for lp in naive_logprobs(scorer.model, ids)]
    units: list[list[int]] = []
    for t in range(len(ids)):
        piece, before = scorer.detokenize([ids[t]]), scorer.detokenize([ids[t - 1]]) if t else ""
        if config.unit == "token" or t == 0 or (piece[:1].isspace() and not before[-1:].isspace()):
            units.append([])
        units[-1].append(t)
    scores = []
    for unit in units:
        total = 0.0
        for t in unit:
            total += info[t]
        scores.append(total / len(unit) if config.aggregate == "mean" else total)
    budget = math.ceil(config.keep * (len(ids) + len(q)) - 1e-9) - len(q)
    ranked = sorted(range(len(units)), key=lambda u: (-scores[u], u))
    kept: list[int] = []
    used = 0
    for u in ranked:
        if used + len(units[u]) > budget:
            break
        kept.extend(units[u])
        used += len(units[u])
    return sorted(kept) + list(range(len(ids), len(ids) + len(q)))


# --- the scorer -------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_rejects_unknown() -> None:
    tok = CharTokenizer()
    assert tok.decode(tok.encode(CONTEXT + "\n")) == CONTEXT + "\n"
    assert len(tok.alphabet) == 96
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("caf\u00e9")


@pytest.mark.parametrize("bos", [None, 5])
def test_token_logprobs_equal_a_prefix_loop(bos: int | None) -> None:
    """Position t holds log p(x_t | x_<t): one batched pass equals one forward per prefix."""
    model = tiny_llama()
    scorer = LlamaScorer(model, CharTokenizer(), bos=bos)
    ids = scorer.tokenize("abc de, fgh!")
    got = scorer.token_logprobs(torch.tensor([ids]))
    assert got.shape == (1, len(ids))
    want = torch.tensor([naive_logprobs(model, ids, bos)], dtype=got.dtype)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if bos is None:
        assert got[0, 0] == 0


def test_keep_highest_is_exact_and_prefers_earlier_ties() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 0.5, 3.0])
    assert keep_highest(scores, 2).tolist() == [1, 2]
    assert keep_highest(scores, 4).tolist() == [0, 1, 2, 4]
    assert keep_highest(scores, 0).tolist() == []


def test_apportion_hits_the_total_within_caps() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(1, 6, (1,), generator=generator))
        caps = torch.randint(0, 20, (k,), generator=generator).tolist()
        wants = (torch.rand(k, generator=generator) * 25).tolist()
        total = int(torch.randint(0, 80, (1,), generator=generator))
        n = apportion(wants, caps, total)
        assert sum(n) == min(total, sum(caps))
        assert all(0 <= a <= c for a, c in zip(n, caps, strict=True))
    assert apportion([2.5, 2.5], [5, 5], 5) == [3, 2]  # a tie goes to the earlier item


# --- Selective Context ------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 0.7, 0.9])
def test_token_units_keep_exactly_the_budget(scorer: LlamaScorer, keep: float) -> None:
    """ceil(keep * T) tokens, a subsequence of the prompt, the question whole at the end."""
    out = sc.compress(CONTEXT, QUESTION, scorer, sc.Config(keep=keep))
    prompt = scorer.tokenize(CONTEXT) + scorer.tokenize(QUESTION)
    assert out.original_tokens == len(prompt)
    assert out.compressed_tokens == len(out.ids) == math.ceil(keep * len(prompt))
    assert out.ratio == out.compressed_tokens / out.original_tokens
    assert list(out.positions) == sorted(set(out.positions))
    assert list(out.ids) == [prompt[p] for p in out.positions]
    q = len(scorer.tokenize(QUESTION))
    assert list(out.positions[-q:]) == list(range(len(prompt) - q, len(prompt)))
    assert out.text == scorer.detokenize(out.ids) and out.text.endswith(QUESTION)


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_word_units_stay_whole_and_within_one_word(scorer: LlamaScorer, aggregate: str) -> None:
    """Each word is kept or dropped whole; the count is at most the budget, within a word of it."""
    ids = scorer.tokenize(CONTEXT)
    unit = sc.word_units([scorer.detokenize([i]) for i in ids])
    longest = int(torch.bincount(unit).max())
    for keep in (0.3, 0.5, 0.8):
        out = sc.compress(
            CONTEXT, "", scorer, sc.Config(keep=keep, unit="word", aggregate=aggregate)
        )
        budget = math.ceil(keep * len(ids))
        assert budget - longest < out.compressed_tokens <= budget
        kept = torch.zeros(len(ids), dtype=torch.bool)
        kept[list(out.positions)] = True
        for u in range(int(unit.max()) + 1):
            assert kept[unit == u].all() or not kept[unit == u].any(), f"word {u} split"


def test_word_units_attach_whitespace_and_punctuation() -> None:
    pieces = ["The", " pass", " ", "7", "1", ".", "\n", "\n", "A", " b"]
    assert sc.word_units(pieces).tolist() == [0, 1, 2, 2, 2, 2, 3, 3, 3, 4]


@pytest.mark.parametrize("keep", [1.0, 1.5])
def test_identity_at_keep_one(scorer: LlamaScorer, keep: float) -> None:
    """keep >= 1 returns the input unchanged."""
    out = sc.compress(CONTEXT, QUESTION, scorer, sc.config_for(keep))
    assert out.text == CONTEXT + QUESTION
    assert out.ids == tuple(scorer.tokenize(CONTEXT) + scorer.tokenize(QUESTION))
    assert out.ratio == 1.0


@pytest.mark.parametrize(
    "config",
    [
        sc.Config(keep=0.4),
        sc.Config(keep=0.6, unit="word"),
        sc.Config(keep=0.5, unit="word", aggregate="mean"),
    ],
    ids=["token", "word-sum", "word-mean"],
)
def test_equals_naive_loop(scorer: LlamaScorer, config: sc.Config) -> None:
    """Same kept positions as the paper's filter written with plain loops."""
    out = sc.compress(CONTEXT, QUESTION, scorer, config)
    assert list(out.positions) == naive_selective_context(scorer, CONTEXT, QUESTION, config)


def test_smollm2_keeps_a_planted_passkey(smollm2) -> None:  # noqa: F811
    """On the real SmolLM2, a passkey hidden in repetitive filler survives 50% compression."""
    filler = (
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    )
    context = (
        filler * 3 + "The pass key is 71432. Remember it. 71432 is the pass key. " + filler * 3
    )
    scorer = smollm2_scorer()
    for unit in ("token", "word"):
        out = sc.compress(
            context, "\nWhat is the pass key?", scorer, sc.Config(keep=0.5, unit=unit)
        )
        assert out.original_tokens < 300
        assert out.compressed_tokens <= math.ceil(0.5 * out.original_tokens)
        assert "71432" in out.text, out.text
        assert out.text.endswith("What is the pass key?")


# --- the official form (reduce_ratio) ---------------------------------------------------------


class TableScorer:
    """One token per character; each character's self-information read from a table."""

    def __init__(self, info: dict[str, float]) -> None:
        self.info, self.chars = info, CharTokenizer()

    def tokenize(self, text: str) -> list[int]:
        return self.chars.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.chars.decode(ids)

    def token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        text = self.chars.decode(ids[0].tolist())
        return torch.tensor([[-self.info[ch] for ch in text]], dtype=torch.float64)


def test_official_sentence_split() -> None:
    """Whitespace collapsed; cut after "." or "?" but not after "Dr.", "Mr." or "e.g."."""
    text = "  Dr. Who met Mr. Smith.\n\nThe e.g. case? End."
    assert sc.sentences(text) == ["Dr. Who met Mr. Smith.", "The e.g. case?", "End."]
    assert sc.sentences("  \n ") == []


def test_percentile_threshold_is_numpy_linear_and_keeps_nan() -> None:
    """[1..5] at 0.35: index 1.4, threshold 2.4; NaN is ignored and kept."""
    keep = sc.above_percentile(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.35)
    assert keep.tolist() == [False, False, True, True, True]
    keep = sc.above_percentile(torch.tensor([float("nan"), 1.0, 3.0]), 0.5)
    assert keep.tolist() == [True, False, True]
    assert sc.above_percentile(torch.tensor([2.0, 1.0]), 0.0).tolist() == [True, True]


def test_official_form_token_and_sentence_levels() -> None:
    """Sentences "ab." and "cd." with self-information a 1, b 5, . 0, c 4, d 5.
    Tokens [1, 5, 0, 4, 5, 0]: the median 2.5 keeps b, c, d, joined without spaces.
    Sentences (means 2 and 3): the median 2.5 drops the first, leaving " cd."."""
    scorer = TableScorer({"a": 1.0, "b": 5.0, ".": 0.0, "c": 4.0, "d": 5.0, "?": 0.0})
    tokens = sc.compress("ab. cd.", "?", scorer, sc.Config(reduce_ratio=0.5))
    assert tokens.text == "bcd?" and tokens.positions == (1, 3, 4, 6)
    sents = sc.compress(
        "ab.  cd.",
        "?",
        scorer,
        sc.Config(reduce_ratio=0.5, reduce_level="sent"),
    )
    assert sents.text == " cd.?" and sents.positions == (3, 4, 5, 6)
    everything = sc.compress("ab. cd.", "", scorer, sc.Config(reduce_ratio=0.0))
    assert everything.text == "ab.cd." and everything.ratio == 1.0


def test_official_form_checks_its_options() -> None:
    with pytest.raises(AssertionError):
        sc.Config(reduce_ratio=1.5)
    with pytest.raises(AssertionError):
        sc.Config(reduce_ratio=0.35, reduce_level="phrase")
