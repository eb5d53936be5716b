"""PruMerge+, the spatially completed variant of LLaVA-PruMerge (arXiv 2403.15388).

The same paper as `prumerge.py` (record `prumerge-2025` links that module). Official code:
42Shawn/LLaVA-PruMerge@097c04116a58465e4bcb58cec44a94018a68ff1a (`clip_encoder.py:
token_prune_merge_advanced_plus`, the version of 24/03/2024), run in memory outside the project
as for `prumerge.py` (its hard-coded grid end 575, `n - 1` for CLIP's 576 patches, replaced by
`n - 1` for our 64): equal to float tolerance (max abs diff 4e-6) on 54 seeded cases (adaptive:
6 seeds, B 1; non-adaptive: 6 seeds, B 1 and 3, ratio 1/4, 1/8, 1/16, 24 of them with a
sampled position already selected). No code was taken from it. PruMerge keeps few tokens (about
32 of 576 on average); PruMerge+ adds spatially uniform ones so that regions without outliers
are still seen (about 144 of 576):

1. as PruMerge: CLS-attention scores, the outlier ratio `r`, the top `k = int(n * r)` patches;
2. uniform samples, appended after the selected ones. Adaptive (the official inference path):
   positions `0, s, 2s, ... < n - 1` with stride `s = int(int(1 / r) / 3)` (about three times
   as many as the outliers), minus those already selected. Not adaptive (the official branch
   marked "for training", `r = keep`): positions `s // 2, s // 2 + s, ... < n - 1` with
   `s = int(1 / r)`, not de-duplicated, so a token may be kept twice (then, as officially, the
   copy is a merge candidate of the other, and as many unkept tokens as there are repeats drop
   out of the extra token, see `prumerge.official_complement`). `unified_sampling=True` samples
   the non-adaptive mode as the adaptive one (this module's earlier rule);
3. as PruMerge: each kept token absorbs its 32 most key-similar candidates weighted by CLS
   attention, and one extra token, the weighted sum of all the others, is appended.

Simplified: the official adaptive branch handles one image (its de-duplication flattens the
batch and its concatenation fails for B > 1); here, with a batch, a uniform position selected in
any image is skipped for all, so every image keeps the same count. The official non-adaptive
branch requires exactly `k` samples (it writes into a `2k`-wide tensor); here any count is
appended. At least one token is selected and the strides are at least 1.

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
        "batch-wide quartiles and de-duplication (the official code runs one image at a time); "
        "the sample grid ends at n - 1 for any n (officially 575)"
    ),
)


@dataclass(frozen=True)
class Config:
    adaptive: bool = True  # outlier ratio (True) or `keep` as the ratio (False)
    keep: float = 1 / 32  # ratio r when not adaptive: 2 int(r n) + 1 tokens in all
    neighbours: int = 32
    unified_sampling: bool = False  # True: the non-adaptive mode samples as the adaptive one

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.neighbours >= 1, "neighbours must be positive"

    @property
    def identity(self) -> bool:
        return not self.adaptive and self.keep >= 1.0


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    """About `keep * n` tokens: half selected by attention, half sampled uniformly (the official
    non-adaptive branch)."""
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    if keep >= 1.0:
        return Config(adaptive=False, keep=1.0)
    return Config(adaptive=False, keep=keep / 2)


def uniform_positions(n: int, ratio: float, selected: Tensor) -> Tensor:
    """The adaptive branch's samples: positions `0, s, 2s, ... < n - 1`,
    `s = max(1, int(int(1 / r) / 3))`, that no row of `selected (B, k)` holds: `(u,)`
    ascending."""
    stride = max(1, int(int(1 / max(ratio, 1 / n)) / 3))
    grid = torch.arange(0, n - 1, stride, device=selected.device)
    return grid[~torch.isin(grid, selected.flatten())]


def training_positions(n: int, ratio: float, device: torch.device) -> Tensor:
    """The official non-adaptive ("for training") branch's samples: `s // 2, s // 2 + s, ...
    < n - 1` with `s = int(1 / r)` (at least 1), selected ones not removed: `(u,)`."""
    stride = max(1, int(1 / ratio))
    return torch.arange(stride // 2, n - 1, stride, device=device)


class PruMergePlusReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        scores, keys = cls_scores(state)
        B, n = scores.shape
        ratio = selection_ratio(scores, self.config.adaptive, self.config.keep)
        selected = top_by_score(scores, selected_count(n, ratio))  # (B, k) best first
        if self.config.adaptive or self.config.unified_sampling:
            extra = uniform_positions(n, ratio, selected).expand(B, -1)  # (B, u)
        else:
            extra = training_positions(n, ratio, selected.device).expand(B, -1)  # (B, u)
        kept = torch.cat([selected, extra], dim=1)  # (B, k + u)
        tokens = prumerge_tokens(state.features, scores, keys, kept, self.config.neighbours)
        return state.project(tokens)


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = None if config.identity else PruMergePlusReducer(config)
    with attach(model, visual=reducer) as patched:
        yield patched
