"""Token Fusion: Bridging the Gap between Token Pruning and Token Merging (ToFu), arXiv 2312.01026,
record `tofu-2023`.

ToFu keeps ToMe's bipartite soft matching (keys averaged over heads, cosine similarity, tokens
alternating into sets A and B, CLS never a source, the `r` best-matched A tokens leave) and
changes what happens to a matched pair, by depth:

1. early blocks *prune*: the paper finds that early layers respond far from linearly to
   interpolated inputs, so an averaged token is out of distribution there. A matched A token is
   dropped and its B partner stays exactly as it was (its size does not grow);
2. later blocks *merge with MLERP*: the tokens that share a destination are averaged
   (size-weighted, as in ToMe) and the average is rescaled to the largest norm among them,
   `MLERP(x_1..x_k) = (x_bar / ||x_bar||) * max_i ||x_i||`. Plain averaging shrinks the norm of
   dissimilar tokens; MLERP, a multi-token variant of SLERP, keeps the norm distribution. A token
   that nothing merged into is left bit-identical.

Proportional attention (`log(size)` added to the scores) is on, as in ToMe.

Checked against: the paper's abstract and method description; no official repository was found
(the record has no code link). The switch from pruning to MLERP merging follows the public
re-implementations of ToFu in the PiToMe baselines (hchautran/PiToMe) and Westlake-AI/OpenToMe,
which prune in blocks `0 .. depth // 2` and merge after (`Config.merge_from` moves the switch);
no code was taken from them. The paper derives the switch from a linearity analysis of the
network; that analysis is not reproduced.

Simplified: survivors keep their original order (ToMe puts the unmatched A tokens first); the
MLERP average is size-weighted (the re-implementations average unweighted); no training or
fine-tuning with ToFu in place; no Stable Diffusion variant.

Shapes: tokens `(B, N, C)`, CLS at index 0; keys `(B, N, D)`; size `(B, N, 1)`; pair positions
`src`, `dst` `(B, r)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ImplInfo
from .adapter import attach
from .tokens import gather, weighted_merge
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="tofu",
    title="ToFu: ToMe matching; prune in early blocks, MLERP-merge in later ones",
    papers=("tofu-2023",),
    family="prune-merge",
    training_free=True,
    arxiv="2312.01026",
    simplified=(
        "switch block from public re-implementations (prune up to depth // 2), not the paper's "
        "linearity analysis; survivors keep their order; size-weighted MLERP average"
    ),
)


@dataclass(frozen=True)
class Config:
    r: int | tuple[int, ...] = 13  # tokens removed per block: one value, or one per block
    merge_from: int | None = None  # first block (0-based) that merges; None: depth // 2 + 1

    def __post_init__(self) -> None:
        values = self.r if isinstance(self.r, tuple) else (self.r,)
        assert all(isinstance(v, int) and v >= 0 for v in values), "r must be ints >= 0"
        assert self.merge_from is None or self.merge_from >= 0, "merge_from must be >= 0"

    def per_block(self, depth: int) -> tuple[int, ...]:
        """The `r` of each of `depth` blocks."""
        if isinstance(self.r, int):
            return (self.r,) * depth
        if len(self.r) != depth:
            raise ValueError(f"Config.r has {len(self.r)} values for a model of depth {depth}")
        return self.r

    def first_merging_block(self, depth: int) -> int:
        """Blocks before this index prune; this one and later ones merge with MLERP."""
        return depth // 2 + 1 if self.merge_from is None else self.merge_from


def config_for(keep_rate: float, depth: int, num_patches: int = 196) -> Config:
    """A constant `r` that leaves about `keep_rate` of `num_patches` patch tokens after the last
    block (as ToMe's `config_for`); `r = 0`, no reduction, at keep_rate >= 1."""
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    if keep_rate >= 1.0:
        return Config(r=0)
    return Config(r=max(1, round(num_patches * (1.0 - keep_rate) / depth)))


def bipartite_match(metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """ToMe's matching on `metric (B, N, D)` with CLS at index 0 protected: A = even positions,
    B = odd; each A token's most cosine-similar B token; the `r` best-matched A tokens are the
    sources. Returns token positions `(src (B, r), dst (B, r))`; `r <= (N - 1) // 2`."""
    unit = metric / metric.norm(dim=-1, keepdim=True)
    scores = unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)  # (B, Na, Nb)
    scores[:, 0, :] = -torch.inf  # CLS has no edge
    best, match = scores.max(dim=-1)  # (B, Na)
    chosen = best.argsort(dim=-1, descending=True)[:, :r]  # (B, r) positions in A
    return 2 * chosen, 2 * match.gather(1, chosen) + 1


def survivor_slots(N: int, src: Tensor, dst: Tensor) -> Tensor:
    """For each of the `N` tokens, the output slot it ends in when the `src (B, r)` tokens go
    into `dst (B, r)` and the survivors keep their order: `(B, N)` with values in `[0, N - r)`."""
    B = src.shape[0]
    target = torch.arange(N, device=src.device).expand(B, N).scatter(1, src, dst)  # (B, N)
    survives = torch.ones(B, N, dtype=torch.bool, device=src.device).scatter(1, src, False)
    slot = survives.long().cumsum(dim=1) - 1  # (B, N)
    return slot.gather(1, target)


def survivors(N: int, src: Tensor) -> Tensor:
    """Positions of the tokens that are not sources, in order: `(B, N - r)`."""
    B = src.shape[0]
    survives = torch.ones(B, N, dtype=torch.bool, device=src.device).scatter(1, src, False)
    return torch.arange(N, device=src.device).expand(B, N)[survives].view(B, N - src.shape[1])


def prune_sources(x: Tensor, size: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the tokens at `src (B, r)` from `x (B, N, C)`; the others, their destinations
    included, are kept unchanged and in order. Returns `(B, N - r, C)` and sizes `(B, N - r, 1)`."""
    index = survivors(x.shape[1], src)  # (B, N - r)
    return gather(x, index), gather(size, index)


def mlerp_merge(x: Tensor, size: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Merge the tokens at `src (B, r)` into `dst (B, r)` with MLERP: the size-weighted average
    of each group, rescaled to the group's largest norm. Sizes add up. A token that nothing
    merged into is returned unchanged. Returns `(B, N - r, C)` and sizes `(B, N - r, 1)`."""
    B, N, _ = x.shape
    n_out = N - src.shape[1]
    slot = survivor_slots(N, src, dst)  # (B, N)
    average, new_size = weighted_merge(x, size, slot, n_out)  # (B, n_out, C), (B, n_out, 1)
    norms = x.norm(dim=-1)  # (B, N)
    largest = norms.new_zeros(B, n_out).scatter_reduce(1, slot, norms, "amax", include_self=False)
    members = torch.zeros(B, n_out, dtype=torch.long, device=x.device)
    members = members.scatter_add(1, slot, torch.ones_like(slot))  # (B, n_out)
    length = average.norm(dim=-1).clamp_min(torch.finfo(x.dtype).tiny)  # (B, n_out)
    rescaled = average * (largest / length).unsqueeze(-1)
    untouched = gather(x, survivors(N, src))  # (B, n_out, C): exact where nothing merged in
    return torch.where((members > 1).unsqueeze(-1), rescaled, untouched), new_size


def token_fusion(
    x: Tensor, metric: Tensor, r: int, merge: bool, size: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One ToFu step on `x (B, N, C)` with `metric (B, N, D)`: match `r' = min(r, (N - 1) // 2)`
    pairs, then MLERP-merge them (`merge`) or prune their sources. Returns `(x, size)`."""
    B, N, _ = x.shape
    if size is None:
        size = x.new_ones(B, N, 1)
    r = min(r, (N - 1) // 2)
    if r <= 0:
        return x, size
    src, dst = bipartite_match(metric, r)
    return mlerp_merge(x, size, src, dst) if merge else prune_sources(x, size, src)


class ToFuReducer:
    """The reducer of one block: prunes or MLERP-merges `r` tokens matched on the block's keys."""

    def __init__(self, r: int, merge: bool) -> None:
        self.r = r
        self.merge = merge

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.keys is not None, "ToFu runs between attention and MLP (mid hook)"
        return token_fusion(state.x, state.keys, self.r, self.merge, state.size)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    depth = len(model.blocks)
    switch = config.first_merging_block(depth)
    mid = {
        index: ToFuReducer(r, merge=index >= switch)
        for index, r in enumerate(config.per_block(depth))
        if r > 0
    }
    with attach(model, mid=mid, track_size=True if mid else None) as patched:
        yield patched
