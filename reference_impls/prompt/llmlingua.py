"""LLMLingua: Compressing Prompts for Accelerated Inference of Large Language Models, arXiv
2310.05736, record `llmlingua-2023`.

Checked against the official repository microsoft/LLMLingua (llmlingua/prompt_compressor.py:
compress_prompt, control_context_budget, iterative_compress_prompt); no code was taken from it:
this is written from the paper.

The prompt is an instruction, demonstrations and a question, `L_ins + L_dems + L_que` tokens; the
target keeps `tau` of them. A small causal LM scores tokens in two stages:

1. budget controller (coarse, demonstration level): the instruction and question get their own
   keep shares `tau_ins`, `tau_que`; the demonstrations get what is left,
   `tau_dems = (tau L - tau_ins L_ins - tau_que L_que) / L_dems` (paper eq. 1). Demonstrations
   are ranked by their perplexity under the small LM, highest first, and kept whole while their
   total stays within `k * tau_dems * L_dems` (the first that does not fit stops the loop); the
   unused part of that allowance raises the instruction and question shares by
   `(k tau_dems L_dems - L_D) / (L_ins + L_que)` (paper eq. 2). The kept demonstrations stay in
   their original order and get the rest of the budget. With a single demonstration (a plain
   string) this stage is skipped, as in the official code, and it competes at token level only;
2. iterative token-level compression: the instruction, the kept demonstrations and the question
   are cut into segments of at most `segment` tokens (a segment never spans two of them); each
   segment in turn is scored by the small LM conditioned on the already compressed prefix, and
   its tokens with the highest surprisal -log p(x_i | compressed prefix, x_<i) are kept: the
   per-segment threshold is the one that keeps that segment's share of its component's budget.

Budgets are exact: `ceil(tau * L)` tokens are kept (split between the components by largest
remainders), unless the demonstration stage kept fewer tokens than that, in which case every
token it kept stays; the count is never above the budget.

Simplified: the distribution-alignment instruction tuning of the small LM is not reproduced (the
scorer is used as is); segments are re-scored from scratch over the compressed prefix instead of
reusing a KV cache (same numbers, more compute); no sentence-level filter. The defaults
tau_ins = 0.85, tau_que = 0.9, k = 2 are ours; the official code keeps the instruction and the
question whole and uses 200-token windows, as the `segment` default does here.

Shapes: ids `(1, T)`; log-probabilities `(1, T)`; per-segment surprisal `(S,)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..registry import ImplInfo
from .scorer import Compressed, Scorer, apportion, budget_tokens, keep_highest

IMPL = ImplInfo(
    name="llmlingua",
    title="LLMLingua: budget controller and iterative token-level compression by perplexity",
    papers=("llmlingua-2023",),
    family="prompt-compression",
    training_free=True,
    arxiv="2310.05736",
    simplified=(
        "no distribution-alignment tuning of the small LM; segments re-scored without a KV "
        "cache; no sentence-level filter; exact integer budgets by largest remainders"
    ),
)


@dataclass(frozen=True)
class Config:
    keep: float = 0.5  # tau: share of the prompt's tokens kept (0 < keep <= 1)
    instruction_keep: float = 0.85  # tau_ins before the controller's bonus
    question_keep: float = 0.9  # tau_que before the controller's bonus
    k: float = 2.0  # granular control coefficient: demonstrations kept up to k times their budget
    segment: int = 200  # tokens per segment of the iterative compression
    coarse: bool = True  # run the demonstration-level budget controller (2+ demonstrations)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert 0.0 <= self.instruction_keep <= 1.0 and 0.0 <= self.question_keep <= 1.0
        assert self.k >= 1.0, "k must be >= 1"
        assert self.segment >= 1, "segment must be >= 1 token"


def config_for(keep: float) -> Config:
    return Config(keep=min(keep, 1.0))


@dataclass(frozen=True)
class Allocation:
    """What the budget controller decided: kept demonstrations and each component's token count."""

    demonstrations: tuple[int, ...]  # indices of the kept demonstrations, in original order
    instruction: int  # tokens kept from the instruction
    demos: int  # tokens kept from the kept demonstrations together
    question: int  # tokens kept from the question


def perplexity(ids: Sequence[int], scorer: Scorer) -> float:
    """Mean negative log-likelihood of a text's tokens under the small LM (log-perplexity)."""
    if not ids:
        return 0.0
    return float(-scorer.token_logprobs(torch.tensor([list(ids)]))[0].double().mean())


def budget_controller(
    instruction: int,
    demonstrations: Sequence[int],
    question: int,
    scores: Sequence[float],
    config: Config,
) -> Allocation:
    """Paper Algorithm 1 on token counts: `demonstrations` are their lengths and `scores` their
    perplexities (higher is kept first)."""
    L_dems = sum(demonstrations)
    L = instruction + L_dems + question
    total = budget_tokens(config.keep, L)
    if not config.coarse or len(demonstrations) < 2 or L_dems == 0:
        kept, used, bonus = list(range(len(demonstrations))), L_dems, 0.0
    else:
        wanted = (
            config.keep * L
            - config.instruction_keep * instruction
            - config.question_keep * question
        )
        tau_dems = min(1.0, max(0.0, wanted / L_dems))
        limit = config.k * tau_dems * L_dems
        order = sorted(range(len(demonstrations)), key=lambda i: (-scores[i], i))
        kept, used = [], 0
        for i in order:
            if used + demonstrations[i] > limit:
                break
            kept.append(i)
            used += demonstrations[i]
        bonus = (limit - used) / (instruction + question) if instruction + question else 0.0
    want_ins = min(instruction, (config.instruction_keep + bonus) * instruction)
    want_que = min(question, (config.question_keep + bonus) * question)
    want_dems = min(used, max(0.0, total - want_ins - want_que))
    n_ins, n_dems, n_que = apportion(
        [want_ins, want_dems, want_que], [instruction, used, question], total
    )
    return Allocation(tuple(sorted(kept)), n_ins, n_dems, n_que)


def segments(start: int, length: int, size: int) -> list[tuple[int, int]]:
    """`[start, start + length)` cut into pieces of at most `size` tokens."""
    return [(s, min(s + size, start + length)) for s in range(start, start + length, size)]


def split_counts(pieces: list[tuple[int, int]], n: int) -> list[int]:
    """A component's kept count `n` spread over its segments in proportion to their lengths."""
    lengths = [e - s for s, e in pieces]
    total = sum(lengths)
    return apportion([n * x / total for x in lengths], lengths, n) if total else []


def iterative_compress(
    ids: Sequence[int], pieces: Sequence[tuple[int, int]], counts: Sequence[int], scorer: Scorer
) -> list[int]:
    """Paper Algorithm 2: positions of `ids` kept, segment by segment in order; each segment is
    scored conditioned on the tokens kept so far and keeps its `count` most surprising tokens."""
    kept: list[int] = []
    for (s, e), n in zip(pieces, counts, strict=True):
        if n >= e - s:
            kept.extend(range(s, e))
            continue
        if n == 0:
            continue
        prefix = [ids[p] for p in kept]
        x = torch.tensor([prefix + list(ids[s:e])])  # (1, P + S)
        surprisal = -scorer.token_logprobs(x)[0, len(prefix) :].double()  # (S,)
        kept.extend(s + int(p) for p in keep_highest(surprisal, n))
    return kept


def compress(
    demonstrations: str | Sequence[str],
    question: str,
    scorer: Scorer,
    config: Config = Config(),
    instruction: str = "",
) -> Compressed:
    """Compress `instruction + demonstrations + question` (each tokenized on its own, joined in
    that order: put separators such as blank lines inside the texts)."""
    demos = [demonstrations] if isinstance(demonstrations, str) else list(demonstrations)
    ins_ids, que_ids = scorer.tokenize(instruction), scorer.tokenize(question)
    dem_ids = [scorer.tokenize(d) for d in demos]
    prompt_ids = ins_ids + [t for d in dem_ids for t in d] + que_ids
    if config.keep >= 1.0 or not prompt_ids:
        return Compressed.of(
            prompt_ids, range(len(prompt_ids)), instruction + "".join(demos) + question
        )

    scores = [perplexity(d, scorer) for d in dem_ids] if config.coarse else [0.0] * len(demos)
    plan = budget_controller(len(ins_ids), [len(d) for d in dem_ids], len(que_ids), scores, config)

    # The coarse-kept prompt and where each of its tokens sits in the full prompt.
    starts = [len(ins_ids)]
    for d in dem_ids:
        starts.append(starts[-1] + len(d))
    origin = list(range(len(ins_ids)))
    for i in plan.demonstrations:
        origin.extend(range(starts[i], starts[i] + len(dem_ids[i])))
    origin.extend(range(starts[-1], starts[-1] + len(que_ids)))
    ids = [prompt_ids[p] for p in origin]

    L_ins, L_D = len(ins_ids), len(origin) - len(ins_ids) - len(que_ids)
    pieces, counts = [], []
    for start, length, n in (
        (0, L_ins, plan.instruction),
        (L_ins, L_D, plan.demos),
        (L_ins + L_D, len(que_ids), plan.question),
    ):
        part = segments(start, length, config.segment)
        pieces.extend(part)
        counts.extend(split_counts(part, n))
    kept = iterative_compress(ids, pieces, counts, scorer)
    positions = [origin[p] for p in kept]
    return Compressed.of(
        prompt_ids, positions, scorer.detokenize([prompt_ids[p] for p in positions])
    )
