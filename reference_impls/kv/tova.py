"""Transformers are Multi-State RNNs (TOVA: Token Omission Via Attention), arXiv 2401.06104,
record `tova-2024`.

Checked against the official repository schwartz-lab-NLP/TOVA (src/tova_cache.py, `TOVACache`;
src/convert_models/llama_custom.py); no code was taken from it.

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

Simplified: nothing in the policy; the state budget is a share of the prompt rather than an
absolute number of states.

Shapes: keys and values `(B, H_kv, T, D)`; attention `(B, H, T_q, T)`; scores `(B, H_kv, T)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..llm.llama import PressContext
from ..registry import ImplInfo
from .base import Budget, keep_top, protect

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


def config_for(keep: float, model_config: object = None) -> Config:
    return Config(Budget(keep=min(keep, 1.0)))


def last_query_scores(attn: Tensor, kv_heads: int) -> Tensor:
    """Attention `(B, H, T_q, T)` of the last query averaged over all query heads of the layer,
    the same row for every KV head: `(B, H_kv, T)`."""
    layer_mean = attn[:, :, -1].mean(dim=1)  # (B, T)
    return layer_mean.unsqueeze(1).expand(-1, kv_heads, -1)  # (B, H_kv, T)


class TOVAPress:
    """Evicts to the budget at prefill, then one state per decode step."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.cap: dict[int, int | None] = {}  # per layer: the number of states fixed at prefill

    def _keep(self, ctx: PressContext, n: int) -> tuple[Tensor, Tensor]:
        budget = self.config.budget
        scores = last_query_scores(ctx.attn, ctx.config.kv_heads)  # (B, H_kv, T)
        scores = protect(scores, budget.sinks, budget.window)
        keys, values, _ = keep_top(ctx.keys, ctx.values, scores, n)
        return keys, values

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        n = self.config.budget.tokens(T)
        self.cap[ctx.layer] = n if n < T else None
        return self._keep(ctx, n) if n < T else (ctx.keys, ctx.values)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        n = self.cap.get(ctx.layer)
        if n is None or ctx.keys.shape[2] <= n:
            return ctx.keys, ctx.values
        return self._keep(ctx, n)


def make_press(config: Config = Config()) -> TOVAPress:
    return TOVAPress(config)
