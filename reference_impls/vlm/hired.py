"""HiRED: Attention-Guided Token Dropping for Efficient Inference of High-Resolution
Vision-Language Models (arXiv 2408.10945).

Official code: hasanar1f/HiRED@502d6dd79a03e87cc808cedba8b8a951d93cb62b (the patched
`transformers/.../llava_next/modeling_llava_next.py`: `HiRED_token_selection`,
`HiRED_sub_img_budgets`, with ViT layer 0 for the budgets and layer 22 (CLIP's -2) for the
selection; `.../llava/modeling_llava.py: HiRED_token_selection` for the single-view path; budget
0.2 and alpha 0.5 in its scripts); no code was taken from it. Checked in memory: the official
multi-view selection (its grid lookup stubbed) against `view_budgets` + `hired_select` on 60
seeded cases (64-576 patches per view, 2-9 crops in grids 1x2, 2x1, 2x2, 1x3, 3x3, 2x4,
budget 0.05-0.5, alpha 0.3-0.8) and the single-view selection on 20 (49-576 patches, budget
0.1-1.0): the same kept tokens in every case. Fixed after the check: the crops' shares are
counted on consecutive strips (below) and their budgets truncated in float32, as officially.
A high-resolution
image reaches the encoder as V views, the whole image (view 0) and `gh x gw` crops, `n` patches
each; within a fixed budget of `int(V * n * budget)` tokens, before the language model:

1. budget distribution: the whole image gets `min(int(total * alpha), n)` tokens; the crops
   share the rest (at most `(V - 1) * n`) in proportion to their visual content, measured in an
   initial encoder block (block 0): the whole image's `int(n * (1 - alpha))` patches with the
   largest [CLS] attention (summed over heads) are marked, and each crop's share is the number of
   marked patches in its part of the whole image's flat patch vector: `partition="strips"` (the
   official code's row-major reshape to `(gh, gw, -1)`: `gh * gw` consecutive chunks, i.e. row
   strips, not the crop's region), or `partition="regions"` (the paper's reading: the patches in
   the crop's own region of the patch grid); crop `i` gets `int(share_i * rest)` tokens (float32,
   at most `n`);
2. token selection: in every view, its budget of patches with the largest [CLS] attention in the
   feature block (CLIP's layer -2, summed over heads) is kept, in order, view after view.

With a single view (LLaVA-1.5) the official code keeps the top `int(n * budget)` patches by the
feature block's [CLS] attention; so does this module.

Simplified: LLaVA-NeXT's newline tokens and unpadding are not modelled; with nothing marked
(alpha = 1) the crops split their budget evenly (the official division is 0/0); ties among
equal attention keep the earlier patch (the official `topk` leaves them to the backend). The
per-crop budgets depend on the image, so a batch of several multi-view images is not supported
(the official evaluation runs batch size 1).

Shapes: patch features `(B, V*n, C_vis)`, views side by side; [CLS] attention `(B, H, V*n)`.

Record: `hired-2024` in papers/.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, VisualState, attach
from .select import top_in_order

IMPL = ImplInfo(
    name="hired",
    title="HiRED: CLS-attention budgets per image partition, then top tokens per partition",
    papers=("hired-2024",),
    family="pruning",
    training_free=True,
    arxiv="2408.10945",
    simplified="no newline tokens or unpadding; one image per batch with several views",
)


@dataclass(frozen=True)
class Config:
    budget: float = 0.2  # token budget: share of all patch tokens of all views
    alpha: float = 0.5  # share of the budget for the whole image
    content_block: int = 0  # encoder block whose CLS attention distributes the budget
    # how the whole image's marked patches are counted per crop: "strips" (official: the flat
    # patch vector cut into gh * gw consecutive chunks) or "regions" (the crop's own region)
    partition: str = "strips"

    def __post_init__(self) -> None:
        assert 0.0 < self.budget <= 1.0, "budget must be in (0, 1]"
        assert 0.0 <= self.alpha <= 1.0, "alpha must be in [0, 1]"
        assert self.content_block >= 0
        assert self.partition in ("strips", "regions"), "partition: 'strips' or 'regions'"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(budget=min(1.0, keep))


def view_budgets(
    content: Tensor, n: int, views: int, grid: tuple[int, int], config: Config
) -> list[int]:
    """Token budget of each view from the whole image's block-0 CLS attention `content (n,)`."""
    total = int(views * n * config.budget)
    if views == 1:
        return [min(n, int(n * config.budget))]
    full = min(int(total * config.alpha), n)
    rest = min(total - full, (views - 1) * n)
    marked = torch.zeros(n, dtype=torch.bool, device=content.device)
    marked[top_in_order(content.unsqueeze(0), int(n * (1 - config.alpha)))[0]] = True
    counts = strip_counts if config.partition == "strips" else region_counts
    shares = counts(marked, grid).float()  # (gh*gw,)
    if shares.sum() == 0:  # nothing marked (alpha = 1): split evenly
        shares = torch.ones_like(shares)
    # in float32, truncated, as the official `(budget_ratio * sub_img_budget).int()`
    crops = ((shares / shares.sum()) * rest).int().clamp(max=n).tolist()
    return [full, *crops]


def strip_counts(marked: Tensor, grid: tuple[int, int]) -> Tensor:
    """Marked patches `(n,)` counted per crop as the official code does: the flat patch vector
    cut into `gh * gw` consecutive chunks, chunk `i` for crop `i` (row-major crops): `(gh * gw,)`.
    Patch `j` falls in chunk `j * gh * gw // n` (equal chunks when they divide n)."""
    gh, gw = grid
    n = marked.numel()
    chunk = torch.arange(n, device=marked.device) * (gh * gw) // n  # (n,)
    return torch.zeros(gh * gw, dtype=torch.long, device=marked.device).index_add(
        0, chunk, marked.long()
    )


def region_counts(marked: Tensor, grid: tuple[int, int]) -> Tensor:
    """Marked patches `(n,)` of a square patch grid counted per crop region, row by row:
    `(gh * gw,)`. Patch row `r` lies in crop row `r * gh // side`."""
    gh, gw = grid
    side = math.isqrt(marked.numel())
    rows = torch.arange(side, device=marked.device) * gh // side  # (side,)
    cols = torch.arange(side, device=marked.device) * gw // side
    region = (rows[:, None] * gw + cols[None, :]).flatten()  # (n,)
    return torch.zeros(gh * gw, dtype=torch.long, device=marked.device).index_add(
        0, region, marked.long()
    )


def hired_select(features: Tensor, scores: Tensor, budgets: list[int], n: int) -> Tensor:
    """Per view `v`, its `budgets[v]` patches of `features (B, V*n, C)` with the largest
    `scores (B, V*n)`, in order, views one after another: `(B, sum(budgets), C)`."""
    index = torch.cat(
        [top_in_order(scores[:, v * n : (v + 1) * n], k) + v * n for v, k in enumerate(budgets)],
        dim=1,
    )  # (B, sum(budgets)) into the V*n tokens
    # advanced indexing copies whole rows (several times faster than an expanded `gather`)
    return features[torch.arange(features.shape[0], device=features.device)[:, None], index]


class HiREDReducer:
    def __init__(self, config: Config, grid: tuple[int, int] | None = None) -> None:
        self.config = config
        self.grid = grid

    def __call__(self, state: VisualState) -> Tensor:
        V = state.views
        n = state.features.shape[1] // V
        grid = self.grid if self.grid is not None else _square(V - 1)
        if V > 1:
            assert state.features.shape[0] == 1, "HiRED budgets are per image: batch size 1"
        assert self.config.content_block <= state.block, "content block after the feature block"
        content = state.cls_attention(self.config.content_block).sum(dim=1)[0, :n]  # (n,)
        budgets = view_budgets(content, n, V, grid, self.config)
        scores = state.cls_attention().sum(dim=1)  # (B, V*n)
        return state.project(hired_select(state.features, scores, budgets, n))


def _square(crops: int) -> tuple[int, int]:
    side = math.isqrt(crops)
    assert side * side == crops, f"{crops} crops are not a square grid: pass the grid"
    return side, side


@contextmanager
def patch(
    model: Llava, config: Config = Config(), grid: tuple[int, int] | None = None
) -> Iterator[Llava]:
    """HiRED on `model`; `grid = (gh, gw)` crops (default: square, from the number of views)."""
    reducer = HiREDReducer(config, grid) if config.budget < 1.0 else None
    with attach(model, visual=reducer) as patched:
        yield patched
