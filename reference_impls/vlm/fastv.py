"""FastV: An Image is Worth 1/2 Tokens After Layer 2 (arXiv 2403.06764), record `fastv-2024`.

Checked against the official repository pkunlp-icler/FastV at commit d1659729 (the in-place
pruning in `src/FastV/llava-hf/transformers/src/transformers/models/llama/modeling_llama.py`,
`LlamaModel.forward`, the same rule as `fastv_forward.py` and `lmms-eval/fastv_kvcache.py`); no
code was taken from it. Once, during prefill, before language-model layer K (0-based; "after
layer K" in the paper, K = 2 by default):

1. take the attention probabilities of layer K-1, averaged over heads, in the row of the *last*
   prompt token (the official code uses this row; the paper's text speaks of the attention a
   token receives from the other tokens, the code ranks by the last token's attention only);
2. rank the image tokens by that attention and keep the top `round(n * (1 - R))` of the `n`
   image tokens (R = 50% by default), in their original order; every text token stays;
3. layers K.. run on the shorter sequence; the kept tokens keep their original rotary positions
   (the official code passes `position_ids = keep_indexs`), and the cache of layers 0..K-1 keeps
   every token, so decoding continues at the original next position.

Batches: the official code ranks with the attention of sample 0 (`torch.mean(attn, dim=1)[0]`)
and keeps the same image positions in every sample of the batch; that is the default here.
`Config(rank_per_sample=True)` ranks each sample by its own attention instead (what batch size
1, the setting of the paper's numbers, does for every sample).

Check against the official code (run in memory from the fetched snapshot, outside the project):
the official selection lines of `LlamaModel.forward` (mean over heads of sample 0, last row,
`topk(round(n * (1 - R)))`, concatenation with the text positions, sort) against
`FastVReducer` on 48 seeded random cases (B in {1, 2, 3}, H in {1, 4}, n in {5, 16, 37},
R in {0.25, 0.5, 0.75, 0.9}, float32 and float16 attention): the kept positions are equal in
every case and every sample; the hidden states are the same rows.

Simplified: nothing of the algorithm. Ties: the official `topk` leaves the choice among equal
scores to the backend; here the earlier token wins (`select.top_in_order`).

Shapes: attention `(B, H, T, T)`; image scores `(B, n)`; kept `(B, k)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

from ..families import depth_of
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
    simplified="none of the algorithm",
)


@dataclass(frozen=True)
class Config:
    layer: int = 2  # K: prune before layer K (0-based), with the attention of layer K-1
    ratio: float = 0.5  # R: share of the image tokens dropped
    # False (official): every sample keeps the image positions sample 0's attention ranks first
    rank_per_sample: bool = False

    def __post_init__(self) -> None:
        assert self.layer >= 1, "FastV needs the attention of an earlier layer: K >= 1"
        assert 0.0 <= self.ratio < 1.0, "ratio must be in [0, 1)"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    """Keep the share `keep` of the image tokens after layer 2 (layer 1 in a 2-layer model)."""
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
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
        scores = fastv_scores(state.attn, state.prefix_len, state.visual_len)  # (B, n)
        k = kept_count(state.visual_len, self.config.ratio)
        if self.config.rank_per_sample:
            kept = top_in_order(scores, k)  # (B, k)
        else:  # sample 0's choice for the whole batch, as the official code
            kept = top_in_order(scores[:1], k).expand(scores.shape[0], k)  # (B, k)
        return keep_visual(state, kept)


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    """FastV on `model` inside the block; nothing is attached when R = 0."""
    reducers = {config.layer: FastVReducer(config)} if config.ratio > 0 else {}
    with attach(model, llm=reducers) as patched:
        yield patched
