"""Transformers are Multi-State RNNs (TOVA: Token Omission Via Attention), arXiv 2401.06104,
record `tova-2024`.

Checked against the official repository schwartz-lab-NLP/TOVA at commit 9c7d09bfff64
(src/tova_cache.py, `TOVACache.reduce`, called by src/convert_models/llama_custom.py after each
layer's attention); no code was taken from it. The official `reduce` was run in memory, outside
the project, against `TOVAPress.compress` on 384 seeded cases (3 seeds x float32/float16 x batch
1, 2 x 4/4 and 6/2 query/KV heads x T 9, 40 x cache_size 1, 5, 8, 39 x 1 or 3 new queries): the
same entries kept in all 384. Ties (none in these cases) go to the earlier position here and to
the backend's `topk` there.

The paper reads a decoder-only transformer as an RNN whose state is the KV cache, with one
"state" per token; bounding the number of states compresses the cache. TOVA's policy keeps a
fixed number of states `n` per layer and, whenever there is one too many, drops the state the
CURRENT query attends to least:

1. the score of every cached entry is the attention of the last query, averaged over all the
   query heads of the layer, so all KV heads of a layer keep the same positions;
2. prefill: the last prompt query scores the prompt's entries and the `n = Budget.tokens(T)`
   best-scored stay;
3. decode: the new token is appended, the new query scores every entry (the new one included,
   which may itself be dropped), and the lowest-scored entry is evicted, so every step ends with
   exactly `n` entries.

At `keep >= 1` nothing is evicted, neither at prefill nor later. `Budget.sinks` and
`Budget.window` can protect tokens; TOVA itself protects none, and that is the default here.
`Config.cache_size` gives the official absolute budget (`TOVACache(cache_size)`): a prompt longer
than it is cut at prefill, a shorter one stays whole, and decoding grows the cache up to
`cache_size` states and then evicts one per step. Without it (the default, what `config_for`
builds) the number of states is the share `Budget.tokens(T)` of the prompt, fixed at prefill.

As a `base.ScorerPress` the method is its score rule (`last_query_scores`) with
`evict_on_decode`: the same rule evicts at prefill and at every decoding step.

Simplified: nothing in the policy.

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; scores `(B, H_kv, T)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget, ScorerPress

IMPL = ImplInfo(
    name="tova",
    title="TOVA: drop the state the current query attends to least (heads averaged)",
    papers=("tova-2024",),
    family="kv-eviction",
    training_free=True,
    arxiv="2401.06104",
    simplified="nothing in the policy; the number of states is a share of the prompt",
)


@dataclass(frozen=True)
class Config:
    budget: Budget = Budget()
    cache_size: int | None = None  # official `TOVACache(cache_size)`: a fixed number of states

    def __post_init__(self) -> None:
        if self.cache_size is not None:
            protected = self.budget.sinks + self.budget.window
            assert self.cache_size >= max(1, protected), "cache_size must hold the protected"


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0)))


def last_query_scores(attn: Tensor, kv_heads: int) -> Tensor:
    """Attention `(B, H, T_q, T)` of the last query averaged over all query heads of the layer,
    the same row for every KV head: `(B, H_kv, T)`."""
    layer_mean = attn[:, :, -1].mean(dim=1)  # (B, T)
    return layer_mean.unsqueeze(1).expand(-1, kv_heads, -1)  # (B, H_kv, T)


class TOVAPress(ScorerPress):
    """Evicts to the budget at prefill, then one state per decode step."""

    evict_on_decode = True

    def __init__(self, config: Config) -> None:
        super().__init__(config.budget)
        self.config = config

    def score(self, ctx: PressContext) -> Tensor:
        return last_query_scores(ctx.attn, ctx.config.kv_heads)

    def tokens(self, ctx: PressContext) -> int:
        size = self.config.cache_size
        return super().tokens(ctx) if size is None else min(ctx.keys.shape[2], size)

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        keys, values = super().prefill(ctx)
        if self.config.cache_size is not None:  # a cap even when the prompt fits
            self.cap[ctx.layer] = self.config.cache_size
        return keys, values


def make_press(config: Config = Config()) -> TOVAPress:
    return TOVAPress(config)
