"""Model Tells You What to Discard: Adaptive KV Cache Compression for LLMs (FastGen),
arXiv 2310.01801, record `fastgen-2024`.

No official code: the official repository machilusZ/FastGen (checked at
fb707b6b883b06087b2e828c7c26be3ae295e8f0, 2024-08-14) holds only a README and a LICENSE; it
points to the community reproduction AnswerDotAI/cold-compress (cache.py, `KVCacheHybrid`),
which was read but not run against this module (it is not the authors' code); no code was
taken from it. Written from the paper (Sections 3.3-3.4, Algorithms 1-2, Equation 2).

Attention heads have distinct, stable structures, so each head gets its own cache policy, chosen
by profiling its attention over the prompt:

1. the policies are the paper's greedy hybrid set, each a superset of the previous one:
   `special` (special tokens only), `special+punct` (and punctuation), `special+punct+frequent`
   (and the `ceil(r_f * T)` entries with the largest accumulated attention: the column sums of
   the prompt's attention, H2O's heavy hitters), `special+punct+frequent+local` (and the last
   `ceil(r_l * T)` tokens), `full`; the paper's `r_l = r_f = 0.3`;
2. profiling (Equation 1): a policy recovers a head's attention map `A` when the attention mass
   its cache keeps, averaged over the prompt's query rows, is at least `T` (`Config.recovery`,
   0.95 in the paper's analysis). For row `i` the locality part keeps the tokens less than
   `ceil(r_l * T)` positions before `i` (the window as it stands when token `i` is current); the
   other parts are fixed sets;
3. each KV head takes the policy of least cache cost (entries kept after prefill) among those
   that recover every query head sharing it (grouped-query attention: the paper's models have
   none); accumulated attention is averaged over the group; `full` is always feasible;
4. decoding (Algorithm 2): each step appends the new token and re-applies every head's policy
   to what the head holds: special and punctuation entries stay, the local window keeps the
   tokens less than `ceil(r_l * T)` positions back (`T` the prompt length), the frequent part
   keeps the `ceil(r_f * t)` best accumulated scores (`t` the current length; the new queries'
   attention is added to the scores at every step).

Memory layout. Heads keep different numbers of entries, but the cache is one tensor per layer.
Each layer therefore stores `m` entries per KV head and a head whose policy keeps fewer holds
filler entries besides: the entries it attended least (lowest accumulated attention), which change
its attention the least, so each head still behaves much like its policy. (Filling with its
most-attended other entries instead was clearly worse on SmolLM2 pass-key prompts.)
`press.stats[layer]` reports every head's policy and how many entries the policy itself keeps
(the paper's memory) next to `m`. Two modes:

- `budget=None` (the paper): `m` is the largest policy count of the layer at prefill; a layer
  with one `full` head stores everything;
- `budget=Budget(keep)` (what `config_for` gives, to compare methods at equal memory): `m =
  Budget.tokens(T)` exactly; each head takes the cheapest recovering policy among those that fit
  in `m`, else the largest policy that fits (the one recovering most, the set being nested),
  else (rare: more special tokens than `m`) its `m` best accumulated scores (policy -1).

During decoding `m` never shrinks and grows by one entry at a step only when some head's policy
keeps everything it holds (a `full` head, or a window or frequent part still filling up).

Finding special and punctuation tokens. `Config.special_ids` and `Config.punct_ids` are vocabulary
ids (`token_ids(tokenizer)` builds them for a tokenizer). `PressContext` carries no token ids, so
the press recognises the tokens by the input of layer 0 (the normed embedding, a function of the
id alone): call `press.bind(model)` once before use when either tuple is non-empty.

Simplified: grouped-query attention (above); the recovery of Equation 1 is measured as the kept
attention mass (the paper's Section 4 reading; the distance to the renormalised map is a function
of it); the budget mode and the filler entries are ours (the paper keeps ragged per-head caches
with a custom kernel); `recovery=1.0` means the full cache for every head (the identity).

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; per-head masks and scores
`(B, H_kv, S)` over the `S` entries a layer holds; policy masks `(P, B, H_kv, S)` for the `P = 5`
policies; recoveries `(P, B, H)`.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from ..selection import top_in_order as best_in_order
from .base import Budget, kv_head_scores

IMPL = ImplInfo(
    name="fastgen",
    title="FastGen: per-head policy (special, punctuation, frequent, local, full) by profiling",
    papers=("fastgen-2024",),
    family="kv-eviction",
    training_free=True,
    arxiv="2310.01801",
    simplified=(
        "GQA: a KV head's policy must recover every query head of its group; one tensor per "
        "layer, so heads are padded with their least-attended entries to the layer's largest "
        "count, or to an exact budget in config_for's budget mode (ours); special and "
        "punctuation tokens recognised by layer 0's input"
    ),
)

POLICIES = (
    "special",
    "special+punct",
    "special+punct+frequent",
    "special+punct+frequent+local",
    "full",
)
FULL = len(POLICIES) - 1
FALLBACK = -1  # budget mode only: no policy fits; the head keeps its best accumulated scores


@dataclass(frozen=True)
class Config:
    recovery: float = 0.95  # T: attention share every head's policy must recover (1.0: full)
    local_ratio: float = 0.3  # r_l: the local window as a share of the prompt length
    frequent_ratio: float = 0.3  # r_f: heavy hitters as a share of the current length
    special_ids: tuple[int, ...] = ()  # vocabulary ids of the special tokens
    punct_ids: tuple[int, ...] = ()  # vocabulary ids of the punctuation tokens
    budget: Budget | None = None  # None: the paper; else every layer stores Budget.tokens(T)

    def __post_init__(self) -> None:
        assert 0.0 < self.recovery <= 1.0, "recovery must be in (0, 1]"
        assert 0.0 <= self.local_ratio <= 1.0, "local_ratio must be in [0, 1]"
        assert 0.0 <= self.frequent_ratio <= 1.0, "frequent_ratio must be in [0, 1]"
        assert self.budget is None or (self.budget.sinks == 0 and self.budget.window == 0), (
            "FastGen protects no sinks or window: its policies decide"
        )


def config_for(keep: float, model_config: object = None) -> Config:
    if keep >= 1.0:
        return Config(recovery=1.0)
    return Config(budget=Budget(keep=keep))


def ratio_count(ratio: float, length: int) -> int:
    """`ceil(ratio * length)` entries (robust to the float error of the product)."""
    return math.ceil(ratio * length - 1e-9)


def top_mask(scores: Tensor, n: int) -> Tensor:
    """`(B, H_kv, S)` bool: the `n` best scores of each row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter(-1, best_in_order(scores, min(n, scores.shape[-1])), True)


def policy_masks(
    pos: Tensor,
    special: Tensor,
    punct: Tensor,
    scores: Tensor,
    length: int,
    local: int,
    frequent: int,
) -> Tensor:
    """What each policy keeps of the entries a head holds: `(P, B, H_kv, S)` bool.

    `pos` the positions of the entries, `special` and `punct` their flags, `scores` their
    accumulated attention, all `(B, H_kv, S)`; `length` the current sequence length; `local`
    the window length; `frequent` the number of heavy hitters."""
    recent = pos >= length - local
    sp = special
    spp = sp | punct
    sppf = spp | top_mask(scores, frequent)
    sppfl = sppf | recent
    return torch.stack([sp, spp, sppf, sppfl, torch.ones_like(sp)])


def recoveries(attn: Tensor, fixed: Tensor, local: int, kv_heads: int) -> Tensor:
    """Attention mass each policy keeps, per query head, averaged over the query rows:
    `(P, B, H)`. `attn (B, H, T, T)`; `fixed (P, B, H_kv, T)`: the policies' sets without
    their locality part (added here per row: keys less than `local` positions back)."""
    B, H, T, _ = attn.shape
    groups = H // kv_heads
    rows = torch.arange(T, device=attn.device)
    band = (rows[:, None] - rows[None, :]) < local  # (T, T): row i keeps keys j > i - local
    out = []
    for index, name in enumerate(POLICIES):
        if name == "full":
            out.append(torch.ones(B, H, dtype=attn.dtype, device=attn.device))
            continue
        mask = fixed[index].unsqueeze(2)  # (B, H_kv, 1, T)
        if "local" in name:
            mask = mask | band  # (B, H_kv, T, T)
        mask = mask.repeat_interleave(groups, dim=1)  # (B, H, T or 1, T)
        out.append((attn * mask).sum(dim=-1).mean(dim=-1))  # (B, H)
    return torch.stack(out)


def choose_policies(
    recovered: Tensor, cost: Tensor, threshold: float, kv_heads: int, cap: int | None
) -> Tensor:
    """Policy index per KV head `(B, H_kv)`: the cheapest whose recovery reaches `threshold` for
    every query head of the group (ties: the earlier policy); with a `cap`, among the policies
    keeping at most `cap` entries, else the largest that fits, else `FALLBACK`.
    `recovered (P, B, H)`, `cost (P, B, H_kv)`."""
    P, B, H = recovered.shape
    worst = recovered.view(P, B, kv_heads, H // kv_heads).amin(dim=-1)  # (P, B, H_kv)
    feasible = worst >= threshold
    feasible[FULL] = True
    fits = cost <= cap if cap is not None else torch.ones_like(feasible)
    ok = feasible & fits
    big = torch.iinfo(torch.long).max
    choice = torch.where(ok, cost.long(), big).argmin(dim=0)  # first minimum: the earlier policy
    if cap is not None:
        order = torch.arange(P, device=cost.device).view(P, 1, 1).expand_as(fits)
        largest = torch.where(fits, order, FALLBACK).amax(dim=0)  # (B, H_kv)
        choice = torch.where(ok.any(dim=0), choice, largest)
    return choice


def chosen_mask(masks: Tensor, policy: Tensor, scores: Tensor, cap: int | None) -> Tensor:
    """The chosen policy's set per head `(B, H_kv, S)`; `FALLBACK` heads keep `cap` best scores."""
    _, B, Hkv, S = masks.shape
    index = policy.clamp(min=0).view(1, B, Hkv, 1).expand(1, B, Hkv, S)
    kept = masks.gather(0, index).squeeze(0)
    if cap is not None and bool((policy == FALLBACK).any()):
        kept = torch.where((policy == FALLBACK).unsqueeze(-1), top_mask(scores, cap), kept)
    return kept


def fill_index(kept: Tensor, scores: Tensor, m: int) -> Tensor:
    """`(B, H_kv, m)` entries to store, ascending: each head's kept entries, then its
    least-attended others (earlier positions first on ties) until it has `m`."""
    priority = torch.where(kept, torch.full_like(scores, float("inf")), -scores)
    return best_in_order(priority, m)


def profile(
    attn: Tensor, special: Tensor, punct: Tensor, kv_heads: int, config: Config, cap: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Prefill: `(policy (B, H_kv), kept (B, H_kv, T) bool, scores (B, H_kv, T))` from the
    prompt's attention `(B, H, T, T)` and the token flags `(B, T)`."""
    B, H, T, _ = attn.shape
    scores = kv_head_scores(attn.sum(dim=2), H, kv_heads)  # (B, H_kv, T) accumulated attention
    local = ratio_count(config.local_ratio, T)
    frequent = ratio_count(config.frequent_ratio, T)
    pos = torch.arange(T, device=attn.device).expand(B, kv_heads, T)
    flags = [f.unsqueeze(1).expand(B, kv_heads, T) for f in (special, punct)]
    masks = policy_masks(pos, flags[0], flags[1], scores, T, local, frequent)  # (P, B, H_kv, T)
    cost = masks.sum(dim=-1)  # (P, B, H_kv)
    # the locality part is added per row in `recoveries`
    fixed = masks.clone()
    fixed[POLICIES.index("special+punct+frequent+local")] = masks[
        POLICIES.index("special+punct+frequent")
    ]
    recovered = recoveries(attn, fixed, local, kv_heads)
    policy = choose_policies(recovered, cost, config.recovery, kv_heads, cap)
    return policy, chosen_mask(masks, policy, scores, cap), scores


def gather_entries(keys: Tensor, values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    expanded = index.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])  # (B, H_kv, m, D)
    return keys.gather(2, expanded), values.gather(2, expanded)


def token_ids(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(special_ids, punct_ids)` of a Hugging Face tokenizer: its special tokens, and the tokens
    whose text is only punctuation (ASCII, surrounding spaces ignored)."""
    special = tuple(sorted(set(tokenizer.all_special_ids)))
    punct = []
    for token in range(len(tokenizer)):
        text = tokenizer.decode([token]).strip()
        if token not in special and text and all(ch in string.punctuation for ch in text):
            punct.append(token)
    return special, tuple(punct)


@dataclass(frozen=True)
class LayerStats:
    """What FastGen chose for one layer, after the latest step."""

    policy: Tensor  # (B, H_kv) index into POLICIES (FALLBACK: budget mode, nothing fits)
    policy_kept: Tensor  # (B, H_kv) entries the policy itself keeps (the paper's memory)
    stored: int  # entries stored per KV head (the largest count, or the budget)


@dataclass
class _LayerState:
    pos: Tensor  # (B, H_kv, m) positions of the stored entries
    scores: Tensor  # (B, H_kv, m) their accumulated attention
    policy: Tensor  # (B, H_kv)
    local: int  # window length, from the prompt length
    cap: int | None  # the budget mode's entries per head


class FastGenPress:
    """Profiles every head at prefill, then applies its policy at prefill and every decode step."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tables: tuple[Tensor, Tensor] | None = None  # layer-0 inputs of special, punct ids
        self.state: dict[int, _LayerState | None] = {}
        self.stats: dict[int, LayerStats] = {}
        self.special: Tensor | None = None  # (B, N) flags of every position seen
        self.punct: Tensor | None = None

    def bind(self, model: Any) -> FastGenPress:
        """Remember layer 0's input for the configured ids, to recognise those tokens."""
        device = model.embed_tokens.weight.device
        norm = model.layers[0].input_layernorm

        def layer_zero_input(ids: tuple[int, ...]) -> Tensor:  # (S, C)
            return norm(model.embed_tokens(torch.tensor(ids, dtype=torch.long, device=device)))

        with torch.no_grad():
            self.tables = (
                layer_zero_input(self.config.special_ids),
                layer_zero_input(self.config.punct_ids),
            )
        return self

    def _flag(self, hidden: Tensor, fresh: bool) -> None:
        """Record whether the new tokens (layer 0's input `(B, T_new, C)`) are special/punct."""
        B, T, C = hidden.shape
        flags = []
        for index, ids in enumerate((self.config.special_ids, self.config.punct_ids)):
            found = torch.zeros(B, T, dtype=torch.bool, device=hidden.device)
            if ids:
                if self.tables is None:
                    raise RuntimeError(
                        "FastGenPress: call bind(model) first; the special and punctuation "
                        "tokens are recognised by layer 0's input (PressContext has no ids)"
                    )
                table = self.tables[index].to(hidden.dtype)  # (S, C)
                flat = hidden.reshape(B * T, C)
                nearest = torch.cdist(flat, table).argmin(dim=-1)  # (B*T,)
                gap = (flat - table[nearest]).abs().amax(dim=-1)
                found = (gap <= 1e-4 * (1.0 + float(table.abs().max()))).view(B, T)
            flags.append(found)
        if fresh or self.special is None or self.punct is None:
            self.special, self.punct = flags
        else:
            self.special = torch.cat([self.special, flags[0]], dim=1)
            self.punct = torch.cat([self.punct, flags[1]], dim=1)

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        c = self.config
        if ctx.layer == 0:
            self.state, self.stats = {}, {}
            self._flag(ctx.hidden, fresh=True)
        B, Hkv, T, _ = ctx.keys.shape
        cap = c.budget.tokens(T) if c.budget is not None else None
        if c.recovery >= 1.0 or (cap is not None and cap >= T):
            self.state[ctx.layer] = None
            full = torch.full((B, Hkv), FULL, dtype=torch.long, device=ctx.keys.device)
            self.stats[ctx.layer] = LayerStats(full, torch.full_like(full, T), T)
            return ctx.keys, ctx.values
        assert self.special is not None and self.punct is not None
        policy, kept, scores = profile(
            ctx.attn, self.special, self.punct, ctx.config.kv_heads, c, cap
        )
        m = cap if cap is not None else int(kept.sum(dim=-1).max())
        index = fill_index(kept, scores, m)  # (B, H_kv, m)
        local = ratio_count(c.local_ratio, T)
        self.state[ctx.layer] = _LayerState(index, scores.gather(2, index), policy, local, cap)
        self.stats[ctx.layer] = LayerStats(policy, kept.sum(dim=-1), m)
        return gather_entries(ctx.keys, ctx.values, index)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        if ctx.layer == 0:
            self._flag(ctx.hidden, fresh=False)
        state = self.state.get(ctx.layer)
        if state is None:
            return ctx.keys, ctx.values
        assert self.special is not None and self.punct is not None
        B, Hkv = ctx.keys.shape[:2]
        new = ctx.queries.shape[2]
        length = ctx.seen + new
        fresh = torch.arange(ctx.seen, length, device=ctx.keys.device).expand(B, Hkv, new)
        pos = torch.cat([state.pos, fresh], dim=2)  # (B, H_kv, S) the entries held, new last
        scores = torch.cat([state.scores, state.scores.new_zeros(B, Hkv, new)], dim=2)
        scores = scores + kv_head_scores(ctx.attn.sum(dim=2), ctx.attn.shape[1], Hkv).to(
            scores.dtype
        )
        special = self.special.gather(1, pos.reshape(B, -1)).view_as(pos)
        punct = self.punct.gather(1, pos.reshape(B, -1)).view_as(pos)
        frequent = ratio_count(self.config.frequent_ratio, length)
        masks = policy_masks(pos, special, punct, scores, length, state.local, frequent)
        kept = chosen_mask(masks, state.policy, scores, state.cap)
        stored = max(state.pos.shape[2], int(kept.sum(dim=-1).max()))
        index = fill_index(kept, scores, stored)  # (B, H_kv, stored) into the S entries held
        self.state[ctx.layer] = _LayerState(
            pos.gather(2, index), scores.gather(2, index), state.policy, state.local, state.cap
        )
        self.stats[ctx.layer] = LayerStats(state.policy, kept.sum(dim=-1), stored)
        return gather_entries(ctx.keys, ctx.values, index)


def make_press(config: Config = Config()) -> FastGenPress:
    return FastGenPress(config)
