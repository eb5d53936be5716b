"""Agglomerative Token Clustering (ATC): bottom-up hierarchical clustering of the patch tokens.

Paper: "Agglomerative Token Clustering" (Haurum, Escalera, Taylor, Moeslund; ECCV 2024),
arXiv 2409.11923, record `atc-2024`. The official code calls scikit-learn's
`AgglomerativeClustering` on a precomputed distance matrix; this module clusters in PyTorch.

Between attention and MLP of the chosen blocks, the patch tokens (CLS excluded) are clustered
bottom-up: start with every token its own cluster, then repeatedly join the two closest clusters
until `k` remain. The distance between tokens is the cosine distance `1 - cos` of their keys
(averaged over heads); the distance between clusters is given by the linkage: `average` (mean
pairwise distance, the default here), `complete` (maximum) or `single` (minimum), all three
compared in the paper. Each cluster becomes the size-weighted average of its tokens and its size
is the sum of theirs; attention is proportional to size (ToMe's), as in the paper's DeiT runs.
The clustering counts every token as one point, whatever its size, like the official code.

The merge loop is sequential, `n - k` steps of `O(n^2)` each, vectorised over the batch only;
cluster distances are updated with the Lance-Williams recurrences (exact for these linkages).
Output clusters are ordered by their lowest patch index (scikit-learn numbers them in its own
order; a ViT after the merge is order-invariant, so the outputs do not change).

Official code: JoakimHaurum/ATC@227c94b584df323b94dd79e8ddbb88b1587eeb8e
(`ATC_setup/models/atc.py: agglomerative_clustering`, `merge_wavg`, with scikit-learn 1.x's
`AgglomerativeClustering`), run in memory outside the project on seeded random keys, tokens and
sizes with a class token: the same clusters, merged tokens and sizes (max abs diff 0 after
sorting the clusters) on 96 cases (linkages average, complete, single; 4 seeds; B 1 and 3;
(n, k) = (16, 5), (49, 35), (49, 1), (32, 32)).

Counts: as officially, stage `s` (0-based, blocks in ascending order) keeps `int(patches *
keep_rate^(s + 1))` clusters of the model's patch count (`count="official"`);
`count="per_stage"` keeps `round(keep_rate * current count)` (this module's earlier rule).
Simplified: no fine-tuning (the paper reports both off-the-shelf and fine-tuned results).
Distance ties break towards the lowest (i, j) pair, which may differ from scikit-learn's order.

Shapes: tokens `(B, N, C)`, CLS at index 0; keys `(B, N, D)`; output `(B, 1 + k, C)`.
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
from .adapter import attach
from .tokens import kept_count, three_stages, weighted_merge
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="atc",
    title="Agglomerative clustering of tokens on key cosine distance",
    papers=("atc-2024",),
    family="clustering",
    training_free=True,
    arxiv="2409.11923",
    simplified="no fine-tuning; clusters ordered by their lowest patch index",
)

LINKAGES = ("average", "complete", "single")
COUNTS = ("official", "per_stage")


@dataclass(frozen=True)
class Config:
    keep_rate: float = 0.7  # share of the patch tokens left as clusters at each chosen block
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based; the paper reduces at blocks 4, 7, 10
    linkage: str = "average"
    proportional_attention: bool = True
    count: str = "official"  # official: int(patches * keep_rate**(s+1)) at stage s; "per_stage"

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"
        assert self.linkage in LINKAGES, f"linkage must be one of {LINKAGES}"
        assert self.count in COUNTS, f"count must be one of {COUNTS}"


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three equal stages at 1/4, 1/2 and 3/4 depth leaving ~keep_rate of the patches."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    if keep_rate >= 1.0:
        return Config(keep_rate=1.0, blocks=())
    return Config(keep_rate=keep_rate ** (1 / 3), blocks=three_stages(depth))


def agglomerative_labels(metric: Tensor, k: int, linkage: str = "average") -> Tensor:
    """Cluster the rows of `metric (B, n, D)` into `k` groups on cosine distance.

    Returns labels `(B, n)` in `[0, k)`, clusters numbered by their lowest member index.
    """
    B, n, _ = metric.shape
    assert 0 < k <= n, f"cannot make {k} clusters of {n} tokens"
    unit = F.normalize(metric.detach(), dim=-1)  # labels carry no gradient
    dist = 1 - unit @ unit.transpose(1, 2)  # (B, n, n)
    dist = (dist + dist.transpose(1, 2)) / 2  # exactly symmetric, whatever the matmul order
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    dist.diagonal(dim1=1, dim2=2).fill_(inf)
    count = dist.new_ones(B, n)  # points per cluster; 0 once merged away
    labels = torch.arange(n, device=metric.device).expand(B, n).clone()  # (B, n)
    batch = torch.arange(B, device=metric.device)
    for _ in range(n - k):
        flat = dist.flatten(1).argmin(dim=1)  # (B,)
        i = torch.minimum(flat // n, flat % n)  # the lower index survives
        j = torch.maximum(flat // n, flat % n)
        di, dj = dist[batch, i], dist[batch, j]  # (B, n) each
        if linkage == "single":
            joined = torch.minimum(di, dj)
        elif linkage == "complete":
            joined = torch.maximum(di, dj)
        else:
            ci, cj = count[batch, i, None], count[batch, j, None]  # (B, 1) each
            joined = (ci * di + cj * dj) / (ci + cj)
        dist[batch, i], dist[batch, :, i] = joined, joined
        dist[batch, j], dist[batch, :, j] = inf, inf
        dist[batch, i, i] = inf
        count[batch, i] += count[batch, j]
        count[batch, j] = 0
        labels = torch.where(labels == j[:, None], i[:, None], labels)
    rank = (count > 0).long().cumsum(dim=1) - 1  # (B, n): cluster number of each survivor
    return rank.gather(1, labels)


def atc(
    x: Tensor,
    metric: Tensor,
    k: int,
    size: Tensor | None = None,
    linkage: str = "average",
    num_prefix: int = 1,
) -> tuple[Tensor, Tensor | None]:
    """Cluster the non-prefix tokens of `x (B, N, C)` into `k` size-weighted averages.

    `metric (B, N, D)` (the keys) decides the clusters. Returns `(x (B, prefix + k, C), size)`;
    the size-weighted sum `sum(size * x)` is conserved.
    """
    B, N, _ = x.shape
    labels = agglomerative_labels(metric[:, num_prefix:], k, linkage)  # (B, N - prefix)
    prefix = torch.arange(num_prefix, device=x.device).expand(B, num_prefix)
    dst = torch.cat([prefix, labels + num_prefix], dim=1)  # (B, N)
    weights = size if size is not None else x.new_ones(B, N, 1)
    merged, new_size = weighted_merge(x, weights, dst, num_prefix + k)  # (B, prefix + k, C)
    return merged, (new_size if size is not None else None)


def official_count(num_patches: int, keep_rate: float, stage: int, current: int) -> int:
    """The official cluster count at stage `stage` (0-based): `int(num_patches *
    keep_rate**(stage + 1))`, at most the `current` patch tokens (the official `min`), at least
    one."""
    return max(1, min(current, int(num_patches * keep_rate ** (stage + 1))))


class AgglomerativeTokenClustering:
    def __init__(self, config: Config, num_patches: int | None = None) -> None:
        self.config = config
        self.num_patches = num_patches  # the model's patch count (the official count's base)
        self.stages = sorted(config.blocks)

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.keys is not None, "ATC acts between attention and MLP"
        c, current = self.config, state.x.shape[1] - 1
        if c.count == "official" and state.index in self.stages:
            base = self.num_patches if self.num_patches is not None else current
            k = official_count(base, c.keep_rate, self.stages.index(state.index), current)
        else:
            k = kept_count(current, c.keep_rate)
        return atc(state.x, state.keys, k, state.size, c.linkage)


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    reducer = AgglomerativeTokenClustering(config, model.config.num_patches)
    with attach(
        model,
        mid=dict.fromkeys(config.blocks, reducer),
        track_size=config.proportional_attention,
    ) as patched:
        yield patched
