"""LTP: Learned Token Pruning for Transformers (arXiv 2107.00910).

Record `ltp-2021`; official repository github.com/kssteven418/LTP. Each block `l` has a
threshold `theta_l`. A token's importance in block `l` is the attention it receives from the
unpruned real tokens, averaged over the heads and the query rows:
`s_i = 1 / (H N) * sum_h sum_j A_h[j, i]`, with N the padded input length as in the official
code (`average_over="input"`; `"kept"` divides by the sequence's own unpruned token count
instead, so that a sequence's scores sum to one and a sample does not depend on its batch).
Tokens with `s_i < max(theta_l, 1e-5)` (the official floor, `min_threshold`) are dropped
after the block's attention, so how many survive depends on the input, not on a top-k budget.
[CLS] is always kept so the head has its input.

Training (`Config.soft=True`): instead of dropping, each block multiplies its output by the
soft mask `sigmoid((s_i - theta_l) / T)` (temperature `T`, 1e-3 in the official code), which is
differentiable in `theta_l`; pass the thresholds as a tensor to `patch` to learn them.
Inference (`soft=False`): the hard pruning above.

Variable lengths: pruning is per sample, and the batch is kept rectangular. Each sample's kept
tokens move to the front (in their original order), the batch is cut to the longest sample's
count and the shorter samples are padded, with the padding mask updated; padding is never
attended to, so with `average_over="kept"` every sample gets exactly what it would get alone
(tested; with the official average a sample's scores depend on the batch's padded length). The
official code instead keeps every token and masks the pruned ones out of attention.

Checked against the official code at commit 8ab31a623fb71c5f4f8208e878097f214484e848, run in
memory outside the project: `AbsoluteThresholdTokenPruner.update_attention_mask`
(src/transformers/models/ltp/prune_modules.py, the `absolute_threshold` mode LTP uses) on seeded
random attention with padding and earlier-pruned tokens masked (-10000), against our reducer:
160 cases (batch 1-4, 2 or 12 heads, N 8-64, thresholds 1e-6 to 2/N): the kept non-[CLS] tokens
are identical in all, and so are the kept rows of our compacted output. Fixed by that check: the
importance now averages over the padded length and the threshold has the official 1e-5 floor
(before: the sample's own token count, no floor). The soft mask, `sigmoid((s - theta) / T)` on
the block output in training, is as in `LTPLayer.forward` (modeling_ltp.py).

Simplified: the paper learns the thresholds by training the model with the soft mask, then
fine-tunes it with hard pruning; none of that training is run here (`config_for` gives
heuristic thresholds). The official code protects no token: it pruned [CLS] in 165 sample rows
of those cases, harmlessly there, since a masked token still computes its own output; here
tokens are removed, so [CLS] is always kept for the head.

Shapes: tokens `(B, N, C)` with [CLS] at index 0; mask `(B, N)`; attention `(B, H, N, N)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of, seq_len_of
from ..registry import ImplInfo
from .encoder import TextEncoder, TextTokenState, attach, attention_received, compact

IMPL = ImplInfo(
    name="ltp",
    title="LTP: drop tokens whose attention importance is below a per-layer threshold",
    papers=("ltp-2021",),
    family="pruning",
    training_free=False,
    arxiv="2107.00910",
    simplified=(
        "thresholds are given, not learned (the soft mask that learns them is implemented and "
        "differentiable, but no training is run); [CLS] is always kept (tokens are removed, not "
        "masked)"
    ),
)


@dataclass(frozen=True)
class Config:
    # Per block from the first: the importance threshold (0 prunes nothing). Blocks past the
    # end of the tuple prune nothing.
    thresholds: tuple[float, ...] = ()
    soft: bool = False  # training-time soft mask instead of hard pruning
    temperature: float = 1e-3  # of the soft mask (official run.py's default)
    # The importance divides the attention received by heads x query rows: "input" (official)
    # counts every row of the padded input, pruned and padding ones too (they add nothing);
    # "kept" counts the sample's own unpruned real tokens, so samples do not depend on their batch
    average_over: str = "input"
    min_threshold: float = 1e-5  # official: a non-zero threshold prunes below at least 1e-5

    def __post_init__(self) -> None:
        assert all(0.0 <= t <= 1.0 for t in self.thresholds), "thresholds must be in [0, 1]"
        assert self.temperature > 0.0, "temperature must be positive"
        assert self.average_over in ("input", "kept"), "average_over must be 'input' or 'kept'"
        assert self.min_threshold >= 0.0, "min_threshold must be >= 0"


def config_for(
    keep: float, model_config: object = None, depth: int = 4, seq_len: int = 128
) -> Config:
    """Heuristic thresholds rising linearly over the blocks (as the official code starts them) to
    `2 * (1 - keep) / seq_len` at the last: at keep 0.5 that is the mean score `1 / n` of a
    sequence of `seq_len` tokens. LTP has no keep rate: what survives depends on the input.
    Identity (no thresholds) at keep >= 1."""
    depth, seq_len = depth_of(model_config, depth), seq_len_of(model_config, seq_len)
    assert keep > 0.0, "keep must be positive"
    if keep >= 1.0:
        return Config()
    final = 2.0 * (1.0 - keep) / seq_len
    return Config(thresholds=tuple(final * (j + 1) / depth for j in range(depth)))


def importance(attn: Tensor, mask: Tensor, rows: int | None = None) -> Tensor:
    """LTP's importance `(B, N)` from `attn (B, H, N, N)`: attention received from the real query
    rows, averaged over heads and `rows` query rows (the official: the padded input length), or,
    when `rows` is None, over the sample's own real tokens; 0 for padding."""
    heads = attn.shape[1]
    if rows is not None:
        return attention_received(attn, mask) / (heads * rows)
    n = mask.sum(dim=1, keepdim=True).to(attn.dtype)  # (B, 1)
    return attention_received(attn, mask) / (heads * n)


def keep_mask(score: Tensor, mask: Tensor, threshold: float | Tensor) -> Tensor:
    """Tokens that survive `threshold`: real, and `score >= threshold` or [CLS]. `(B, N)` bool."""
    keep = mask & (score >= threshold)
    keep[:, 0] = True
    return keep


def prune(
    x: Tensor, mask: Tensor, score: Tensor, threshold: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Hard pruning of `x (B, N, C)`: `(x (B, K, C), mask (B, K))`, K the longest survivor count."""
    return compact(x, keep_mask(score, mask, threshold))


def soft_mask(score: Tensor, threshold: float | Tensor, temperature: float) -> Tensor:
    """The training-time mask `sigmoid((score - threshold) / temperature)`, `(B, N)`, with [CLS]
    at 1; differentiable in `threshold` and `score`."""
    m = torch.sigmoid((score - threshold) / temperature)
    return torch.cat([torch.ones_like(m[:, :1]), m[:, 1:]], dim=1)


class LTPReducer:
    def __init__(self, config: Config, thresholds: Sequence[float] | Tensor) -> None:
        self.config = config
        self.thresholds = thresholds

    def __call__(self, state: TextTokenState) -> tuple[Tensor, Tensor]:
        threshold = self.thresholds[state.index]
        rows = state.input_len if self.config.average_over == "input" else None
        score = importance(state.attn, state.mask, rows)
        if self.config.soft:
            assert score.shape[1] == state.x.shape[1], "the soft mask needs no earlier reduction"
            m = soft_mask(score, threshold, self.config.temperature)  # (B, N)
            return state.x * m.unsqueeze(-1), state.mask
        if not isinstance(threshold, Tensor) and threshold == 0.0:
            return state.x, state.mask  # as the official code: nothing to prune
        floor = self.config.min_threshold
        if isinstance(threshold, Tensor):
            threshold = threshold.clamp_min(floor)
        else:
            threshold = max(floor, threshold)
        return prune(state.x, state.mask, score, threshold)


@contextmanager
def patch(
    model: TextEncoder, config: Config = Config(), thresholds: Tensor | None = None
) -> Iterator[TextEncoder]:
    """Hard pruning after the attention of each thresholded block, or (`config.soft`) the soft
    mask on each such block's output. `thresholds (L,)`, when given, replaces
    `config.thresholds` (e.g. a learnable parameter)."""
    values: Sequence[float] | Tensor = config.thresholds if thresholds is None else thresholds
    if len(values) > len(model.blocks):
        raise ValueError(f"{len(values)} thresholds for a model of depth {len(model.blocks)}")
    hooks = dict.fromkeys(range(len(values)), LTPReducer(config, values))
    mid, post = (None, hooks) if config.soft else (hooks, None)
    with attach(model, mid=mid, post=post) as patched:
        yield patched
