"""FastV: An Image is Worth 1/2 Tokens After Layer 2 (arXiv 2403.06764), record `fastv-2024`.

Checked against the official repository pkunlp-icler/FastV (the in-place pruning in its patched
`modeling_llama.py`, `fastv_forward`, and `lmms-eval/fastv_kvcache.py`); no code was taken from
it. Once, during prefill, before language-model layer K (0-based; "after layer K" in the paper,
K = 2 by default):

1. take the attention probabilities of layer K-1, averaged over heads, in the row of the *last*
   prompt token (the official code uses this row; the paper's text speaks of the attention a
   token receives from the other tokens, the code ranks by the last token's attention only);
2. rank the image tokens by that attention and keep the top `round(n * (1 - R))` of the `n`
   image tokens (R = 50% by default), in their original order; every text token stays;
3. layers K.. run on the shorter sequence; the kept tokens keep their original rotary positions
   (the official code passes `position_ids = keep_indexs`), and the cache of layers 0..K-1 keeps
   every token, so decoding continues at the original next position.

Simplified: nothing of the algorithm; the batch is ranked per sample (the official code reads
sample 0 of a batch). Shapes: attention `(B, H, T, T)`; image scores `(B, n)`; kept `(B, k)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

from ..registry import ImplInfo
from .llava import Llava, LlmState, attach, keep_visual
from .select import top_in_order

IMPL = ImplInfo(
    name="fastv",
    title="FastV: after layer K keep the image tokens the last token attends to most",
    papers=("fastv-2024",),
    family="pruning",
    training_free=True,
    arxiv="2403.06764",
    simplified="none of the algorithm; the batch is ranked per sample",
)


@dataclass(frozen=True)
class Config:
    layer: int = 2  # K: prune before layer K (0-based), with the attention of layer K-1
    ratio: float = 0.5  # R: share of the image tokens dropped

    def __post_init__(self) -> None:
        assert self.layer >= 1, "FastV needs the attention of an earlier layer: K >= 1"
        assert 0.0 <= self.ratio < 1.0, "ratio must be in [0, 1)"


def config_for(keep: float, depth: int = 32) -> Config:
    """Keep the share `keep` of the image tokens after layer 2 (layer 1 in a 2-layer model)."""
    return Config(layer=min(2, depth - 1), ratio=max(0.0, 1.0 - keep))


def kept_count(n: int, ratio: float) -> int:
    """Image tokens kept out of `n`: `round(n * (1 - R))` (Python's rounding, as officially)."""
    return round(n * (1.0 - ratio))


def fastv_scores(attn: Tensor, start: int, n: int) -> Tensor:
    """Attention `(B, H, T, T)` to image scores `(B, n)`: the last row, averaged over heads, at
    the image columns `[start, start + n)`."""
    return attn[:, :, -1, start : start + n].mean(dim=1)


class FastVReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: LlmState) -> tuple[Tensor, Tensor, int]:
        assert state.attn is not None, "FastV needs the attention of the previous layer"
        scores = fastv_scores(state.attn, state.prefix_len, state.visual_len)
        kept = top_in_order(scores, kept_count(state.visual_len, self.config.ratio))
        return keep_visual(state, kept)


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    """FastV on `model` inside the block; nothing is attached when R = 0."""
    reducers = {config.layer: FastVReducer(config)} if config.ratio > 0 else {}
    with attach(model, llm=reducers) as patched:
        yield patched
