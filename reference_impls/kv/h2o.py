"""H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models,
arXiv 2306.14048, record `h2o-2023`.

Checked against the official repository FMInference/H2O at commit ac75c2a8; no code was taken
from it. Two official code paths matter, and both are here:

- `h2o_hf/utils_real_drop/modify_llama.py`, `H2OKVCache_LayerWise` (the cache that really drops
  entries, used for generation): budget `hh_size + recent_size` entries, absolute;
- `h2o_hf/utils_lm_eval/modify_{opt,gptneox}.py`, `local_heavy_hitter_mask` (the masked attention
  behind the paper's lm-eval-harness numbers): nothing is dropped, each query row attends to a
  heavy-hitter set and a recent band chosen as if the cache had been evicted row by row.

A few tokens collect most of the attention ("heavy hitters"); their accumulated attention score
predicts that they will keep being attended. H2O keeps the most recent tokens plus the heavy
hitters among the older ones.

The KV press (`make_press`), per layer and per KV head:

1. Prefill: each KV entry's score is the attention it received from every prompt query (the
   column sums of the causal attention matrix), averaged over the query heads that share its KV
   head. If the cache exceeds its budget of `n` entries, the last `recent` are kept as the
   recent window and the `n - recent` best-scored older ones as heavy hitters.
2. Decode: the press keeps the accumulated score of every cached entry, aligned with the cache
   (gathered on every eviction). Each step adds the new queries' attention to the scores (a new
   entry starts with the attention it gets in its own step); when the cache exceeds `n`, the
   lowest-scored entries outside the recent window are evicted down to `n`.

Two budget forms:

- absolute, as the official cache (`Config(hh_size=..., recent_size=...)`, the official names):
  `n = hh_size + recent_size`, `recent = recent_size`. Scores are kept from the first token on,
  and eviction starts whenever the cache exceeds `n`, at prefill or later while decoding (a
  prompt that fits is kept whole and evicted from once generation outgrows the budget). Checked
  in memory against `H2OKVCache_LayerWise.__call__` and `_update_hh_score` on 15 seeded random
  runs (prompt lengths 6, 15, 40, below and above the budget, hh_size in {0, 3, 8}, recent_size
  in {0, 4, 10}, 12 decode steps each, float32 and float16 attention, batch 1, one KV head per
  query head): the positions held after prefill and after every step are equal in every run,
  and the accumulated scores equal to float tolerance.
- a share of the prompt (`Config(budget=Budget(keep=...), heavy=...)`, the default, what
  `config_for(keep)` builds): `n = Budget.tokens(T)` fixed at prefill and `recent = n -
  floor(heavy * n)` (the paper's equal halves by default); at `keep >= 1` nothing is ever
  evicted. `Budget.sinks` and `Budget.window` protect more tokens if asked (H2O itself uses none
  besides the recent window, which is the larger of `Budget.window` and the recent share).

The masked-attention variant (`local_heavy_hitter_mask`, `heavy_recent_mask`, pure functions on
pre-softmax scores `(..., T, T)`): with `heavy_budget = int(heavy_ratio * T)` and `recent_budget
= int(recent_ratio * T)` (official names; `--heavy_ratio`/`--recent_ratio` default 0.1 in
`run_lm_eval_harness.py`), the first `heavy_budget` rows attend causally to everything; each
later row `t` attends to the `heavy_budget - 1` entries with the highest accumulated score *before*
row t's own attention is added, plus itself (the diagonal); then row t's full (unmasked)
attention is added to the scores and every entry outside row t's set has its score zeroed (it
was evicted). `heavy_recent_mask` adds the band of the `recent_budget` previous tokens and the
causal mask, as the official OPT/GPT-NeoX attention does before its softmax. Checked in memory
against the official `local_heavy_hitter_mask` (GPT-NeoX's 4-D form and OPT's 3-D form) and the
mask assembly of `OPTAttention_Mask.forward` on 48 seeded random cases (T in {7, 16, 33}, heavy
ratio in {0.05, 0.1, 0.3, 1.0}, recent ratio in {0, 0.1, 0.3}, B x heads in {1 x 1, 2 x 3},
float32 and float16; 36 with a heavy budget > 0): equal masks in every case (GPT-NeoX's
function also marks the future half of the first block, which its caller's causal mask removes;
here, as in OPT's, the function already leaves it out). (The official LLaMA lm-eval file has this
function commented out and ranks by whole-sequence column sums instead; the OPT and GPT-NeoX
files, the models of the paper's tables, use it.)

Simplified / differs from the official code:
- grouped-query attention: scores are averaged over the query heads of a KV head (the official
  cache scores per query head and only runs with one KV head per query head);
- batches: the official cache sums scores over the batch and only runs with batch 1; here every
  sample chooses its own entries;
- ties among equal scores go to the earlier entry (the official `topk` leaves them to the
  backend).

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; scores `(B, H_kv, T)`;
attention masks `(..., T, T)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget, kv_head_scores, protect

IMPL = ImplInfo(
    name="h2o",
    title="H2O: heavy hitters by accumulated attention plus a recent window",
    papers=("h2o-2023",),
    family="kv-eviction",
    training_free=True,
    arxiv="2306.14048",
    simplified=(
        "scores averaged over the query heads of each KV head (GQA); every sample of a batch "
        "chooses its own entries"
    ),
)


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()  # the share form (ignored when hh_size and recent_size are set)
    heavy: float = 0.5  # share of the budget given to heavy hitters; the rest is the recent window
    # The official absolute form: keep at most hh_size + recent_size entries, at any time.
    hh_size: int | None = None
    recent_size: int | None = None

    def __post_init__(self) -> None:
        assert 0.0 <= self.heavy <= 1.0, "heavy must be in [0, 1]"
        assert (self.hh_size is None) == (self.recent_size is None), (
            "the absolute budget needs both hh_size and recent_size"
        )
        assert self.hh_size is None or self.hh_size >= 0, "hh_size must be >= 0"
        assert self.recent_size is None or self.recent_size >= 0, "recent_size must be >= 0"

    @property
    def absolute(self) -> bool:
        return self.hh_size is not None


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0)))


def accumulated_attention(attn: Tensor, kv_heads: int) -> Tensor:
    """Attention `(B, H, T_q, T)` summed over the queries and averaged over the query heads of
    each KV head: `(B, H_kv, T)`."""
    return kv_head_scores(attn.sum(dim=2), attn.shape[1], kv_heads)


def recent_count(n: int, heavy: float, budget: Budget) -> int:
    """Entries of a budget of `n` kept as the recent window (never crowding out the sinks)."""
    recent = max(budget.window, n - math.floor(heavy * n))
    return min(recent, n - min(budget.sinks, n))


def heavy_hitter_index(scores: Tensor, n: int, recent: int, sinks: int) -> Tensor:
    """Per KV head, the `n` entries kept: the first `sinks`, the last `recent`, and the best-scored
    others; `(B, H_kv, n)` in original order."""
    protected = protect(scores, sinks, recent)
    return protected.topk(n, dim=-1).indices.sort(dim=-1).values


class H2OPress:
    """Keeps accumulated scores per layer; evicts at prefill and on every decode step."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # per layer: (budget n, recent window, accumulated scores (B, H_kv, T) aligned with the
        # cache); None when nothing is ever evicted
        self.state: dict[int, tuple[int, int, Tensor] | None] = {}

    def _evict(
        self, ctx: PressContext, scores: Tensor, n: int, recent: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        sinks = 0 if self.config.absolute else self.config.budget.sinks
        index = heavy_hitter_index(scores, n, recent, sinks)  # (B, H_kv, n)
        expanded = index.unsqueeze(-1).expand(-1, -1, -1, ctx.keys.shape[-1])  # (B, H_kv, n, D)
        keys, values = ctx.keys.gather(2, expanded), ctx.values.gather(2, expanded)
        return keys, values, scores.gather(2, index)

    def step_scores(self, ctx: PressContext) -> Tensor:
        """This step's score of every cached entry `(B, H_kv, T)`, added to the running total:
        the attention it received (subclasses score differently, e.g. VATP)."""
        return accumulated_attention(ctx.attn, ctx.config.kv_heads)

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        c = self.config
        if c.hh_size is not None and c.recent_size is not None:
            # official: scores from the first token on, evict whenever beyond the budget
            n, recent = c.hh_size + c.recent_size, c.recent_size
        else:
            n = c.budget.tokens(T)
            if n >= T:
                self.state[ctx.layer] = None
                return ctx.keys, ctx.values
            recent = recent_count(n, c.heavy, c.budget)
        scores = self.step_scores(ctx)  # (B, H_kv, T)
        keys, values = ctx.keys, ctx.values
        if n < T:
            keys, values, scores = self._evict(ctx, scores, n, recent)
        self.state[ctx.layer] = (n, recent, scores)
        return keys, values

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        state = self.state.get(ctx.layer)
        if state is None:
            return ctx.keys, ctx.values
        n, recent, scores = state
        new = ctx.keys.shape[2] - scores.shape[2]
        # (B, H_kv, T): the new entries start from zero
        scores = torch.cat([scores, scores.new_zeros(*scores.shape[:2], new)], dim=2)
        scores = scores + self.step_scores(ctx).to(scores.dtype)
        keys, values = ctx.keys, ctx.values
        if keys.shape[2] > n:
            keys, values, scores = self._evict(ctx, scores, n, recent)
        self.state[ctx.layer] = (n, recent, scores)
        return keys, values


def make_press(config: Config = Config()) -> H2OPress:
    return H2OPress(config)


# --- the masked-attention variant of the paper's lm-eval numbers -------------------------------


def local_heavy_hitter_mask(scores: Tensor, heavy_budget: int) -> Tensor:
    """Which keys each query row may attend to under H2O's row-by-row eviction, `(..., T, T)`
    bool, from pre-softmax attention scores `(..., T, T)` with the causal mask applied.

    Rows `< heavy_budget` see the keys of the top-left `heavy_budget` block up to themselves.
    Row `t >= heavy_budget` sees the `heavy_budget - 1` keys with the highest accumulated
    attention so far (rows before t, evicted keys at zero) and itself; then row t's own unmasked
    attention is added and every key it did not see is zeroed. Accumulation in the scores'
    dtype, as the official code. An empty mask when `heavy_budget <= 0` (the official caller's
    rule)."""
    T = scores.shape[-1]
    assert scores.shape[-2] == T, "one query row per key: (..., T, T)"
    mask = torch.zeros_like(scores, dtype=torch.bool)  # (..., T, T)
    if heavy_budget <= 0:
        return mask
    probs = scores.float().softmax(dim=-1).to(scores.dtype)  # (..., T, T)
    h = heavy_budget
    mask[..., :h, :h] = True
    accumulated = probs[..., :h, :].sum(dim=-2)  # (..., T)
    accumulated[..., h:] = 0
    for t in range(h, T):
        # among equal scores the earlier key wins
        top = accumulated.sort(dim=-1, descending=True, stable=True).indices[..., : h - 1]
        row = torch.zeros_like(accumulated, dtype=torch.bool).scatter_(-1, top, True)
        row[..., t] = True
        mask[..., t, :] = row
        accumulated = (accumulated + probs[..., t, :]) * row
    return mask.tril(0)  # the first rows' block without its future half (OPT's version)


def heavy_recent_mask(scores: Tensor, heavy_ratio: float, recent_ratio: float) -> Tensor:
    """The keys each query may attend to in H2O's masked attention, `(..., T, T)` bool: the heavy
    hitters of `local_heavy_hitter_mask` with `int(heavy_ratio * T)`, or the band of the
    `int(recent_ratio * T)` previous tokens, never a future token. Masked-out scores are set to
    the dtype's minimum before the softmax (`masked_scores`)."""
    T = scores.shape[-1]
    heavy = local_heavy_hitter_mask(scores, int(heavy_ratio * T))
    recent = int(recent_ratio * T)
    band = torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(-recent).tril(0)
    causal = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril(0)
    return (heavy | band) & causal


def masked_scores(scores: Tensor, heavy_ratio: float, recent_ratio: float) -> Tensor:
    """Pre-softmax scores `(..., T, T)` with everything outside `heavy_recent_mask` set to the
    dtype's minimum, as the official attention does before its softmax."""
    keep = heavy_recent_mask(scores, heavy_ratio, recent_ratio)
    return scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
