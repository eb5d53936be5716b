"""ToMe for Stable Diffusion: "Token Merging for Fast Stable Diffusion", arXiv 2303.17604, record
`tome-sd-2023`.

Checked against the official repository dbolya/tomesd (`bipartite_soft_matching_random2d` in
`tomesd/merge.py`, `compute_merge` and the patched blocks in `tomesd/patch.py`); no code was taken
from it: this is written from the paper and that reading. In every
transformer block, around the self-attention only (tomesd's default: `merge_attn=True`, cross
attention and MLP unmerged):

1. partition: the `h x w` token grid is cut into `sy x sx` cells (2 x 2 by default); in each full
   cell one token, chosen at random (`use_rand`; the top-left one otherwise), is a destination;
   all other tokens, including those of incomplete cells at the right and bottom edges, are
   sources. The choice is shared by the batch and drawn anew at every call;
2. matching: each source is paired with its most similar destination (cosine similarity of the
   block's input tokens `x`); the `r = int(N * ratio)` sources with the highest similarity (at
   most all sources) are merged into their destination, each destination becoming the mean of
   itself and the sources merged into it;
3. the self-attention runs on the `N - r` remaining tokens (the normalised, modulated `h`);
4. unmerge: every destination's output is copied back to the sources merged into it, so the
   block's output has all `N` tokens again.

Simplified: tokens are merged in every block of the model (tomesd's `max_downsample` restricts
merging to the highest-resolution blocks of a U-Net; the DiT here has one resolution); the merged
sequence is `[unmerged sources, destinations]` in position order (tomesd orders the unmerged
sources by score; attention does not depend on the order); tomesd's switch that disables the
randomness for odd batch sizes (classifier-free guidance pairs) is not reproduced. The random
partition comes from one generator per block seeded with `Config.seed + block index` (tomesd's
`rand_seed`), or from the global generator when `seed` is None.

Shapes: tokens `(B, N, C)` on an `h x w` grid, `N = h * w`, row-major; merged `(B, N - r, C)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import ImplInfo
from ..restore import setting
from .dit import Attention, AttnHook, DiT

IMPL = ImplInfo(
    name="tome_sd",
    title="ToMe for SD: random 2D bipartite merging around self-attention, then unmerge",
    papers=("tome-sd-2023",),
    family="merging",
    training_free=True,
    arxiv="2303.17604",
    simplified=(
        "on a small random DiT rather than Stable Diffusion's U-Net: every block merges (no "
        "max_downsample); no odd-batch switch; merged sequence in position order"
    ),
)

Merge = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Config:
    ratio: float = 0.5  # share of the tokens merged away in each block: r = int(N * ratio)
    sx: int = 2  # destination cell width
    sy: int = 2  # destination cell height
    use_rand: bool = True  # random destination in each cell (else the top-left token)
    seed: int | None = 0  # generator seed of block i is seed + i; None: the global generator

    def __post_init__(self) -> None:
        assert 0.0 <= self.ratio < 1.0, "ratio must be in [0, 1)"
        assert self.sx >= 1 and self.sy >= 1 and self.sx * self.sy > 1, "cells of >= 2 tokens"


def config_for(keep: float, model_config: object = None) -> Config:
    """Merge `1 - keep` of the tokens, at most tomesd's maximum `1 - 1 / (sx * sy) = 0.75`."""
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    return Config(ratio=min(0.75, 1.0 - keep))


def destination_mask(
    grid: tuple[int, int],
    sx: int,
    sy: int,
    use_rand: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """`(h * w,)` bool: one destination per full `sy x sx` cell of the `h x w` grid, row-major."""
    h, w = grid
    cells_y, cells_x = h // sy, w // sx
    if use_rand:
        where = generator.device if generator is not None else device
        pick = torch.randint(sy * sx, (cells_y, cells_x), generator=generator, device=where)
        pick = pick.to(device)
    else:
        pick = torch.zeros(cells_y, cells_x, dtype=torch.long, device=device)
    rows = torch.arange(cells_y, device=device)[:, None] * sy + pick // sx  # (cells_y, cells_x)
    cols = torch.arange(cells_x, device=device)[None, :] * sx + pick % sx
    mask = torch.zeros(h * w, dtype=torch.bool, device=device)
    mask[(rows * w + cols).flatten()] = True
    return mask


def _identity(x: Tensor) -> Tensor:
    return x


def random_2d_bipartite(
    metric: Tensor,
    grid: tuple[int, int],
    r: int,
    sx: int = 2,
    sy: int = 2,
    use_rand: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Merge, Merge]:
    """Match the tokens of `metric (B, N, C)` on `grid` and return `(merge, unmerge)`.

    `merge (B, N, C') -> (B, N - r', C')` with `r' = min(r, number of sources)`: the unmerged
    sources, then the destinations (each the mean of itself and its merged sources), both in
    position order. `unmerge (B, N - r', C') -> (B, N, C')` copies each destination's row back to
    its merged sources.
    """
    B, N, _ = metric.shape
    if grid[0] * grid[1] != N:
        raise ValueError(f"{N} tokens do not fill a {grid[0]} x {grid[1]} grid")
    if r <= 0 or grid[0] < sy or grid[1] < sx:  # nothing to merge, or no full cell
        return _identity, _identity
    with torch.no_grad():
        is_dst = destination_mask(grid, sx, sy, use_rand, generator, metric.device)  # (N,)
        dst_idx, src_idx = is_dst.nonzero().flatten(), (~is_dst).nonzero().flatten()
        n_src = src_idx.numel()
        r = min(r, n_src)
        unit = F.normalize(metric, dim=-1)
        scores = unit[:, src_idx] @ unit[:, dst_idx].transpose(1, 2)  # (B, N_src, N_dst)
        best, best_dst = scores.max(dim=-1)  # (B, N_src)
        order = best.argsort(dim=-1, descending=True)  # (B, N_src)
        merged = order[:, :r]  # (B, r) sources merged, indices into the source set
        unmerged = order[:, r:].sort(dim=-1).values  # (B, N_src - r), position order
        target = best_dst.gather(1, merged)  # (B, r) their destinations

    def merge(x: Tensor) -> Tensor:
        C = x.shape[-1]
        src, dst = x[:, src_idx], x[:, dst_idx]  # (B, N_src, C), (B, N_dst, C)
        kept = src.gather(1, unmerged[..., None].expand(-1, -1, C))
        moving = src.gather(1, merged[..., None].expand(-1, -1, C))
        dst = dst.scatter_reduce(1, target[..., None].expand(-1, -1, C), moving, reduce="mean")
        return torch.cat([kept, dst], dim=1)  # (B, N - r, C)

    def unmerge(y: Tensor) -> Tensor:
        C = y.shape[-1]
        kept, dst = y[:, : n_src - r], y[:, n_src - r :]  # (B, N_src - r, C), (B, N_dst, C)
        src = y.new_zeros(B, n_src, C)
        src = src.scatter(1, unmerged[..., None].expand(-1, -1, C), kept)
        src = src.scatter(
            1,
            merged[..., None].expand(-1, -1, C),
            dst.gather(1, target[..., None].expand(-1, -1, C)),
        )
        out = y.new_zeros(B, N, C)
        out = out.index_copy(1, dst_idx, dst)
        return out.index_copy(1, src_idx, src)  # (B, N, C)

    return merge, unmerge


def tome_attention_hook(config: Config, generator: torch.Generator | None = None) -> AttnHook:
    """The hook for `DiTBlock.attn_hook`: merge `h` by the similarity of `x`, attend, unmerge."""

    def hook(x: Tensor, h: Tensor, grid: tuple[int, int], attn: Attention) -> Tensor:
        r = int(x.shape[1] * config.ratio)
        merge, unmerge = random_2d_bipartite(
            x, grid, r, config.sx, config.sy, config.use_rand, generator
        )
        return unmerge(attn(merge(h)))

    return hook


@contextmanager
def patch(model: DiT, config: Config) -> Iterator[DiT]:
    """Apply ToMe for SD to every block of `model` inside the `with`; restored on exit."""
    device = next(model.parameters()).device
    changes = []
    for index, block in enumerate(model.dit_blocks()):
        generator = (
            None
            if config.seed is None
            else torch.Generator(device=device).manual_seed(config.seed + index)
        )
        changes.append((block, "attn_hook", tome_attention_hook(config, generator)))
    with setting(*changes):
        yield model
