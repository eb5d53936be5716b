r"""LLMLingua: Compressing Prompts for Accelerated Inference of Large Language Models, arXiv
2310.05736, record `llmlingua-2023`.

Checked against the official repository microsoft/LLMLingua at commit e0e9d99b
(llmlingua/prompt_compressor.py: compress_prompt, control_context_budget,
iterative_compress_prompt, get_compressed_input, get_ppl); no code was taken from it.

The prompt is an instruction, demonstrations and a question, `L_ins + L_dems + L_que` tokens; the
target keeps `tau` of them. As in the official code the parts are joined by `separator` ("\n\n":
the demonstrations of a list with `"\n\n".join(context)`, then instruction, compressed context
and question), so sentences given as separate items never run into each other; the separator
tokens between demonstrations compete like any other token, those around the instruction and the
question belong to them. A small causal LM scores tokens in two stages:

1. budget controller (coarse, demonstration level): the instruction and question get their own
   keep shares `tau_ins`, `tau_que` (official: both kept whole, the defaults 1.0; whole parts are
   never cut, even when they alone exceed the budget); the demonstrations get what is left,
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
   its best-scored tokens are kept: the per-segment count is that segment's share of its
   component's budget.

Token scores (`Config.score_next`). The official code keeps token `j` when the surprisal of
token `j + 1` exceeds the threshold: `get_ppl` returns the losses of tokens `1..end-1` (labels
shifted by one) and `get_compressed_input` compares `loss[j]` with the threshold for token `j`,
appending an always-true entry for the window's last token. So a token is kept when the token
after it is surprising (whitespace before a new sentence survives; the last token of a window is
always kept). That is the default here: token `j` of a segment is scored by the surprisal of
token `j + 1` given the compressed prefix, and the segment's last token ranks first.
`score_next=False` scores every token by its own surprisal instead (this module's earlier rule,
the reading of the paper's Algorithm 2 it was written from; the paper's text was not at hand to
re-check it in this session). Checked in memory: the official `get_compressed_input` with
`get_estimate_threshold_base_distribution` on 12 seeded random loss vectors (lengths 8..200,
ratios 0.2..0.8, one window) keeps exactly the positions `segment_scores(..., score_next=True)`
ranks first for the same count; own-surprisal ranking keeps a different set in all 12.

The official code keeps the question (and the instruction) whole and outside the token stage;
so do the defaults here.

Budgets are exact: `ceil(tau * L)` tokens are kept (split between the components by largest
remainders), unless the demonstration stage kept fewer tokens than that, in which case every
token it kept stays, or whole parts alone exceed it.

Differs from the official code (documented, not reproduced): the official coarse stage keeps
demonstrations, by perplexity, until `rate * L - L_ins - L_que + 100` tokens are used, taking the
one that crosses it (ours: the paper's `k * tau_dems * L_dems` rule); the official token stage
works in 200-token windows over the joined context with a threshold estimated from the running
loss distribution (`loss > threshold`, so about one token fewer than the ratio) rather than exact
per-segment counts; counts use the small LM's tokens throughout (the official reports GPT-4's).
The distribution-alignment instruction tuning of the small LM is not reproduced (the scorer is
used as is); segments are re-scored from scratch over the compressed prefix instead of reusing a
KV cache (same numbers, more compute); no sentence-level filter.

Shapes: ids `(1, T)`; log-probabilities `(1, T)`; per-segment scores `(S,)`.
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
        "no distribution-alignment tuning of the small LM; the paper's coarse budget rule; exact "
        "per-segment counts instead of the official loss threshold; no sentence-level filter"
    ),
)


@dataclass(frozen=True)
class Config:
    keep: float = 0.5  # tau: share of the prompt's tokens kept (0 < keep <= 1)
    instruction_keep: float = 1.0  # tau_ins before the controller's bonus (1: whole, official)
    question_keep: float = 1.0  # tau_que before the controller's bonus (1: whole, official)
    k: float = 2.0  # granular control coefficient: demonstrations kept up to k times their budget
    segment: int = 200  # tokens per segment of the iterative compression (`iterative_size`)
    coarse: bool = True  # run the demonstration-level budget controller (2+ demonstrations)
    separator: str = "\n\n"  # joins instruction, demonstrations and question (official)
    score_next: bool = True  # token j scored by token j + 1's surprisal (official); see above

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert 0.0 <= self.instruction_keep <= 1.0 and 0.0 <= self.question_keep <= 1.0
        assert self.k >= 1.0, "k must be >= 1"
        assert self.segment >= 1, "segment must be >= 1 token"


def config_for(keep: float, model_config: object = None) -> Config:
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
    # Parts kept whole (share 1, the official setting) are taken out first, whatever the budget.
    wants, caps = [want_ins, want_dems, want_que], [instruction, used, question]
    whole = [config.instruction_keep >= 1.0, False, config.question_keep >= 1.0]
    counts = [caps[i] if whole[i] else 0 for i in range(3)]
    free = [i for i in range(3) if not whole[i]]
    shares = apportion(
        [wants[i] for i in free], [caps[i] for i in free], max(0, total - sum(counts))
    )
    for i, n in zip(free, shares, strict=True):
        counts[i] = n
    n_ins, n_dems, n_que = counts
    return Allocation(tuple(sorted(kept)), n_ins, n_dems, n_que)


def segments(start: int, length: int, size: int) -> list[tuple[int, int]]:
    """`[start, start + length)` cut into pieces of at most `size` tokens."""
    return [(s, min(s + size, start + length)) for s in range(start, start + length, size)]


def split_counts(pieces: list[tuple[int, int]], n: int) -> list[int]:
    """A component's kept count `n` spread over its segments in proportion to their lengths."""
    lengths = [e - s for s, e in pieces]
    total = sum(lengths)
    return apportion([n * x / total for x in lengths], lengths, n) if total else []


def segment_scores(surprisal: torch.Tensor, score_next: bool = True) -> torch.Tensor:
    """A segment's token scores `(S,)` from its tokens' surprisal `(S,)`: with `score_next`
    (official), token j gets token j + 1's surprisal and the last token +inf (always kept);
    otherwise each token its own."""
    if not score_next:
        return surprisal
    return torch.cat([surprisal[1:], surprisal.new_full((1,), float("inf"))])


def iterative_compress(
    ids: Sequence[int],
    pieces: Sequence[tuple[int, int]],
    counts: Sequence[int],
    scorer: Scorer,
    score_next: bool = True,
) -> list[int]:
    """Paper Algorithm 2: positions of `ids` kept, segment by segment in order; each segment is
    scored conditioned on the tokens kept so far and keeps its `count` best-scored tokens
    (`segment_scores`; earlier tokens first among equals)."""
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
        scores = segment_scores(surprisal, score_next)
        kept.extend(s + int(p) for p in keep_highest(scores, n))
    return kept


def compress(
    demonstrations: str | Sequence[str],
    question: str,
    scorer: Scorer,
    config: Config = Config(),
    instruction: str = "",
) -> Compressed:
    """Compress `instruction`, `demonstrations` and `question`, joined by `config.separator`
    (empty instruction or question left out, as officially; `separator=""` concatenates)."""
    demos = [demonstrations] if isinstance(demonstrations, str) else list(demonstrations)
    ins_ids, que_ids = scorer.tokenize(instruction), scorer.tokenize(question)
    dem_ids = [scorer.tokenize(d) for d in demos]
    sep = scorer.tokenize(config.separator) if config.separator else []
    # The full prompt: parts joined by the separator, and where each part starts.
    parts = ([ins_ids] if ins_ids else []) + dem_ids + ([que_ids] if que_ids else [])
    prompt_ids: list[int] = []
    starts: list[int] = []
    for i, part in enumerate(parts):
        if i:
            prompt_ids.extend(sep)
        starts.append(len(prompt_ids))
        prompt_ids.extend(part)
    first_demo = 1 if ins_ids else 0
    text = config.separator.join(
        ([instruction] if ins_ids else []) + demos + ([question] if que_ids else [])
    )
    if config.keep >= 1.0 or not prompt_ids:
        return Compressed.of(prompt_ids, range(len(prompt_ids)), text)

    def span(part: int) -> list[int]:
        return list(range(starts[part], starts[part] + len(parts[part])))

    def joint(part: int) -> list[int]:  # the separator tokens just before `part`
        return list(range(starts[part] - len(sep), starts[part])) if part else []

    scores = [perplexity(d, scorer) for d in dem_ids] if config.coarse else [0.0] * len(demos)
    plan = budget_controller(
        len(ins_ids), [len(d) + len(sep) for d in dem_ids], len(que_ids), scores, config
    )

    # The coarse-kept prompt (kept parts joined by their original separators) and where each of
    # its tokens sits in the full prompt: the instruction with the joint after it, the kept
    # demonstrations with the joints between them, the joint before the question with it.
    kept_parts = [first_demo + i for i in plan.demonstrations]
    ins_block = span(0) if ins_ids else []
    dem_block: list[int] = []
    for j, index in enumerate(kept_parts):
        if j:
            dem_block.extend(joint(index))
        dem_block.extend(span(index))
    if ins_block and kept_parts:
        ins_block.extend(joint(kept_parts[0]))
    que_block = span(len(parts) - 1) if que_ids else []
    if que_block and (ins_ids or kept_parts):
        que_block = joint(len(parts) - 1) + que_block
    origin = ins_block + dem_block + que_block
    ids = [prompt_ids[p] for p in origin]

    total = budget_tokens(config.keep, len(prompt_ids))
    n_ins = (
        len(ins_block) if config.instruction_keep >= 1.0 else min(plan.instruction, len(ins_block))
    )
    n_que = len(que_block) if config.question_keep >= 1.0 else min(plan.question, len(que_block))
    n_dems = min(len(dem_block), max(0, total - n_ins - n_que))
    pieces, counts = [], []
    for start, length, n in (
        (0, len(ins_block), n_ins),
        (len(ins_block), len(dem_block), n_dems),
        (len(ins_block) + len(dem_block), len(que_block), n_que),
    ):
        part_pieces = segments(start, length, config.segment)
        pieces.extend(part_pieces)
        counts.extend(split_counts(part_pieces, n))
    kept = iterative_compress(ids, pieces, counts, scorer, config.score_next)
    positions = [origin[p] for p in kept]
    return Compressed.of(
        prompt_ids, positions, scorer.detokenize([prompt_ids[p] for p in positions])
    )
