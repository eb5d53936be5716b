"""Adaptive Token Sampling For Efficient Vision Transformers (ATS; arXiv 2111.15667).

Record `ats-2022`; checked against the official repository github.com/adaptivetokensampling/ATS
(`libs/models/transformers/ats_block.py`). Between attention and MLP of the chosen blocks:

1. significance of patch token j: `S_j = a_j * ||v_j|| / sum_i a_i * ||v_i||`, with `a_j` the CLS
   token's attention to j (over heads; the official code sums them, here `vit.cls_attention`
   averages them: the same after normalising) and `v_j` the token's value vector, all heads
   concatenated, as in the official code;
2. inverse transform sampling: sort the scores ascending, take their cumulative distribution
   (CDF) and, at K evenly spaced quantiles `r_i = (2i - 1) / (2K)`, i = 1..K (deterministic
   sampling, the inference mode), pick the first token whose CDF reaches `r_i`. K is the block's
   fixed budget (`Config.keep_rates`, a share of the model's patch count), so an image's result
   never depends on the other images in its batch;
3. a token picked several times is kept once, so each image keeps its own number M <= K of
   tokens: significant tokens absorb many quantiles, and flat score maps keep more tokens.

Values: `TokenState` carries the attention but not the values, and after attention the block's
input is gone (`state.x` already includes the attention output). `patch()` therefore also
attaches a pre hook to each ATS block that reads the block input and recomputes the value norms
from that block's own `norm1` and `attn.qkv` weights (the value third of the projection).

Adaptive count, rectangular batch: images keep different numbers of tokens, so the batch is padded
to the largest M with zero tokens of size 0. `patch()` turns on size tracking
(`track_size=True`), so attention adds `log(size)` and no query attends to a padding token (sizes
are 1 otherwise, which changes nothing); a padding token has zero significance and is never
sampled again. `model.token_counts()` counts the padded width, so it is an upper bound on the
per-image count; the kept tokens stay in their original order.

Simplified: the official code evaluates one quantile per original patch, picks for each the token
whose min-max normalised CDF value is *nearest*, and keeps at most K of the distinct picks; here
the exact inverse CDF is used at K quantiles, so a token is hit in proportion to its score. Only
the plug-and-play (no training) inference mode is reproduced; the paper's fine-tuning with ATS is
not.

Shapes: tokens `(B, N, C)`, CLS at index 0 always kept and unchanged; sizes `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ..registry import ImplInfo
from .adapter import attach
from .tokens import gather, kept_count, three_stages
from .vit import Block, TokenState, VisionTransformer, cls_attention

IMPL = ImplInfo(
    name="ats",
    title="ATS: adaptive token sampling by inverse transform sampling of CLS significance",
    papers=("ats-2022",),
    family="pruning",
    training_free=True,
    arxiv="2111.15667",
    simplified=(
        "exact inverse CDF at K fixed quantiles (official code: nearest normalised CDF value); "
        "per-image counts padded with size-0 tokens; no fine-tuning"
    ),
)


@dataclass(frozen=True)
class Config:
    # K per ATS block, the most patch tokens it keeps, as a share of the model's patch count
    # (a fixed budget per block, as in the official code).
    keep_rates: tuple[float, ...] = (0.7, 0.49, 0.343)
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based

    def __post_init__(self) -> None:
        assert all(0.0 < r <= 1.0 for r in self.keep_rates), "keep rates must be in (0, 1]"
        assert len(self.keep_rates) == len(self.blocks), "one keep rate per block"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"


def config_for(keep_rate: float, depth: int) -> Config:
    """Three stages at 1/4, 1/2 and 3/4 depth with budgets r^(1/3), r^(2/3), r of the patches:
    at most ~keep_rate of them remain (fewer where samples coincide); identity at rate >= 1."""
    if keep_rate >= 1.0:
        return Config(keep_rates=(), blocks=())
    blocks = three_stages(depth)
    rates = tuple(keep_rate ** ((i + 1) / len(blocks)) for i in range(len(blocks)))
    return Config(keep_rates=rates, blocks=blocks)


def value_norms(block: Block, x: Tensor) -> Tensor:
    """`||v_j||` of every token of the block input `x (B, N, C)`, heads concatenated: `(B, N)`."""
    C = x.shape[-1]
    qkv = block.attn.qkv
    bias = qkv.bias[2 * C :] if qkv.bias is not None else None
    v: Tensor = F.linear(block.norm1(x), qkv.weight[2 * C :], bias)  # (B, N, C): value third
    return v.norm(dim=-1)


def significance(cls_attn: Tensor, v_norm: Tensor) -> Tensor:
    """`S_j = a_j ||v_j|| / sum_i a_i ||v_i||` over the patch tokens: `(B, N-1)`."""
    score = cls_attn * v_norm  # (B, N-1)
    return score / score.sum(dim=1, keepdim=True)


def adaptive_token_sampling(
    x: Tensor, scores: Tensor, k: int, size: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample at most `k` patch tokens of `x (B, N, C)` by inverse transform sampling of
    `scores (B, N-1)` (non-negative, summing to 1) at `k` evenly spaced quantiles.

    Returns `(x (B, 1+M, C), size (B, 1+M, 1), kept (B, M))` with M the largest per-image count;
    `kept` indexes the patch tokens, in original order, -1 where a row is padding (zero token,
    size 0)."""
    B, N, _ = x.shape
    n = N - 1
    sorted_scores, order = scores.sort(dim=1)  # ascending, (B, n)
    cdf = sorted_scores.cumsum(dim=1)  # (B, n)
    steps = torch.arange(k, device=x.device, dtype=cdf.dtype)
    quantiles = ((2 * steps + 1) / (2 * k)).expand(B, k).contiguous()  # (B, k)
    # First sorted position whose CDF reaches the quantile; clamp guards a last CDF just below 1.
    position = torch.searchsorted(cdf.contiguous(), quantiles).clamp_max(n - 1)  # (B, k)
    picked = order.gather(1, position)  # (B, k) patch indices, with repeats
    chosen = torch.zeros(B, n, dtype=torch.bool, device=x.device).scatter(1, picked, True)
    counts = chosen.sum(dim=1)  # (B,)
    m = int(counts.max())
    rank = torch.arange(n, device=x.device).expand(B, n)
    kept = torch.where(chosen, rank, rank + n).argsort(dim=1)[:, :m]  # (B, m) chosen first
    valid = torch.arange(m, device=x.device) < counts.unsqueeze(1)  # (B, m)
    index = torch.cat([kept.new_zeros(B, 1), kept + 1], dim=1)  # (B, 1+m) with CLS
    keep = torch.cat([valid.new_ones(B, 1), valid], dim=1).unsqueeze(-1)  # (B, 1+m, 1)
    base = size if size is not None else x.new_ones(B, N, 1)
    out_x = gather(x, index) * keep
    out_size = gather(base, index) * keep
    return out_x, out_size, kept.masked_fill(~valid, -1)


class ATSReducer:
    """The pre hook of an ATS block records the value norms of its input (from that block's own
    weights); the mid hook, between attention and MLP, samples."""

    def __init__(self, model: VisionTransformer, config: Config) -> None:
        self.model = model
        patches = model.config.num_patches
        self.budget = {
            b: kept_count(patches, r) for b, r in zip(config.blocks, config.keep_rates, strict=True)
        }
        self.v_norm: Tensor | None = None  # (B, N), set by the pre hook of the current block

    def record_values(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        block = self.model.blocks[state.index]
        assert isinstance(block, Block)
        self.v_norm = value_norms(block, state.x)
        return state.x, state.size

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None and self.v_norm is not None, "needs both ATS hooks"
        v_norm, self.v_norm = self.v_norm, None
        scores = significance(cls_attention(state.attn), v_norm[:, 1:])
        x, size, _ = adaptive_token_sampling(state.x, scores, self.budget[state.index], state.size)
        return x, size


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    reducer = ATSReducer(model, config)
    with attach(
        model,
        mid=dict.fromkeys(config.blocks, reducer),
        pre=dict.fromkeys(config.blocks, reducer.record_values),
        track_size=True if config.blocks else None,  # sizes mark the padding
    ) as patched:
        yield patched
