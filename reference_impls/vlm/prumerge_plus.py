"""PruMerge+, the spatially completed variant of LLaVA-PruMerge (arXiv 2403.15388).

The same paper as `prumerge.py` (record `prumerge-2025` links that module); checked against the
official repository 42Shawn/LLaVA-PruMerge (`clip_encoder.py`,
`token_prune_merge_advanced_plus`, the version of 24/03/2024); no code was taken from it.
PruMerge keeps few tokens (about 32 of 576 on average); PruMerge+ adds spatially uniform ones so
that regions without outliers are still seen (about 144 of 576):

1. as PruMerge: CLS-attention scores, the outlier ratio `r`, the top `k = int(n * r)` patches;
2. uniform samples: positions `0, s, 2s, ... < n - 1` with stride `s = int(int(1 / r) / 3)`
   (about three times as many as the outliers), minus those already selected, are appended
   after the selected ones;
3. as PruMerge: each selected token absorbs its 32 most key-similar other patches weighted by
   CLS attention, and one extra token, the weighted sum of all the others, is appended.

Simplified: the official code's non-adaptive branch samples differently (offset `s/2`, no
de-duplication); here both modes sample as the adaptive branch does, with `r = keep` when
`Config.adaptive` is False. With a batch, a uniform position already selected in any image is
skipped for all (the official code flattens the batch's selection), so every image keeps the
same count. At least one token is selected and the stride is at least 1.

Shapes: patch features `(B, n, C_vis)`; output `(B, k + u + 1, C_vis)` before the projector,
`u` the uniform tokens added.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, VisualState, attach
from .prumerge import cls_scores, prumerge_tokens, selected_count, selection_ratio
from .select import top_by_score

IMPL = ImplInfo(
    name="prumerge_plus",
    title="PruMerge+: PruMerge's outlier tokens plus spatially uniform samples",
    papers=(),
    family="prune-merge",
    training_free=True,
    arxiv="2403.15388",
    simplified=(
        "one sampling rule for both modes (the official non-adaptive branch differs); batch-wide "
        "quartiles and de-duplication"
    ),
)


@dataclass(frozen=True)
class Config:
    adaptive: bool = True  # outlier ratio (True) or `keep` as the ratio (False)
    keep: float = 1 / 32  # ratio r when not adaptive: about 4 r n tokens in all
    neighbours: int = 32

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.neighbours >= 1, "neighbours must be positive"

    @property
    def identity(self) -> bool:
        return not self.adaptive and self.keep >= 1.0


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    """About `keep * n` tokens: a quarter selected by attention, the rest sampled uniformly."""
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    if keep >= 1.0:
        return Config(adaptive=False, keep=1.0)
    return Config(adaptive=False, keep=keep / 4)


def uniform_positions(n: int, ratio: float, selected: Tensor) -> Tensor:
    """Positions `0, s, 2s, ... < n - 1`, `s = max(1, int(int(1 / r) / 3))`, that no row of
    `selected (B, k)` holds: `(u,)` ascending."""
    stride = max(1, int(int(1 / max(ratio, 1 / n)) / 3))
    grid = torch.arange(0, n - 1, stride, device=selected.device)
    return grid[~torch.isin(grid, selected.flatten())]


class PruMergePlusReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        scores, keys = cls_scores(state)
        B, n = scores.shape
        ratio = selection_ratio(scores, self.config.adaptive, self.config.keep)
        selected = top_by_score(scores, selected_count(n, ratio))  # (B, k) best first
        extra = uniform_positions(n, ratio, selected).expand(B, -1)  # (B, u)
        kept = torch.cat([selected, extra], dim=1)  # (B, k + u)
        tokens = prumerge_tokens(state.features, scores, keys, kept, self.config.neighbours)
        return state.project(tokens)


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = None if config.identity else PruMergePlusReducer(config)
    with attach(model, visual=reducer) as patched:
        yield patched
