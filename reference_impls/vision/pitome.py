"""Accelerating Transformers with Spectrum-Preserving Token Merging (PiToMe), arXiv 2405.16148,
record `pitome-2024`.

PiToMe ("protect informative tokens before merging") builds on ToMe's bipartite merging but first
decides which tokens may merge at all. In a block that keeps a share `ratio` of its `T` patch
tokens, `k = floor(T - T * ratio)` tokens are merged away:

1. graph: cosine similarities between the patch tokens' keys (averaged over heads), `(B, T, T)`;
2. energy of token i: the mean over all tokens j of `f(cos(k_i, k_j))`, with
   `f(s) = ELU(s - m) = s - m` above the margin `m` and `alpha * (exp(s - m) - 1)` below it.
   A token in a large cluster of similar tokens has high energy; an isolated one has low energy;
3. the `2k` highest-energy tokens are mergeable, the other `T - 2k` are protected (kept as they
   are); the mergeable ones, in order of decreasing energy, alternate into sets A and B;
4. every A token merges into its most similar B token (size-weighted average), so exactly `k`
   tokens go.

That is the paper's step (`pitome` in the official code). The official DeiT patch uses it only in
the second half of the blocks; the first `ceil(L / 2)` blocks use `pitome_bsm`: all `T` tokens,
in order of decreasing energy, alternate into A and B, and ToMe's matching merges the `k` A
tokens with the best edges. `Config.bsm_share` sets that share (0 gives the paper's step
everywhere).

Layout, as the official code leaves it (it decides which tokens pair up in the next block):
`[CLS, protected tokens by decreasing energy, B tokens]` after the paper's step and
`[CLS, unmerged A tokens best edge first, B tokens]` after `pitome_bsm`, B in energy order.

The margin falls linearly with depth, `m_l = m0 * (1 - l / L)` for block l of L (0-based), so
deeper blocks call more pairs "similar"; `m0 = 0.75` and `alpha = 1` as in the official DeiT code.
As in that code, attention is not proportional (`prop_attn=False`: the sizes weight the merges
only); `prop_attn=True` adds `log(size)` to the attention scores as ToMe does.

Options: `class_token` (True: token 0 is left out of the graph and kept first), merge `mode`
("weighted" by size, the official `merge_wavg`; "mean"; "sum"; "prune", the official prune
mode that drops the A tokens instead of merging them). Sources can be traced (`SourceTrace`,
the official `merge_source`), and `match` returns a `tome.Merge` whose `unmerge` undoes a step
(the official code has no unmerge for PiToMe). The official `pitome_vision` has no
distillation-token handling (the DeiT patch records the flag and never passes it on), so none
is offered.

Checked against the official repository hchautran/PiToMe at commit
550b5deed94aadfeac28bfbe381d87e672044a40, `algo/pitome/merge.py` (`pitome_vision` with `pitome`
and `pitome_bsm`, `merge_wavg`, `merge_mean`, `prune`, `merge_source`) and
`algo/pitome/patch/deit.py` + `timm.py` (margins, the first-half `pitome_bsm`, no proportional
attention), run in memory outside the project on seeded random inputs (a fetched snapshot;
nothing copied; PiToMe is CC-BY-NC): 145 cases (B 1-4, N 3-60, ratio 0.5-1, margin -0.5-0.9,
alpha 0.5-2, both steps, class token on/off, modes weighted/mean/prune, float32 and float64):
tokens, sizes and sources bit-identical (at ratio 1 the official `merge_wavg` still computes
`x * size / size`, 1-ulp changes, where this returns `x`); cases where the official
protect-then-merge step fails (ratio below 1 but `k = 0`: a max over an empty dimension) were
left out, and here merge nothing. On our 4-block ViT the official merge functions in the mid
hook, with the official margins and step per block and no proportional attention, give
bit-identical logits (ratios 0.9, 0.75, 0.6; batch 3; 3 seeds).

Simplified: the paper's energy is piecewise (linear above the margin, `alpha * (exp(s - m) - 1)`
below); we use the official code's form of it, `ELU(cos - m)` averaged over all patch tokens
(the token itself included), which is the same function.

Shapes: tokens `(B, N, C)` with CLS at index 0 (never merged, not in the graph); keys
`(B, N, D)`; size `(B, N, 1)`; `T = N - 1`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .adapter import attach
from .tome import Merge, SourceTrace
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="pitome",
    title="PiToMe: energy-protected bipartite token merging",
    papers=("pitome-2024",),
    family="merging",
    training_free=True,
    arxiv="2405.16148",
    simplified="energy is the official code's mean ELU(cos - m), the same function as the paper's",
)

MODES = ("weighted", "mean", "sum", "prune")


@dataclass(frozen=True)
class Config:
    ratio: float = 0.9  # share of the patch tokens each reducing block keeps
    blocks: tuple[int, ...] | None = None  # reducing blocks, 0-based; None: every block
    margin: float = 0.75  # m0: the margin at block 0, falling linearly with depth
    alpha: float = 1.0  # ELU slope below the margin
    bsm_share: float = 0.5  # the first ceil(share * depth) blocks use pitome_bsm (official DeiT)
    class_token: bool = True  # token 0 stays out of the graph and first
    mode: str = "weighted"  # "weighted" by size, "mean", "sum", or "prune" (drop set A)
    prop_attn: bool = False  # add log(size) to attention (the official DeiT patch does not)

    def __post_init__(self) -> None:
        assert 0.5 <= self.ratio <= 1.0, "ratio must be in [0.5, 1]: at most half the tokens merge"
        assert -1.0 <= self.margin <= 1.0, "margin is a cosine similarity, in [-1, 1]"
        assert self.alpha > 0.0, "alpha must be positive"
        assert 0.0 <= self.bsm_share <= 1.0, "bsm_share must be in [0, 1]"
        assert self.mode in MODES, f"mode must be one of {MODES}"


def config_for(keep_rate: float, model_config: object) -> Config:
    """The same ratio in every block, leaving about `keep_rate` of the patches after the last."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    assert keep_rate > 0.0 and depth >= 1
    if keep_rate >= 1.0:
        return Config(ratio=1.0, blocks=())
    return Config(ratio=max(0.5, keep_rate ** (1.0 / depth)))


def merged_count(num_patches: int, ratio: float) -> int:
    """How many of `num_patches` tokens a block with this keep `ratio` merges away."""
    return math.floor(num_patches - num_patches * ratio)


def energy_score(metric: Tensor, margin: float, alpha: float = 1.0) -> Tensor:
    """Energy of each token of `metric (B, T, D)`: `(B, T)`, high inside large similar clusters."""
    metric = F.normalize(metric, dim=-1)
    sim = metric @ metric.transpose(-1, -2)  # (B, T, T)
    return F.elu(sim - margin, alpha=alpha).mean(dim=-1)


def _rows(sim: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """`sim[b, rows[b]][:, cols[b]]` for every image: `(B, len(rows), len(cols))`."""
    picked = sim.gather(1, rows.unsqueeze(-1).expand(-1, -1, sim.shape[-1]))
    return picked.gather(2, cols.unsqueeze(1).expand(-1, rows.shape[1], -1))


def match(
    metric: Tensor,
    k: int,
    margin: float,
    alpha: float = 1.0,
    bsm: bool = False,
    class_token: bool = True,
) -> Merge | None:
    """Which `k` patch tokens merge where, from `metric (B, N, D)` (the keys): the paper's
    protect-then-merge step, or with `bsm` the official `pitome_bsm`.

    None when nothing changes: `k` is 0 (with `bsm` and at least two patch tokens the official
    code still reorders them, and so does this; its protect-then-merge step fails on `k` = 0).
    """
    prefix = int(class_token)
    N = metric.shape[1]
    T = N - prefix
    if k <= 0 and not (bsm and T >= 2):
        return None
    assert 2 * k <= T, f"cannot merge {k} of {T} patch tokens"
    with torch.no_grad():
        unit = F.normalize(metric[:, prefix:], dim=-1)  # (B, T, D)
        sim = unit @ unit.transpose(-1, -2)  # (B, T, T)
        energy = F.elu(sim - margin, alpha=alpha).mean(dim=-1)  # (B, T)
        ranked = energy.argsort(dim=-1, descending=True)  # (B, T) patch positions
        if bsm:  # all tokens alternate into A and B; the k best edges merge
            a, b = ranked[:, ::2], ranked[:, 1::2]  # (B, ceil(T/2)), (B, floor(T/2))
            best, partner = _rows(sim, a, b).max(dim=-1)  # (B, Na)
            edges = best.argsort(dim=-1, descending=True)  # (B, Na)
            src, dst = a.gather(1, edges[:, :k]), partner.gather(1, edges[:, :k])  # (B, k)
            kept = a.gather(1, edges[:, k:])  # (B, Na - k) unmerged A, best edge first
        else:  # the 2k highest-energy tokens alternate into A and B, the rest are protected
            src, b = ranked[:, : 2 * k : 2], ranked[:, 1 : 2 * k : 2]  # (B, k) each
            dst = _rows(sim, src, b).max(dim=-1).indices  # (B, k)
            kept = ranked[:, 2 * k :]  # (B, T - 2k) protected, by decreasing energy
        keep = torch.cat([kept, b], dim=1) + prefix  # (B, T - k) positions in the input
        if class_token:
            keep = torch.cat([keep.new_zeros(keep.shape[0], 1), keep], dim=1)
        into = dst + prefix + kept.shape[1]  # (B, k) output slots of the B tokens
        return Merge.from_positions(keep, src + prefix, into, N)


def apply_merge(
    merge: Merge, x: Tensor, size: Tensor, mode: str = "weighted"
) -> tuple[Tensor, Tensor]:
    """Merge `x (B, N, C)` and `size (B, N, 1)` in `mode`; in "prune" the A tokens that would
    merge are dropped, everything else keeps its row and size."""
    assert mode in MODES, f"mode must be one of {MODES}"
    if mode == "weighted":
        return merge.weighted(x, size)
    if mode == "prune":
        merge = merge.prune()
    return merge(x, "mean" if mode == "mean" else "sum"), merge(size, "sum")


def pitome_merge(
    x: Tensor,
    metric: Tensor,
    k: int,
    margin: float,
    alpha: float = 1.0,
    size: Tensor | None = None,
    bsm: bool = False,
    class_token: bool = True,
    mode: str = "weighted",
) -> tuple[Tensor, Tensor]:
    """Merge `k` patch tokens of `x (B, N, C)` away, protecting the low-energy ones (or by
    `pitome_bsm` with `bsm`). `metric (B, N, D)` are the keys; CLS (index 0) is kept first and
    left out of the graph. Returns `(x (B, N - k, C), size (B, N - k, 1))`.
    """
    if size is None:
        size = x.new_ones(*x.shape[:2], 1)
    merge = match(metric, k, margin, alpha, bsm, class_token)
    if merge is None:
        return x, size
    return apply_merge(merge, x, size, mode)


class _Shared:
    """What the reducers share over one forward: the token sizes when attention must not see
    them (`prop_attn=False`) and the source trace; cleared by a pre hook on block 0."""

    def __init__(self, own_sizes: bool, trace: SourceTrace | None) -> None:
        self.own_sizes, self.trace = own_sizes, trace
        self.size: Tensor | None = None

    def reset_hook(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        self.size = None
        if self.trace is not None:
            self.trace.reset()
        return state.x, state.size


class PiToMe:
    """The reducer: the block's keep ratio, margin and step are fixed when the model is patched."""

    def __init__(
        self,
        ratio: float,
        margin: float,
        config: Config = Config(),
        bsm: bool = False,
        shared: _Shared | None = None,
    ) -> None:
        self.ratio, self.margin, self.config, self.bsm = ratio, margin, config, bsm
        self.alpha = config.alpha
        self.shared = shared if shared is not None else _Shared(False, None)

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.keys is not None, "PiToMe runs between attention and MLP (mid hook)"
        c, shared, x = self.config, self.shared, state.x
        size = shared.size if shared.own_sizes else state.size
        if size is None:
            size = x.new_ones(*x.shape[:2], 1)
        k = merged_count(x.shape[1] - int(c.class_token), self.ratio)
        merge = match(state.keys, k, self.margin, self.alpha, self.bsm, c.class_token)
        if merge is not None:
            if shared.trace is not None:
                shared.trace.update(merge.prune() if c.mode == "prune" else merge)
            x, size = apply_merge(merge, x, size, c.mode)
        if shared.own_sizes:
            shared.size = size
            return x, state.size
        return x, size


def block_margin(margin: float, index: int, depth: int) -> float:
    """The margin of block `index` (0-based) of `depth`: linear from `margin` towards 0."""
    return margin * (1.0 - index / depth)


@contextmanager
def patch(
    model: VisionTransformer, config: Config = Config(), trace: SourceTrace | None = None
) -> Iterator[VisionTransformer]:
    """PiToMe in `config.blocks`; pass a `SourceTrace` to record token sources."""
    depth = len(model.blocks)
    blocks = range(depth) if config.blocks is None else config.blocks
    n_bsm = math.ceil(depth * config.bsm_share)
    shared = _Shared(not config.prop_attn, trace)
    mid = {}
    if config.ratio < 1.0:
        mid = {
            i: PiToMe(
                config.ratio, block_margin(config.margin, i, depth), config, i < n_bsm, shared
            )
            for i in blocks
        }
    pre = {0: shared.reset_hook} if mid else None
    track = True if mid and config.prop_attn else None
    with attach(model, mid=mid, pre=pre, track_size=track) as patched:
        yield patched
