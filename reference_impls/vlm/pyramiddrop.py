"""PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction (arXiv 2410.17247).

Official code: Cooperx521/PyramidDrop@6444f304aee4b7edcb022839fb9e8cd07859704a
(`llava/model/modeling_llama_pdrop.py`: `pdrop_forward`, `pdrop_rank_drop`; the LLaVA-1.5
evaluation scripts' `--layer_list '[8,16,24]' --image_token_ratio_list "[0.5,0.25,0.125]"`); no
code was taken from it. Checked in memory: the official `pdrop_rank_drop` (inference branch,
right padding, bound to this module's tiny language model with one KV head per query head, its
rotary helpers stubbed by ours) against `query_attention` + `pdrop_scores` + `kept_count` +
`top_in_order` on 24 seeded cases (batch 1, 37-100 visual tokens, stages 0-2, rank layers 1-7,
contiguous positions): the returned sequence equal exactly (max abs difference 0.0).

The language model is cut into stages; at the start of each new stage (before layers 8, 16 and
24 of 32, 0-based) during prefill:

1. rank: the attention that the *last instruction token* (the last prompt token at inference)
   would give in that layer, computed with the layer's own norm, query/key projections and
   rotary positions on the current hidden states, softmax over the whole causal row, averaged
   over heads, read at the visual tokens;
2. drop: keep the top `int(n0 * ratio_s)` visual tokens, `n0` the visual tokens the language
   model started with and `ratio_s` the stage's ratio (0.5, 0.25, 0.125 by default, i.e. `lambda
   = 0.5` per stage), in their original order; text tokens stay.

Simplified / differs from the official code: kept tokens keep their original rotary positions;
the official code renumbers positions contiguously after each drop (so from the second stage on
it also ranks with renumbered positions, and while decoding it shifts each stage's positions by
the tokens dropped before it); this needs position support in `llava.py`. Ties among equal
scores keep the earlier token (the official `topk` leaves them to the backend). The official
code ranks each sample of a right-padded batch at its own last prompt token; this model has no
padding, so the last token serves every sample. Drops happen during prefill only, as
officially. PyramidDrop can also be used while training (the query is then the token before
each answer span); only the inference path is reproduced.

Shapes: hidden `(B, T, C)`; attention row `(B, H, T)`; scores `(B, v)`; kept `(B, k)`.

Record: `pyramiddrop-2024` in papers/.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, LlmState, attach, keep_visual, query_attention
from .select import top_in_order

IMPL = ImplInfo(
    name="pyramiddrop",
    title="PyramidDrop: stage-wise drops by the last instruction token's attention",
    papers=("pyramiddrop-2024",),
    family="pruning",
    training_free=True,
    arxiv="2410.17247",
    simplified="original rotary positions kept (the official code renumbers); inference only",
)


@dataclass(frozen=True)
class Config:
    layers: tuple[int, ...] = (8, 16, 24)  # drop before these layers (0-based)
    ratios: tuple[float, ...] = (0.5, 0.25, 0.125)  # visual tokens kept, share of the original

    def __post_init__(self) -> None:
        assert len(self.layers) == len(self.ratios), "one ratio per stage"
        assert list(self.layers) == sorted(set(self.layers)) and all(x >= 0 for x in self.layers)
        assert all(0.0 < r <= 1.0 for r in self.ratios), "ratios must be in (0, 1]"
        assert list(self.ratios) == sorted(self.ratios, reverse=True), "ratios must not grow"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    """Stages at 1/4, 1/2 and 3/4 of the depth with ratios `lambda, lambda^2, lambda^3`, lambda =
    keep ** (1/3), so that the last stage keeps the share `keep`; identity at `keep >= 1`."""
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    if keep >= 1.0:
        return Config(layers=(), ratios=())
    layers = sorted({max(1, depth * s // 4) for s in (1, 2, 3)})
    lam = keep ** (1 / 3)
    return Config(layers=tuple(layers), ratios=tuple(lam ** (i + 1) for i in range(len(layers))))


def kept_count(n0: int, ratio: float, current: int) -> int:
    """`int(n0 * ratio)` (as officially), never more than the `current` visual tokens."""
    return min(current, int(n0 * ratio))


def pdrop_scores(attn_row: Tensor, start: int, n: int) -> Tensor:
    """The last token's attention `(B, H, T)`, averaged over heads, at the visual tokens:
    `(B, n)`."""
    return attn_row[:, :, start : start + n].mean(dim=1)


class PyramidDropReducer:
    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def __call__(self, state: LlmState) -> tuple[Tensor, Tensor, int]:
        row = query_attention(state.model, state.layer, state.hidden, state.positions, -1)
        scores = pdrop_scores(row, state.prefix_len, state.visual_len)
        k = kept_count(state.visual_len0, self.ratio, state.visual_len)
        return keep_visual(state, top_in_order(scores, k))


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducers = {
        layer: PyramidDropReducer(ratio)
        for layer, ratio in zip(config.layers, config.ratios, strict=True)
    }
    with attach(model, llm=reducers) as patched:
        yield patched
