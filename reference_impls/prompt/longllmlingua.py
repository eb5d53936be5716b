"""LongLLMLingua: Accelerating and Enhancing LLMs in Long Context Scenarios via Prompt
Compression, arXiv 2310.06839, record `longllmlingua-2024`.

Checked against the official repository microsoft/LLMLingua (llmlingua/prompt_compressor.py:
get_rank_results with rank_method="longllmlingua", control_context_budget,
iterative_compress_prompt with condition_compare); no code was taken from it: this is written
from the paper.

The prompt is an instruction, K documents and a question. The instruction and the question are
kept whole; the documents share the rest of a budget of `ceil(keep * L)` tokens. Compression is
conditioned on the question throughout:

1. question-aware coarse-grained compression: each document k gets
   `r_k = -mean_i log p(q_i | document k, q_<i)` over the question followed by a restrictive
   sentence ("We can get the answer to this question in the given documents."); lower means
   more relevant. Documents are kept best first until they hold `coarse` times the documents'
   token budget (the document that crosses it is kept);
2. document reordering: the kept documents are placed in rank order, most relevant first;
3. dynamic compression ratios: the kept document of rank i (0-based, K' kept) keeps the share
   `clip(tau_doc + dtau * (1 - 2 i / (K' - 1)), 0, 1)` of its tokens, a linear schedule from
   `tau_doc + dtau` to `tau_doc - dtau` around the mean share `tau_doc` (the symmetric form
   of the official code); counts are rounded so that the documents keep exactly their budget;
4. question-aware fine-grained compression: documents are cut into segments of at most
   `segment` tokens, compressed in order as in LLMLingua, each conditioned on the tokens kept so
   far; a token's score is its contrastive perplexity
   `s_i = -log p(x_i | x_<i) + log p(x_i | question, x_<i)` (how much the question makes it
   more likely), and each segment keeps its highest-scored tokens.

Budgets are exact: the output has `ceil(keep * L)` tokens whenever that is at least the
instruction and question lengths (which are never dropped).

Defaults: `dynamic = 0.3` and rank-order placement follow the LongLLMLingua example in the
official README; the coarse allowance (`coarse = 2`, a multiple of the budget) is ours, the
official code adds a fixed 100 tokens instead.

Simplified: subsequence recovery (restoring key entities in the LLM's response) is omitted, as
it post-processes the answer, not the prompt; segments are re-scored without a KV cache; the
question conditions the tokens on its own, without the instruction.

Shapes: ids `(1, T)`; log-probabilities `(1, T)`; per-segment scores `(S,)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..registry import ImplInfo
from .scorer import Compressed, Scorer, apportion, budget_tokens, keep_highest

IMPL = ImplInfo(
    name="longllmlingua",
    title="LongLLMLingua: question-aware coarse-to-fine compression with reordering",
    papers=("longllmlingua-2024",),
    family="prompt-compression",
    training_free=True,
    arxiv="2310.06839",
    simplified=(
        "no subsequence recovery of the response; segments re-scored without a KV cache; "
        "instruction and question kept whole; exact integer budgets by largest remainders"
    ),
)

RESTRICT = " We can get the answer to this question in the given documents."


@dataclass(frozen=True)
class Config:
    keep: float = 0.5  # share of the prompt's tokens kept (0 < keep <= 1)
    coarse: float = 2.0  # documents are kept until they hold this many times their budget
    reorder: bool = True  # place kept documents most relevant first (else original order)
    dynamic: float = 0.3  # dtau: spread of the per-document keep share across ranks
    segment: int = 200  # tokens per segment of the fine-grained compression
    restrict: str = RESTRICT  # sentence appended to the question when ranking documents

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.coarse >= 1.0, "coarse must be >= 1 (documents must hold their budget)"
        assert 0.0 <= self.dynamic <= 1.0, "dynamic must be in [0, 1]"
        assert self.segment >= 1, "segment must be >= 1 token"


def config_for(keep: float) -> Config:
    return Config(keep=min(keep, 1.0))


def question_perplexity(doc: Sequence[int], query: Sequence[int], scorer: Scorer) -> float:
    """r_k: mean negative log-likelihood of the query tokens after the document."""
    x = torch.tensor([list(doc) + list(query)])  # (1, D + Q)
    return float(-scorer.token_logprobs(x)[0, len(doc) :].double().mean())


def rank_documents(
    docs: Sequence[Sequence[int]], query: Sequence[int], scorer: Scorer
) -> list[int]:
    """Document indices, most relevant (lowest r_k) first; ties keep the original order."""
    r = [question_perplexity(d, query, scorer) for d in docs]
    return sorted(range(len(docs)), key=lambda k: (r[k], k))


def keep_documents(
    ranked: Sequence[int], lengths: Sequence[int], budget: int, coarse: float
) -> list[int]:
    """Documents in rank order until their length reaches `coarse * budget` (crossing one kept)."""
    kept, used = [], 0
    for k in ranked:
        if used >= coarse * budget:
            break
        kept.append(k)
        used += lengths[k]
    return kept


def dynamic_counts(lengths: Sequence[int], budget: int, dynamic: float) -> list[int]:
    """Tokens kept per document, `lengths` in rank order: the linear schedule of shares around
    the mean share, rounded to integers summing to `budget` (extra units to better ranks)."""
    K, total = len(lengths), sum(lengths)
    if not K or not total:
        return [0] * K
    tau = budget / total
    offsets = [dynamic * (1 - 2 * i / (K - 1)) for i in range(K)] if K > 1 else [0.0]
    shares = [min(1.0, max(0.0, tau + d)) for d in offsets]
    return apportion([s * n for s, n in zip(shares, lengths, strict=True)], list(lengths), budget)


def contrastive_scores(
    prefix: Sequence[int], segment: Sequence[int], question: Sequence[int], scorer: Scorer
) -> torch.Tensor:
    """s_i `(S,)`: log p(x_i | question, prefix, x_<i) - log p(x_i | prefix, x_<i)."""
    plain = torch.tensor([list(prefix) + list(segment)])  # (1, P + S)
    cond = torch.tensor([list(question) + list(prefix) + list(segment)])  # (1, Q + P + S)
    S = len(segment)
    lp_plain = scorer.token_logprobs(plain)[0, plain.shape[1] - S :].double()  # (S,)
    lp_cond = scorer.token_logprobs(cond)[0, cond.shape[1] - S :].double()  # (S,)
    return lp_cond - lp_plain


def fine_compress(
    docs: Sequence[Sequence[int]],
    counts: Sequence[int],
    question: Sequence[int],
    scorer: Scorer,
    segment: int,
) -> list[list[int]]:
    """Per document (in prompt order) the kept token indices within it, segment by segment,
    each segment conditioned on everything kept before it."""
    kept_ids: list[int] = []
    out: list[list[int]] = []
    for doc, n in zip(docs, counts, strict=True):
        pieces = [(s, min(s + segment, len(doc))) for s in range(0, len(doc), segment)]
        lengths = [e - s for s, e in pieces]
        per_piece = apportion([n * x / len(doc) for x in lengths], lengths, n) if doc else []
        kept: list[int] = []
        for (s, e), m in zip(pieces, per_piece, strict=True):
            if m >= e - s:
                chosen = list(range(s, e))
            elif m == 0:
                chosen = []
            else:
                scores = contrastive_scores(kept_ids, doc[s:e], question, scorer)  # (S,)
                chosen = [s + int(p) for p in keep_highest(scores, m)]
            kept.extend(chosen)
            kept_ids.extend(doc[p] for p in chosen)
        out.append(kept)
    return out


def compress(
    documents: str | Sequence[str],
    question: str,
    scorer: Scorer,
    config: Config = Config(),
    instruction: str = "",
) -> Compressed:
    """Compress `instruction + documents + question` (each tokenized on its own, joined in that
    order: put separators such as blank lines inside the texts); the question is required. A
    plain string is one document: ranking and reordering then have nothing to do."""
    docs = [documents] if isinstance(documents, str) else list(documents)
    ins_ids, que_ids = scorer.tokenize(instruction), scorer.tokenize(question)
    doc_ids = [scorer.tokenize(d) for d in docs]
    prompt_ids = ins_ids + [t for d in doc_ids for t in d] + que_ids
    if config.keep >= 1.0 or not prompt_ids:
        return Compressed.of(
            prompt_ids, range(len(prompt_ids)), instruction + "".join(docs) + question
        )
    assert que_ids, "LongLLMLingua needs a question"

    lengths = [len(d) for d in doc_ids]
    budget = max(0, budget_tokens(config.keep, len(prompt_ids)) - len(ins_ids) - len(que_ids))
    ranked = rank_documents(doc_ids, que_ids + scorer.tokenize(config.restrict), scorer)
    kept_docs = keep_documents(ranked, lengths, budget, config.coarse)  # rank order
    counts = dynamic_counts([lengths[k] for k in kept_docs], budget, config.dynamic)
    by_doc = dict(zip(kept_docs, counts, strict=True))
    order = kept_docs if config.reorder else sorted(kept_docs)
    kept = fine_compress(
        [doc_ids[k] for k in order], [by_doc[k] for k in order], que_ids, scorer, config.segment
    )

    starts = [len(ins_ids)]
    for n in lengths:
        starts.append(starts[-1] + n)
    positions = list(range(len(ins_ids)))
    for k, inside in zip(order, kept, strict=True):
        positions.extend(starts[k] + p for p in inside)
    positions.extend(range(starts[-1], starts[-1] + len(que_ids)))
    return Compressed.of(
        prompt_ids, positions, scorer.detokenize([prompt_ids[p] for p in positions])
    )
