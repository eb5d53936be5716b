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

No official code: none was found (the record has no code link; the stored GitHub index, searched
by title and by MLERP, has none). This follows the paper. ToFu is built on ToMe, so the matching
and the token layout are ToMe's official ones, from `tome.match` (CLS protected; out = the
unmerged A tokens in position order, then every B token): the layout decides which tokens can
meet from the next block on. The switch from pruning to MLERP merging follows the public
re-implementations in the PiToMe baselines (hchautran/PiToMe, algo/tofu) and
Westlake-AI/OpenToMe, which prune in blocks `0 .. depth // 2` and merge after (`Config.merge_from`
moves the switch); no code was taken from them. Run in memory against PiToMe's
`algo/tofu/merge.py` at commit 550b5deed94aadfeac28bfbe381d87e672044a40 (40 seeded cases, B 1-4,
N 16-197, r 1 to the cap): its "prune" output is bit-identical to ours, and its "mean" average
rescaled to each group's largest norm equals our `mode="mean"` to float tolerance. Its "tofu"
mode is not MLERP (it rescales the average by the destination's own norm before merging, a
difference of up to 5.8 on those cases), so it is not followed. The paper derives the switch
from a linearity analysis of the network; that analysis is not reproduced.

Options: `mode`, MLERP's average before rescaling: "weighted" by size (default, ToMe's merge) or
the unweighted "mean" of the re-implementations; sizes add up either way.

Simplified: no training or fine-tuning with ToFu in place; no Stable Diffusion variant.

Shapes: tokens `(B, N, C)`, CLS at index 0; keys `(B, N, D)`; size `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of, patches_of
from ..registry import ImplInfo
from .adapter import attach
from .tome import Merge, match
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
        "linearity analysis; no training, no Stable Diffusion variant"
    ),
)


MODES = ("weighted", "mean")


@dataclass(frozen=True)
class Config:
    r: int | tuple[int, ...] = 13  # tokens removed per block: one value, or one per block
    merge_from: int | None = None  # first block (0-based) that merges; None: depth // 2 + 1
    # MLERP's average before rescaling: "weighted" by size (ToMe's merge) or the unweighted
    # "mean" of the public re-implementations
    mode: str = "weighted"

    def __post_init__(self) -> None:
        values = self.r if isinstance(self.r, tuple) else (self.r,)
        assert all(isinstance(v, int) and v >= 0 for v in values), "r must be ints >= 0"
        assert self.merge_from is None or self.merge_from >= 0, "merge_from must be >= 0"
        assert self.mode in MODES, f"mode must be one of {MODES}"

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


def config_for(keep_rate: float, model_config: object, num_patches: int = 196) -> Config:
    """A constant `r` that leaves about `keep_rate` of `num_patches` patch tokens after the last
    block (as ToMe's `config_for`); `r = 0`, no reduction, at keep_rate >= 1."""
    depth, num_patches = depth_of(model_config), patches_of(model_config, num_patches)
    assert keep_rate > 0.0 and depth >= 1 and num_patches >= 1
    if keep_rate >= 1.0:
        return Config(r=0)
    return Config(r=max(1, round(num_patches * (1.0 - keep_rate) / depth)))


def mlerp_merge(
    merge: Merge, x: Tensor, size: Tensor, mode: str = "weighted"
) -> tuple[Tensor, Tensor]:
    """Apply `merge` to `x (B, N, C)` with MLERP: each group's average (size-weighted, or the
    unweighted "mean"), rescaled to the group's largest norm. Sizes add up. A token that nothing
    merged into is returned unchanged. Returns `(B, N_out, C)` and sizes `(B, N_out, 1)`."""
    B, N, _ = x.shape
    if mode == "weighted":
        average, new_size = merge.weighted(x, size)  # (B, N_out, C), (B, N_out, 1)
    else:
        average, new_size = merge(x, "mean"), merge(size, "sum")
    norms = x.norm(dim=-1).reshape(-1)  # (B * N,)
    largest = norms.new_zeros(B * merge.num_out).scatter_reduce_(
        0, merge.slot_rows(), norms, "amax", include_self=False
    )  # (B * N_out,) largest norm in each group
    members = merge(x.new_ones(B, N, 1), "sum")  # (B, N_out, 1) tokens in each group
    length = average.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    rescaled = average * (largest.view(B, -1, 1) / length)
    untouched = merge.prune()(x, "sum")  # (B, N_out, C): each slot's own token, exactly
    return torch.where(members > 1, rescaled, untouched), new_size


def token_fusion(
    x: Tensor,
    metric: Tensor,
    r: int,
    merge: bool,
    size: Tensor | None = None,
    mode: str = "weighted",
) -> tuple[Tensor, Tensor]:
    """One ToFu step on `x (B, N, C)` with `metric (B, N, D)`: ToMe's matching of
    `r' = min(r, (N - 1) // 2)` pairs (`tome.match`, CLS protected, ToMe's token layout), then
    MLERP-merge them (`merge`) or prune their sources. Returns `(x, size)`."""
    if size is None:
        size = x.new_ones(*x.shape[:2], 1)
    matched = match(metric, r)
    if matched is None:
        return x, size
    if merge:
        return mlerp_merge(matched, x, size, mode)
    pruned = matched.prune()
    return pruned(x, "sum"), pruned(size, "sum")


class ToFuReducer:
    """The reducer of one block: prunes or MLERP-merges `r` tokens matched on the block's keys."""

    def __init__(self, r: int, merge: bool, mode: str = "weighted") -> None:
        self.r = r
        self.merge = merge
        self.mode = mode

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.keys is not None, "ToFu runs between attention and MLP (mid hook)"
        return token_fusion(state.x, state.keys, self.r, self.merge, state.size, self.mode)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    depth = len(model.blocks)
    switch = config.first_merging_block(depth)
    mid = {
        index: ToFuReducer(r, merge=index >= switch, mode=config.mode)
        for index, r in enumerate(config.per_block(depth))
        if r > 0
    }
    with attach(model, mid=mid, track_size=True if mid else None) as patched:
        yield patched
