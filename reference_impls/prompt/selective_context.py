"""Compressing Context to Enhance Inference Efficiency of Large Language Models (Selective
Context), arXiv 2310.06201, record `selective-context-2023`.

Checked against the official repository liyucheng09/Selective_Context
(src/selective_context/__init__.py); no code was taken from it: this is written from the paper.

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

Simplified: no noun-phrase or sentence units (the paper builds them with spaCy; we have no parser
here), and the context is scored in one pass rather than sentence by sentence as the official
code does. Selective Context is not question-aware: a question is appended whole after the
compressed context and counts towards the budget, which it never leaves.

Shapes: ids `(1, T)`; log-probabilities `(1, T)`; self-information and unit index `(T,)`;
unit scores and lengths `(U,)`.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Config:
    keep: float = 0.5  # share of the prompt's tokens kept (0 < keep <= 1)
    unit: str = "token"  # lexical unit: "token" or "word"
    aggregate: str = "sum"  # a unit's self-information: "sum" (paper) or "mean" (official code)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.unit in UNITS, f"unit must be one of {UNITS}"
        assert self.aggregate in AGGREGATES, f"aggregate must be one of {AGGREGATES}"


def config_for(keep: float) -> Config:
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


def compress(text: str, question: str, scorer: Scorer, config: Config = Config()) -> Compressed:
    """Compress `text` (the context); `question` (may be empty) is kept whole at the end."""
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
