"""Compressing Context to Enhance Inference Efficiency of Large Language Models (Selective
Context), arXiv 2310.06201, record `selective-context-2023`.

Official code: liyucheng09/Selective_Context@3074343653bbf3559a87a588667e843744bc6f2a
(`src/selective_context/__init__.py`, `SelectiveContext.__call__`); no code was taken from it.
The official form here (`Config(reduce_ratio=..., reduce_level=...)`, official names,
`compress_official`) reproduces it: whitespace collapsed, the official sentence splitter, each
sentence scored on its own after the start token, a unit dropped when its self-information
(a sentence's: the mean of its tokens') is below the `reduce_ratio` percentile of all units
(numpy's linear `nanpercentile`: a share of the *units*, not of the tokens), the text assembled
as officially (kept tokens joined with nothing, so sentences meet without a space; kept
sentences joined by spaces, a dropped one leaving an empty string). Checked in memory: the
official `SelectiveContext.__call__` (GPT-2 and spaCy replaced by stubs: this package's tiny
random LLaMA with a character tokenizer and a start token, a whitespace phrase splitter) against
`compress(..., Config(reduce_ratio=r, reduce_level=l))` on 30 seeded texts (1-7 sentences,
abbreviations and runs of whitespace, levels token and sent, r in {0, 0.2, 0.35, 0.5, 0.9}):
the same output text in all 30. Not included: the official default level "phrase" (spaCy's
noun chunks; no parser here) and the `curie` API scorer. The share form (`keep`, `unit`,
`aggregate`, what `config_for` builds) stays the default; it is written from the paper:

Selective Context drops the parts of a context that a small causal LM finds predictable:

1. the self-information of every context token, I(x_t) = -log p(x_t | x_<t), from one pass of
   the small LM over the context (the scorer may condition the first token on a start token);
2. lexical units: single tokens, or words (a word is a run of whitespace and the non-whitespace
   that follows it, so punctuation stays with its word); a unit's self-information is the sum of
   its tokens' (the paper's additivity of self-information), or their mean (the official code);
3. units are ranked by self-information and those above a percentile threshold are kept, the
   rest dropped; the kept text is the surviving units in their original order.

The threshold here is the one that meets a token budget: `keep` is the share of the prompt's
tokens kept, `ceil(keep * T)`; units are kept from the most informative down while they fit, so
token units hit the budget exactly and word units stay within one word of it (never above).

Simplified (share form): no noun-phrase or sentence units, and the context is scored in one pass
rather than sentence by sentence. Selective Context is not question-aware: in both forms a
question is appended whole after the compressed context (in the share form it counts towards
the budget, which it never leaves).

Shapes: ids `(1, T)`; log-probabilities `(1, T)`; self-information and unit index `(T,)`;
unit scores and lengths `(U,)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ImplInfo
from .scorer import Compressed, Scorer, budget_tokens

IMPL = ImplInfo(
    name="selective_context",
    title="Selective Context: drop the least self-informative lexical units",
    papers=("selective-context-2023",),
    family="prompt-compression",
    training_free=True,
    arxiv="2310.06201",
    simplified=(
        "token and word units only (no spaCy noun phrases or sentences); one scoring pass over "
        "the context instead of one per sentence; the percentile is set by a token budget"
    ),
)

UNITS = ("token", "word")
AGGREGATES = ("sum", "mean")
REDUCE_LEVELS = ("sent", "token")  # the official levels but "phrase" (spaCy noun chunks)
# The official sentence splitter: after "." or "?", not after "e.g." or "Mr.".
SENTENCE_SPLIT = r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s"


@dataclass(frozen=True)
class Config:
    keep: float = 0.5  # share of the prompt's tokens kept (0 < keep <= 1)
    unit: str = "token"  # lexical unit: "token" or "word"
    aggregate: str = "sum"  # a unit's self-information: "sum" (paper) or "mean" (official code)
    # The official form (official names): drop the units of `reduce_level` whose self-information
    # is below the `reduce_ratio` percentile of all units, sentence by sentence scoring.
    reduce_ratio: float | None = None  # the official default is 0.35
    reduce_level: str = "token"  # "sent" or "token" (the official default "phrase" needs spaCy)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.unit in UNITS, f"unit must be one of {UNITS}"
        assert self.aggregate in AGGREGATES, f"aggregate must be one of {AGGREGATES}"
        assert self.reduce_ratio is None or 0.0 <= self.reduce_ratio <= 1.0, (
            "reduce_ratio must be in [0, 1]"
        )
        assert self.reduce_level in REDUCE_LEVELS, f"reduce_level must be one of {REDUCE_LEVELS}"


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(keep=min(keep, 1.0))


def word_units(pieces: list[str]) -> Tensor:
    """Unit index `(T,)` of each token, given each token's text: a new word starts at a token
    that begins with whitespace after a token that does not end with whitespace."""
    index, unit = [], -1
    for t, piece in enumerate(pieces):
        if t == 0 or (piece[:1].isspace() and not pieces[t - 1][-1:].isspace()):
            unit += 1
        index.append(unit)
    return torch.tensor(index, dtype=torch.long)


def unit_scores(info: Tensor, unit: Tensor, aggregate: str) -> tuple[Tensor, Tensor]:
    """Self-information `(U,)` and length `(U,)` of each unit from token self-information `(T,)`."""
    U = int(unit.max()) + 1 if unit.numel() else 0
    total = torch.zeros(U, dtype=info.dtype, device=info.device).index_add_(0, unit, info)
    length = torch.bincount(unit, minlength=U)
    return (total / length if aggregate == "mean" else total), length


def select_units(scores: Tensor, length: Tensor, budget: int) -> Tensor:
    """Indices `(k,)` of the kept units: the most informative first (ties: earlier unit), while
    their tokens fit in `budget`; the first unit that does not fit sets the threshold."""
    order = torch.sort(-scores, stable=True).indices  # (U,) best first
    fits = length[order].cumsum(0) <= budget  # (U,) true on a prefix
    return order[: int(fits.sum())]


def self_information(ids: Tensor, scorer: Scorer) -> Tensor:
    """-log p(x_t | x_<t) `(T,)` for ids `(1, T)`."""
    return -scorer.token_logprobs(ids)[0].double()


def sentences(text: str) -> list[str]:
    """The official split: whitespace runs collapsed to one space, then cut after "." or "?"
    followed by whitespace (not after an abbreviation), each sentence stripped, empty ones
    dropped."""
    context = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(SENTENCE_SPLIT, context) if s.strip()]


def above_percentile(scores: Tensor, reduce_ratio: float) -> Tensor:
    """Which units `(U,)` are kept: not below the `reduce_ratio` percentile of `scores (U,)`
    (linear interpolation, NaN ignored, as numpy's `nanpercentile`; a NaN unit is kept)."""
    threshold = torch.nanquantile(scores.double(), reduce_ratio)
    return ~(scores.double() < threshold)


def compress_official(text: str, question: str, scorer: Scorer, config: Config) -> Compressed:
    """The official form: the context split into sentences, each scored on its own (after the
    scorer's start token, if it has one); units below the `reduce_ratio` percentile dropped.
    The text is assembled as officially: kept sentences joined by spaces (a dropped sentence
    leaves an empty string between two spaces), kept tokens decoded one by one and joined with
    nothing (so sentences meet without a space). `question` is appended whole."""
    assert config.reduce_ratio is not None
    sents = sentences(text)
    sent_ids = [scorer.tokenize(s) for s in sents]
    question_ids = scorer.tokenize(question)
    prompt_ids = [t for ids in sent_ids for t in ids] + question_ids
    info = [self_information(torch.tensor([ids]), scorer) for ids in sent_ids]  # (T_s,) each
    starts = [0]
    for ids in sent_ids:
        starts.append(starts[-1] + len(ids))
    T = starts[-1]
    positions: list[int] = []
    out = ""
    if sents and config.reduce_level == "sent":
        kept = above_percentile(torch.stack([i.mean() for i in info]), config.reduce_ratio)
        for s, keep in enumerate(kept.tolist()):
            if keep:
                positions.extend(range(starts[s], starts[s + 1]))
        out = " ".join(sent if k else "" for sent, k in zip(sents, kept.tolist(), strict=True))
    elif sents:
        kept = above_percentile(torch.cat(info), config.reduce_ratio)  # (T,)
        positions = kept.nonzero()[:, 0].tolist()
        out = "".join(scorer.detokenize([prompt_ids[p]]) for p in positions)
    positions.extend(range(T, T + len(question_ids)))
    return Compressed.of(prompt_ids, positions, out + question)


def compress(text: str, question: str, scorer: Scorer, config: Config = Config()) -> Compressed:
    """Compress `text` (the context); `question` (may be empty) is kept whole at the end."""
    if config.reduce_ratio is not None:
        return compress_official(text, question, scorer, config)
    context_ids, question_ids = scorer.tokenize(text), scorer.tokenize(question)
    prompt_ids = context_ids + question_ids
    T = len(context_ids)
    if config.keep >= 1.0 or T == 0:
        return Compressed.of(prompt_ids, range(len(prompt_ids)), text + question)
    budget = max(0, budget_tokens(config.keep, len(prompt_ids)) - len(question_ids))
    info = self_information(torch.tensor([context_ids]), scorer)  # (T,)
    if config.unit == "token":
        unit = torch.arange(T)
    else:
        unit = word_units([scorer.detokenize([i]) for i in context_ids])
    scores, length = unit_scores(info, unit, config.aggregate)  # (U,), (U,)
    kept_units = select_units(scores, length, budget)
    kept = torch.isin(unit, kept_units).nonzero()[:, 0].tolist()
    positions = kept + list(range(T, len(prompt_ids)))
    return Compressed.of(
        prompt_ids, positions, scorer.detokenize([prompt_ids[p] for p in positions])
    )
