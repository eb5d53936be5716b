"""Adaptive Token Sampling For Efficient Vision Transformers (ATS; arXiv 2111.15667).

Record `ats-2022`. Between attention and MLP of the chosen blocks:

1. significance of patch token j: `S_j = a_j * ||v_j|| / sum_i a_i * ||v_i||`, with `a_j` the CLS
   token's attention to j (over heads; the official code sums them, here `vit.cls_attention`
   averages them: the same after normalising) and `v_j` the token's value vector, all heads
   concatenated, as in the official code;
2. inverse transform sampling, as the official code does it (deterministic, its only mode): sort
   the scores ascending, take their cumulative distribution (CDF) and min-max normalise it to
   [0, 1]; lay `M` evenly spaced points from the smallest non-zero normalised CDF value up to 1
   (built in float32 as the official `create_ys` builds them); for each point pick the token
   whose normalised CDF value is nearest (the first on ties). `M` is the block's budget `K`
   (`Config.keep_rates`, a share of the model's patch count); the official code uses the
   model's patch count (`n_ref_tokens - 1`), which is our default (`keep_rates` of 1);
3. a token picked several times is kept once (the official code replaces duplicates by a dummy
   token), so each image keeps its own number of tokens: significant tokens absorb many points,
   and flat score maps keep more tokens. The kept tokens come in order of increasing
   significance, as the official code leaves them: `[CLS, kept..., padding]`.

`Config.sampling="paper"` gives the paper's description instead: `K` quantiles
`r_i = (2i - 1) / (2K)` of the unnormalised CDF, each picking the first token whose CDF reaches
it.

Values: `TokenState` carries the attention but not the values, and after attention the block's
input is gone (`state.x` already includes the attention output). `patch()` therefore also
attaches a pre hook to each ATS block that reads the block input and recomputes the value norms
from that block's own `norm1` and `attn.qkv` weights (the value third of the projection).

Adaptive count, rectangular batch: images keep different numbers of tokens, so the batch is padded
to the largest count with zero tokens of size 0 (the official `drop_tokens` path pads the same
way, with a 0 in its policy). `patch()` turns on size tracking (`track_size=True`), so attention
adds `log(size)` and no query attends to a padding token (sizes are 1 otherwise, which changes
nothing); a padding token has zero significance and is never sampled again. `token_counts()`
counts the padded width, so it is an upper bound on the per-image count.

Checked against the official repository adaptivetokensampling/ATS at commit
9271257adc7ea9695c2ccd75e25e3a86432fd65a, `libs/models/transformers/ats_block.py`:
`AdaptiveTokenSampler.score_assignment_step`, `inverse_transform_sampling`, `create_ys` and
`get_unique_indices`, run in memory outside the project on seeded random inputs (a fetched
snapshot; nothing copied). On 200 cases (B 1-4, 3-196 patch tokens, flat to very peaked
scores keeping 4% to 97% of the tokens, a tenth with zero-significance padding from an earlier
stage, float32 and float64, the official `n_ref_tokens` equal to the token count or larger)
the kept tokens are the same and in the same order; `score_assignment_step` agrees with
`significance` to 1.2e-7. (The official code cannot run with a budget below the token count:
its gathers assume `n_tokens = N`; its DeiT-S config uses 197, all tokens, in blocks 3 to 11,
our default.)

As in the official code, zero-significance padding takes part in the min-max normalisation
(the CDF's minimum becomes 0), so an image padded in a batch can keep its least significant
token where alone it could not; with `sampling="paper"` padding changes nothing.

Differences kept on purpose: with 2 patch tokens the official `get_unique_indices` also drops
the last pick (its shift pads with the value 1) and keeps no patch token; here the picked one is
kept. The official attention (`softmax_with_policy`) still gives removed tokens an `eps / N`
weight; ours gives them none (size 0); their significance is 0 in both (the official code zeroes
their values). Only the plug-and-play inference mode is reproduced; the paper's fine-tuning with
ATS is not.

Shapes: tokens `(B, N, C)`, CLS at index 0 always kept and unchanged; sizes `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ..families import depth_of
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
    simplified="per-image counts padded with size-0 tokens; no fine-tuning",
)

SAMPLINGS = ("official", "paper")
OFFICIAL_BLOCKS = (3, 4, 5, 6, 7, 8, 9, 10, 11)  # configs/ImageNet/DeiT_S.yaml, ATS_BLOCKS


@dataclass(frozen=True)
class Config:
    # K per ATS block, the most patch tokens it keeps, as a share of the model's patch count
    # (the official NUM_TOKENS: 197 of DeiT-S's 197 tokens, i.e. 1.0, in every ATS block).
    keep_rates: tuple[float, ...] = (1.0,) * len(OFFICIAL_BLOCKS)
    blocks: tuple[int, ...] = OFFICIAL_BLOCKS  # 0-based
    sampling: str = "official"  # "official": nearest normalised CDF; "paper": (2i - 1) / 2K

    def __post_init__(self) -> None:
        assert all(0.0 < r <= 1.0 for r in self.keep_rates), "keep rates must be in (0, 1]"
        assert len(self.keep_rates) == len(self.blocks), "one keep rate per block"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"
        assert self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}"


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three stages at 1/4, 1/2 and 3/4 depth with budgets r^(1/3), r^(2/3), r of the patches:
    at most ~keep_rate of them remain (fewer where samples coincide); identity at rate >= 1."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
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


def sample_points(start: Tensor, m: int) -> Tensor:
    """`m` evenly spaced points from `start (B, 1)` to 1: `(B, m)`, computed as the official
    `create_ys` computes them (a float32 `linspace` and step count, then shifted and scaled)."""
    if m == 1:
        return start
    unit = torch.linspace(0.0, 1.0, m, device=start.device)  # (m,) float32
    steps = torch.arange(m, device=start.device, dtype=torch.float32)  # (m,)
    return start + (unit * (m - 1) - start * steps) / (m - 1)


def nearest_cdf_picks(sorted_scores: Tensor, m: int) -> Tensor:
    """The official sampling: for `m` points, the position (in ascending score order) of the
    token whose min-max normalised CDF is nearest, the first on ties: `(B, m)`."""
    cdf = sorted_scores.cumsum(dim=1)  # (B, n)
    lo, hi = cdf.amin(dim=1, keepdim=True), cdf.amax(dim=1, keepdim=True)
    if cdf.shape[1] == 1:  # a single token: nothing to normalise, it is the only pick
        return cdf.new_zeros(cdf.shape[0], m, dtype=torch.long)
    normalised = (cdf - lo) / (hi - lo)  # (B, n) from 0 to 1
    start = normalised.masked_fill(normalised == 0, torch.inf).amin(dim=1, keepdim=True)
    points = sample_points(start, m)  # (B, m)
    return (points.unsqueeze(-1) - normalised.unsqueeze(1)).abs().argmin(dim=-1)  # (B, m)


def quantile_picks(sorted_scores: Tensor, k: int) -> Tensor:
    """The paper's sampling: for quantiles `(2i - 1) / 2k`, the position (in ascending score
    order) of the first token whose CDF reaches it: `(B, k)`."""
    B, n = sorted_scores.shape
    cdf = sorted_scores.cumsum(dim=1).contiguous()  # (B, n)
    steps = torch.arange(k, device=cdf.device, dtype=cdf.dtype)
    quantiles = ((2 * steps + 1) / (2 * k)).expand(B, k).contiguous()  # (B, k)
    # clamp: a last CDF value just below 1 must not push the last quantile off the end
    return torch.searchsorted(cdf, quantiles).clamp_max(n - 1)


def adaptive_token_sampling(
    x: Tensor, scores: Tensor, k: int, size: Tensor | None = None, sampling: str = "official"
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample at most `k` patch tokens of `x (B, N, C)` by inverse transform sampling of
    `scores (B, N-1)` (non-negative, summing to 1) at `k` points.

    Returns `(x (B, 1+M, C), size (B, 1+M, 1), kept (B, M))` with M the largest per-image count;
    `kept` indexes the patch tokens in order of increasing score, -1 where a row is padding
    (zero token, size 0)."""
    assert sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}"
    B, N, _ = x.shape
    n = N - 1
    sorted_scores, order = scores.sort(dim=1)  # ascending, (B, n)
    if sampling == "official":
        picks = nearest_cdf_picks(sorted_scores, k)
    else:
        picks = quantile_picks(sorted_scores, k)  # (B, k) positions in `order`, with repeats
    chosen = torch.zeros(B, n, dtype=torch.bool, device=x.device).scatter(1, picks, True)
    counts = chosen.sum(dim=1)  # (B,)
    m = int(counts.max())
    position = torch.arange(n, device=x.device).expand(B, n)
    # chosen positions first, each group in ascending score order (the keys are distinct)
    first = torch.where(chosen, position, position + n).sort(dim=1).indices[:, :m]  # (B, m)
    kept = order.gather(1, first)  # (B, m) patch indices
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
        self.model, self.sampling = model, config.sampling
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
        k = self.budget[state.index]
        x, size, _ = adaptive_token_sampling(state.x, scores, k, state.size, self.sampling)
        return x, size


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    """ATS in `config.blocks` (the default is the official DeiT-S setting, for depth 12)."""
    reducer = ATSReducer(model, config)
    with attach(
        model,
        mid=dict.fromkeys(config.blocks, reducer),
        pre=dict.fromkeys(config.blocks, reducer.record_values),
        track_size=True if config.blocks else None,  # sizes mark the padding
    ) as patched:
        yield patched
