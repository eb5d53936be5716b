"""Token Merging: Your ViT But Faster (ToMe), arXiv 2210.09461, record `tome-2023`.

In every block, between attention and MLP, ToMe merges `r` pairs of similar tokens:

1. the metric is the attention keys averaged over heads, `(B, N, D)`, cosine-normalised;
2. tokens alternate into set A (even positions, CLS included) and set B (odd positions);
3. each A token finds its most similar B token; CLS gets no edge, so it is never merged (a
   distillation token, B's first, receives none);
4. the `r` A tokens with the most similar match are merged into their B token by a
   size-weighted average (`size` counts the patches a token stands for); several A tokens may
   land on the same B token;
5. attention in later blocks adds `log(size)` to its scores (proportional attention).

The merged sequence is laid out as the official code lays it out, and this matters: the next
block's A/B split alternates by position, so the layout decides which tokens can merge from the
second merging block on. It is: the A tokens that were not merged, then every B token in its
original order. The unmerged A tokens are in position order when there is a class token, and
otherwise in the order of their best-edge similarity, highest first (the official code sorts
them only when it has a class token). With a distillation token it comes second:
`[CLS, DIST, other unmerged A, other B]`.

`r` is per block: a constant, ToMe's linearly decreasing schedule (2r at the first block down to
0 at the last, about the same total), or any tuple. At most half of the unprotected tokens can
merge in one block, so `r` is capped at `(N - protected) // 2` as in ToMe.

Options with the official names and defaults: `class_token` (True here: our ViT has one; the
official `bipartite_soft_matching` defaults to False and its timm patch sets it from the model),
`distill_token` (False); the merge `mode`: "weighted" (the official `merge_wavg`, used by its
ViT patch), "mean" or "sum" (the official `merge(x, mode=...)`, a plain `scatter_reduce` that
includes the destination itself); sizes always add up, so proportional attention stays right.
Source tracking (`merge_source`): `SourceTrace` records which original token each merged token
stands for, and `Merge.unmerge` undoes one merge (the official `unmerge`).

Checked against the official code, run in memory from a fetched snapshot outside the project
(none of it is copied here; ToMe is CC-BY-NC): facebookresearch/ToMe at commit
af95e4b1befa172dadccd8c81e223b10090f9579, `tome/merge.py` (`bipartite_soft_matching` with its
`merge` and `unmerge`, `merge_wavg`, `merge_source`) and `tome/patch/timm.py` (the block that
calls them). 240 seeded random cases (B 1-4, N 2-50 odd and even, r 0 to past the cap, class
token on/off, distillation token on/off, modes weighted/mean/sum, 48 in float16): merged
tokens, sizes and sources (after one and two merges) are bit-identical in the 215 cases where
something merges; where the cap leaves nothing to merge the official `merge_wavg` still
computes `x * size / size` (1-ulp changes) and this returns `x` unchanged. `unmerge` is
bit-identical without a distillation token; with one, the official `unmerge` reads its input
as `[unmerged A, B]` although its `merge` put the distillation token second, so it misplaces
rows, and this inverts the layout it produced. Whole model: our 4-block ViT patched here and
the same ViT with the official `bipartite_soft_matching` + `merge_wavg` in its mid hook give
bit-identical logits (r 5, 8, 40 and the decreasing schedule; batch 3; 3 seeds).

Speed: the official merge gathers and scatters with per-element index tensors; this one moves
whole rows (`index_select`, `index_add_`) with one set of flat indices for `x`, `size` and the
sources. Per call (match + weighted merge, CPU, one thread, interleaved runs on the same
tensors) against the official functions: 0.74-0.8x at B=1 and 0.2-0.8x at B=8-32 for DeiT-S/B
shapes (N=197), 0.94x at N=65; on a toy input (N=17, C=6) 1.06x, where the fixed cost of a few
small tensor ops dominates.

Simplified: proportional attention is always on (the official `prop_attn` option, for MAE
models, is not offered); the ViT is ours, not timm's.

Shapes: tokens `(B, N, C)`, CLS at index 0; keys `(B, N, D)`; size `(B, N, 1)`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of, patches_of
from ..registry import ImplInfo
from .adapter import attach
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="tome",
    title="ToMe: bipartite soft matching on keys, size-weighted merging",
    papers=("tome-2023",),
    family="merging",
    training_free=True,
    arxiv="2210.09461",
    simplified="proportional attention always on (no prop_attn=False for MAE models)",
)

SCHEDULES = ("constant", "decreasing")
MODES = ("weighted", "mean", "sum")


@dataclass(frozen=True)
class Config:
    r: int | tuple[int, ...] = 13  # tokens merged per block: one value, or one per block
    schedule: str = "constant"  # for an int r: "constant", or "decreasing" (2r down to 0)
    class_token: bool = True  # token 0 is a class token: never merged, kept first
    distill_token: bool = False  # token 1 is a distillation token: never merged into, kept second
    mode: str = "weighted"  # how merged features combine: "weighted" by size, "mean", "sum"

    def __post_init__(self) -> None:
        values = self.r if isinstance(self.r, tuple) else (self.r,)
        assert all(isinstance(v, int) and v >= 0 for v in values), "r must be ints >= 0"
        assert self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"
        assert isinstance(self.r, int) or self.schedule == "constant", (
            "a schedule applies to an int r only; a tuple r is already per block"
        )
        assert self.mode in MODES, f"mode must be one of {MODES}"

    def per_block(self, depth: int) -> tuple[int, ...]:
        """The `r` of each of `depth` blocks."""
        if isinstance(self.r, tuple):
            if len(self.r) != depth:
                raise ValueError(f"Config.r has {len(self.r)} values for a model of depth {depth}")
            return self.r
        if self.schedule == "constant" or depth == 1:
            return (self.r,) * depth
        # Linear from 2r at the first block to 0 at the last, truncated to ints.
        return tuple(int(2 * self.r * (1 - i / (depth - 1))) for i in range(depth))


def config_for(keep_rate: float, model_config: object, num_patches: int = 196) -> Config:
    """A constant `r` that leaves about `keep_rate` of `num_patches` patch tokens after the last
    block (ToMe's r is an absolute count, so it needs the patch count: DeiT at 224px by default).
    """
    depth, num_patches = depth_of(model_config), patches_of(model_config, num_patches)
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    if keep_rate >= 1.0:
        return Config(r=0)
    return Config(r=max(1, round(num_patches * (1.0 - keep_rate) / depth)))


class Merge:
    """A merge of `N` tokens into fewer, built once by a matching rule and applied to any
    per-token tensor (features, sizes, sources).

    It holds three flat row indices over a batch of `B`: `keep_rows (B * N_out,)`, the input
    row (of the `(B * N, ...)` view) that fills each output row; `src_rows (B * r,)`, the input
    rows merged away; `into_rows (B * r,)`, the output row (of the `(B * N_out, ...)` view)
    each of them merges into. Input rows in neither are dropped (pruned): DiffRate prunes and
    merges in one step. ToMe, PiToMe and DiffRate differ only in how they choose these rows.
    Rows move whole (`index_select`, `index_add_`), which is what makes this fast.
    """

    def __init__(
        self, keep_rows: Tensor, src_rows: Tensor, into_rows: Tensor, batch: int, num_tokens: int
    ) -> None:
        self.keep_rows, self.src_rows, self.into_rows = keep_rows, src_rows, into_rows
        self.batch, self.num_tokens = batch, num_tokens
        self.num_out = keep_rows.shape[0] // batch
        self.r = src_rows.shape[0] // batch  # tokens merged away per image
        self.drops = self.num_out + self.r < num_tokens  # some tokens are pruned

    @classmethod
    def from_positions(cls, keep: Tensor, src: Tensor, into: Tensor, num_tokens: int) -> Merge:
        """From per-image positions: `keep (B, N_out)` the input position filling each output
        slot, `src (B, r)` the input positions merged away, `into (B, r)` their output slots."""
        B, n_out = keep.shape
        base = torch.arange(0, B * num_tokens, num_tokens, device=keep.device).unsqueeze(1)
        out_base = torch.arange(0, B * n_out, n_out, device=keep.device).unsqueeze(1)
        return cls(
            (keep + base).reshape(-1),
            (src + base).reshape(-1),
            (into + out_base).reshape(-1),
            B,
            num_tokens,
        )

    def prune(self) -> Merge:
        """The same survivors, with the merged-away tokens dropped instead (PiToMe's "prune")."""
        none = self.src_rows[:0]
        return Merge(self.keep_rows, none, none, self.batch, self.num_tokens)

    def _flat(self, x: Tensor) -> Tensor:
        assert x.shape[:2] == (self.batch, self.num_tokens), (
            f"expected (B={self.batch}, N={self.num_tokens}, ...), got {tuple(x.shape)}"
        )
        return x.reshape(-1, *x.shape[2:])

    def __call__(self, x: Tensor, mode: str = "mean") -> Tensor:
        """Merge `x (B, N, C)` into `(B, N_out, C)`: each receiving slot becomes the "sum" or the
        unweighted "mean" of itself and the rows merged into it."""
        assert mode in ("sum", "mean"), f"mode must be 'sum' or 'mean', not {mode!r}"
        flat = self._flat(x)
        out = flat.index_select(0, self.keep_rows)
        out.index_add_(0, self.into_rows, flat.index_select(0, self.src_rows))
        if mode == "mean":
            count = out.new_ones(out.shape[0]).index_add_(
                0, self.into_rows, out.new_ones(self.into_rows.shape[0])
            )  # (B * N_out,) rows summed into each slot, itself included
            out /= count.view(-1, *([1] * (out.dim() - 1)))
        return out.view(self.batch, self.num_out, *x.shape[2:])

    def weighted(self, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Size-weighted merge of `x (B, N, C)` (the official `merge_wavg`): returns
        `(x (B, N_out, C), size (B, N_out, 1))`, `sum(size * x)` conserved over what is kept."""
        if size is None:
            size = x.new_ones(*x.shape[:2], 1)
        total = self(x * size, mode="sum")
        new_size = self(size, mode="sum")
        return total / new_size, new_size

    def slot_rows(self) -> Tensor:
        """For each row of the flat input, the flat output row it went to, -1 if dropped:
        `(B * N,)`."""
        rows = self.keep_rows.new_full((self.batch * self.num_tokens,), -1)
        n_rows = self.batch * self.num_out
        rows.index_copy_(0, self.keep_rows, torch.arange(n_rows, device=rows.device))
        return rows.index_copy_(0, self.src_rows, self.into_rows)

    def slots(self) -> Tensor:
        """The output slot of each input token, merged ones included, -1 if dropped: `(B, N)`."""
        rows = self.slot_rows().view(self.batch, self.num_tokens)
        base = torch.arange(0, self.batch * self.num_out, self.num_out, device=rows.device)
        slots = rows - base.unsqueeze(1)
        return slots.masked_fill_(rows < 0, -1) if self.drops else slots

    def unmerge(self, x: Tensor) -> Tensor:
        """Undo the merge for `x (B, N_out, C)`: every input token gets the row of the slot it
        went to, `(B, N, C)` (the official `unmerge`); a dropped token gets zeros."""
        assert x.shape[:2] == (self.batch, self.num_out), (
            f"expected (B={self.batch}, N_out={self.num_out}, ...), got {tuple(x.shape)}"
        )
        rows = self.slot_rows()  # (B * N,) rows of the flat merged x
        flat = x.reshape(-1, *x.shape[2:])
        out = flat.index_select(0, rows.clamp_min(0))
        if self.drops:
            out[rows < 0] = 0
        return out.view(self.batch, self.num_tokens, *x.shape[2:])


@functools.lru_cache(maxsize=64)
def _scaffold(batch: int, num_tokens: int, r: int, device: torch.device) -> tuple[Tensor, ...]:
    """Index pieces that depend only on the shape: `(base (B, 1), b_rows (B, Nb), into_base
    (B, 1))`. Building them costs more than the merge itself on small inputs, so they are
    cached per shape; callers never modify them."""
    n_out = num_tokens - r
    n_kept = (num_tokens + 1) // 2 - r
    base = torch.arange(0, batch * num_tokens, num_tokens, device=device).unsqueeze(1)
    b_rows = base + torch.arange(1, num_tokens, 2, device=device)  # every B token, in order
    into_base = torch.arange(n_kept, batch * n_out, n_out, device=device).unsqueeze(1)
    return base, b_rows, into_base


def match(
    metric: Tensor, r: int, class_token: bool = True, distill_token: bool = False
) -> Merge | None:
    """ToMe's bipartite soft matching on `metric (B, N, D)`: which `r` tokens merge where.

    Returns None when nothing merges (`r`, capped at `(N - protected) // 2`, is 0).
    """
    B, N, _ = metric.shape
    r = min(r, (N - int(class_token) - int(distill_token)) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)  # (B, Na, Nb): A rows, B columns
        if class_token:
            scores[:, 0, :] = -math.inf  # CLS (A's first) has no edge
        if distill_token:
            scores[:, :, 0] = -math.inf  # nothing merges into the distillation token (B's first)
        best, partner = scores.max(dim=-1)  # (B, Na)
        order = best.argsort(dim=-1, descending=True)  # (B, Na) A tokens, best edge first
        src, kept = order[:, :r], order[:, r:]  # (B, r), (B, Na - r)
        if class_token:
            kept = kept.sort(dim=-1).values  # position order: CLS first
        dst = partner.gather(1, src)  # (B, r) indices into B
        if distill_token:  # layout [A_kept[0], B[0], A_kept[1:], B[1:]]
            n_kept, n_b = kept.shape[1], N // 2
            keep = torch.cat(
                [2 * kept, torch.arange(1, N, 2, device=metric.device).expand(B, -1)], 1
            )
            keep = torch.cat(
                [
                    keep[:, :1],
                    keep[:, n_kept : n_kept + 1],
                    keep[:, 1:n_kept],
                    keep[:, n_kept + 1 :],
                ],
                1,
            )
            b_slot = torch.arange(n_kept, n_kept + n_b, device=metric.device)  # (Nb,) slot of B[j]
            b_slot[0] = 1
            return Merge.from_positions(keep, 2 * src, b_slot[dst], N)
        # layout [A_kept, B]: flat rows built from the cached per-shape pieces
        base, b_rows, into_base = _scaffold(B, N, r, metric.device)
        keep_rows = torch.cat([base.add(kept, alpha=2), b_rows], 1).view(-1)
        src_rows = base.add(src, alpha=2).view(-1)
        return Merge(keep_rows, src_rows, (dst + into_base).view(-1), B, N)


def bipartite_soft_matching(
    x: Tensor,
    metric: Tensor,
    r: int,
    size: Tensor | None = None,
    class_token: bool = True,
    distill_token: bool = False,
    mode: str = "weighted",
) -> tuple[Tensor, Tensor]:
    """ToMe's merge step on `x (B, N, C)` with `metric (B, N, D)`.

    Returns `(x (B, N - r', C), size (B, N - r', 1))` with `r'` the capped `r`; the sizes add up
    in every mode, the features combine by `mode` ("weighted", "mean", "sum").
    """
    assert mode in MODES, f"mode must be one of {MODES}"
    if size is None:
        size = x.new_ones(*x.shape[:2], 1)
    merge = match(metric, r, class_token, distill_token)
    if merge is None:
        return x, size
    if mode == "weighted":
        return merge.weighted(x, size)
    return merge(x, mode), merge(size, "sum")


class SourceTrace:
    """Which original token each merged token stands for (the official `merge_source`).

    `group (B, N0)` holds, for every token that entered the first reducing block, the index of
    the token that now contains it (-1 once pruned); `source` is the same as the official
    `(B, N', N0)` 0/1 matrix. `reset_hook`, a pre hook on block 0, clears it at every forward.
    """

    def __init__(self) -> None:
        self.group: Tensor | None = None
        self.num_tokens = 0

    def reset(self) -> None:
        self.group, self.num_tokens = None, 0

    def reset_hook(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        self.reset()
        return state.x, state.size

    def update(self, merge: Merge) -> None:
        slot = merge.slots()  # (B, N), -1 where dropped
        if self.group is None:
            self.group = slot
        else:
            moved = slot.gather(1, self.group.clamp_min(0))
            self.group = moved.masked_fill_(self.group < 0, -1)
        self.num_tokens = merge.num_out

    @property
    def source(self) -> Tensor:
        assert self.group is not None, "no merge has been traced yet"
        B, n0 = self.group.shape
        one_hot = torch.zeros(B, self.num_tokens, n0, device=self.group.device)
        kept = (self.group >= 0).unsqueeze(1).to(one_hot.dtype)  # (B, 1, N0): 0 once pruned
        return one_hot.scatter_(1, self.group.clamp_min(0).unsqueeze(1), kept)


class ToMe:
    """The reducer for one block: merges `r` tokens with the block's keys as metric."""

    def __init__(self, r: int, config: Config = Config(), trace: SourceTrace | None = None) -> None:
        self.r, self.config, self.trace = r, config, trace

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.keys is not None, "ToMe runs between attention and MLP (mid hook)"
        c = self.config
        merge = match(state.keys, self.r, c.class_token, c.distill_token)
        size = state.size if state.size is not None else state.x.new_ones(*state.x.shape[:2], 1)
        if merge is None:
            return state.x, size
        if self.trace is not None:
            self.trace.update(merge)
        if c.mode == "weighted":
            return merge.weighted(state.x, size)
        return merge(state.x, c.mode), merge(size, "sum")


@contextmanager
def patch(
    model: VisionTransformer, config: Config = Config(), trace: SourceTrace | None = None
) -> Iterator[VisionTransformer]:
    """Merge with ToMe inside the `with` block; pass a `SourceTrace` to record token sources."""
    rs = config.per_block(len(model.blocks))
    mid = {index: ToMe(r, config, trace) for index, r in enumerate(rs) if r > 0}
    pre = {0: trace.reset_hook} if trace is not None else None
    with attach(model, mid=mid, pre=pre, track_size=True if mid else None) as patched:
        yield patched
