"""LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models (arXiv
2403.15388), record `prumerge-2025`.

Official code: 42Shawn/LLaVA-PruMerge@097c04116a58465e4bcb58cec44a94018a68ff1a
(`llava/model/multimodal_encoder/clip_encoder.py: token_prune_merge_advanced`, the version of
10/03/2024, with `complement_idx` and `outlier_dectection`), run in memory outside the project
with a stubbed vision tower fed our tiny LLaVA's features and the next block's queries and keys:
equal to float tolerance (max abs diff 4e-6) on 72 seeded cases (6 seeds; B 1 and 3; adaptive,
and non-adaptive with ratio 1/4, 1/8, 1/16). No code was taken from it. On the patch features
LLaVA reads (CLIP's layer -2):

1. [CLS] attention: one attention map over all channels of the *next* encoder block (CLIP's last
   layer, whose input these features are): `softmax(q k^T / sqrt(C))` from that block's query and
   key projections, the row of CLS over the patches;
2. adaptive selection: the number `k` of kept tokens is the number of outliers of those scores,
   `score > Q3 + 1.5 * IQR` (interquartile range), i.e. `k = int(n * outliers / n)`; the top `k`
   patches by score are kept, best first (the official order);
3. merging: for each kept token, its `m = 32` nearest other patches by cosine similarity of their
   keys (the same block's keys, all channels) are added to it, weighted by their CLS attention:
   `y_i = x_i + sum_j a_j x_j` (the official code does not normalise this sum); the candidates
   are the other kept slots and the tokens not kept, as the official loop builds them;
4. one extra token, the CLS-attention-weighted sum of all pruned patches, is appended, so `k + 1`
   tokens are projected.

`Config.adaptive = False` keeps `int(n * keep)` tokens instead of the outlier count (the official
code's non-adaptive branch). Simplified: with a batch, the quartiles are taken over all scores of
the batch together (the official code flattens the batch too), so every image keeps the same
`k`; at least one token is kept; when the feature block is the encoder's last, its own attention
is used. PruMerge+ (`prumerge_plus.py`) adds spatially uniform tokens.

Shapes: patch features `(B, n, C_vis)`; scores `(B, n)`; keys `(B, n, C_vis)`; output
`(B, k + 1, C_vis)` before the projector.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from ..vision.vit import Block
from .llava import Llava, VisualState, attach, block_qk
from .select import gather, iqr_outliers, top_by_score

IMPL = ImplInfo(
    name="prumerge",
    title="LLaVA-PruMerge: IQR-outlier CLS-attention tokens, key-kNN merges into them",
    papers=("prumerge-2025",),
    family="prune-merge",
    training_free=True,
    arxiv="2403.15388",
    simplified=(
        "quartiles over the whole batch (as the official code, which flattens it); at least one "
        "token kept; the paper's fine-tuned variant is not reproduced"
    ),
)


@dataclass(frozen=True)
class Config:
    adaptive: bool = True  # outlier count (True) or `int(n * keep)` tokens (False)
    keep: float = 1 / 8  # share kept when not adaptive (the official default ratio)
    neighbours: int = 32  # nearest keys merged into each kept token

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.neighbours >= 1, "neighbours must be positive"

    @property
    def identity(self) -> bool:
        return not self.adaptive and self.keep >= 1.0


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    """`int(n * keep)` selected tokens plus the extra one; identity at `keep >= 1`."""
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(adaptive=False, keep=min(1.0, keep))


def cls_scores(state: VisualState) -> tuple[Tensor, Tensor]:
    """Single-map CLS attention `(B, n)` and keys `(B, n, C)` of the block after the feature
    block, on the features' encoder tokens."""
    assert state.views == 1, "PruMerge here handles one view"
    blocks = list(state.model.vision.blocks)
    index = min(state.block + 1, len(blocks) - 1)
    block = blocks[index]
    assert isinstance(block, Block)
    q, k = block_qk(block, state.vision.hidden[index])  # (B, 1+n, C) each
    attn = (q[:, :1] @ k.transpose(1, 2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, 1, 1+n)
    return attn[:, 0, 1:], k[:, 1:]


def selection_ratio(scores: Tensor, adaptive: bool, keep: float) -> float:
    """The share of tokens to select: outliers over all scores, or `keep`."""
    return iqr_outliers(scores) / scores.numel() if adaptive else keep


def selected_count(n: int, ratio: float) -> int:
    """`int(n * ratio)` as officially, but at least one."""
    return max(1, min(n, int(n * ratio)))


def official_complement(kept: Tensor, n: int) -> Tensor:
    """The positions not in `kept (B, k)` as the official `complement_idx` finds them: zero the
    kept positions of `0..n-1`, sort, drop the first `k`: `(B, n - k)`. Without repeated indices
    this is the ascending complement; with repeats (PruMerge+'s non-adaptive sampling) it drops
    as many unkept positions, smallest first, as there are repeats (0 first when it is unkept)."""
    B, k = kept.shape
    grid = torch.arange(n, device=kept.device).expand(B, n)
    return grid.scatter(1, kept, 0).sort(dim=1).values[:, k:]


def prumerge_tokens(
    features: Tensor, scores: Tensor, keys: Tensor, kept: Tensor, neighbours: int
) -> Tensor:
    """Merge into each kept slot `kept (B, k)` of `features (B, n, C)` its `neighbours` most
    key-similar candidates, weighted by `scores (B, n)`; append the score-weighted sum of the
    tokens not kept. The candidates of slot `i` are the other kept slots, then the tokens not
    kept (`official_complement`), as the official loop builds them; a token kept twice is its
    own copy's candidate. Returns `(B, k + 1, C)`."""
    B, n, C = features.shape
    k = kept.shape[1]
    pruned = official_complement(kept, n)  # (B, n - k)
    candidates = torch.cat([kept, pruned], dim=1)  # (B, n)
    unit = F.normalize(keys, dim=-1)  # (B, n, D)
    similarity = gather(unit, kept) @ gather(unit, candidates).transpose(1, 2)  # (B, k, n)
    slot = torch.arange(k, device=kept.device)
    similarity[:, slot, slot] = float("-inf")  # never the slot itself
    m = min(neighbours, n - 1)
    near = candidates.gather(1, top_by_score(similarity, m).reshape(B, k * m))  # (B, k*m)
    weights = scores.gather(1, near).unsqueeze(-1)  # (B, k*m, 1)
    added = (gather(features, near) * weights).view(B, k, m, C).sum(dim=2)  # (B, k, C)
    extra = (gather(features, pruned) * scores.gather(1, pruned).unsqueeze(-1)).sum(
        dim=1, keepdim=True
    )  # (B, 1, C)
    return torch.cat([gather(features, kept) + added, extra], dim=1)


class PruMergeReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        scores, keys = cls_scores(state)
        n = scores.shape[1]
        kept = top_by_score(
            scores,
            selected_count(n, selection_ratio(scores, self.config.adaptive, self.config.keep)),
        )
        tokens = prumerge_tokens(state.features, scores, keys, kept, self.config.neighbours)
        return state.project(tokens)


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = None if config.identity else PruMergeReducer(config)
    with attach(model, visual=reducer) as patched:
        yield patched
