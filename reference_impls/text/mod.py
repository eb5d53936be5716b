"""Mixture-of-Depths: Dynamically allocating compute in transformer-based language models
(arXiv 2404.02258).

Record `mixture-of-depths-2024`. No official code: the authors (Google DeepMind) released none
and the record names no repository; community re-implementations exist and are not followed.
This follows the paper. In every routed block (every other block here: 1, 3, ...,
0-based, so the first block sees every token) a linear router scores each token,
`r_i = w . x_i`. The `k = capacity * N` tokens with the largest scores go through the block,
attending only to each other, and their update is scaled by their router weight:
`x_i <- x_i + r_i * f(X_sel)_i`; every other token skips the block on the residual stream and
leaves it bit-for-bit unchanged. Because `k` is fixed in advance, shapes are static. The
multiplication by `r_i` is what puts the router on the gradient path (the top-k itself is not
differentiable). `f` is the block's residual update: attention plus MLP for pre-LN blocks; for
BERT-style post-LN blocks `f(x) = block(x) - x`.

At capacity 1 every token is processed, but each update is still scaled by its router weight,
so the model is *not* the unrouted one (tested against a naive loop instead).

Simplified: the paper trains MoD models (routers and blocks together) as causal language models
and, for sampling, adds an auxiliary loss or a small predictor so that the non-causal top-k can
be decided token by token; here the routers are randomly initialised (seeded) on a given
bidirectional encoder, nothing is trained, and the top-k runs over the whole sequence, which an
encoder may do. Padding tokens score -inf, so real tokens are routed first. [CLS] gets no
protection (MoD skips, it never drops a token). The causal variant on `reference_impls.llm` is
not implemented.

Shapes: tokens `(B, N, C)` with [CLS] at index 0; mask `(B, N)`; router weights `(B, N)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..families import depth_of
from ..registry import ImplInfo
from .encoder import RouteState, TextEncoder, attach, gather

IMPL = ImplInfo(
    name="mod",
    title="Mixture-of-Depths: a router sends the top-k tokens through a block, the rest skip it",
    papers=("mixture-of-depths-2024",),
    family="token-skipping",
    training_free=False,
    arxiv="2404.02258",
    simplified=(
        "randomly initialised routers on a given bidirectional encoder, no training; top-k over "
        "the whole sequence (no auxiliary loss or predictor for causal sampling)"
    ),
)


@dataclass(frozen=True)
class Config:
    capacity: float = 0.125  # share of the sequence each routed block processes
    blocks: tuple[int, ...] = (1, 3)  # routed blocks, 0-based: every other block
    seed: int = 0  # initialises the routers `patch` makes

    def __post_init__(self) -> None:
        assert 0.0 < self.capacity <= 1.0, "capacity must be in (0, 1]"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"
        assert all(b >= 0 for b in self.blocks), "block indices are 0-based"


def config_for(keep: float, model_config: object = None, depth: int = 4) -> Config:
    """Route every other block (1, 3, ...) at capacity `keep`."""
    depth = depth_of(model_config, depth)
    return Config(capacity=min(1.0, keep), blocks=tuple(range(1, depth, 2)))


def capacity_tokens(n: int, capacity: float) -> int:
    """Tokens a routed block processes out of `n`: `capacity * n` rounded, at least one."""
    return max(1, min(n, int(capacity * n + 0.5)))


class MoDRouter(nn.Module):
    """The router of one block: `r = w . x`, `(B, N, C) -> (B, N)`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).squeeze(-1)


def make_routers(width: int, config: Config) -> dict[int, MoDRouter]:
    """One router per routed block, initialised normal(0, 0.02) from `config.seed`."""
    generator = torch.Generator().manual_seed(config.seed)
    routers: dict[int, MoDRouter] = {}
    for index in config.blocks:
        router = MoDRouter(width)
        with torch.no_grad():
            router.proj.weight.copy_(torch.randn(1, width, generator=generator) * 0.02)
        routers[index] = router
    return routers


def route(
    x: Tensor,
    mask: Tensor,
    weights: Tensor,
    k: int,
    update: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """Mixture-of-Depths routing of `x (B, N, C)`: the `k` real tokens with the largest
    `weights (B, N)` get `x_i + weights_i * update(x_sel, mask_sel)_i`, the others stay as
    they are. `update` maps `(B, k, C)` tokens and their mask `(B, k)` to `(B, k, C)`."""
    scores = weights.masked_fill(~mask, float("-inf"))
    # A stable sort, not topk: ties (padding, all at -inf) are broken by position, reproducibly.
    ranked = scores.sort(dim=1, descending=True, stable=True).indices  # (B, N)
    selected = ranked[:, :k].sort(dim=1).values  # (B, k) in sequence order
    x_sel, mask_sel = gather(x, selected), gather(mask, selected)  # (B, k, C), (B, k)
    w_sel = weights.gather(1, selected).unsqueeze(-1)  # (B, k, 1)
    processed = x_sel + w_sel * update(x_sel, mask_sel)  # (B, k, C)
    index = selected.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # (B, k, C)
    return x.scatter(1, index, processed)  # (B, N, C)


class MoDSkipper:
    """A block router: route the top-k tokens through `route.block`, the rest around it."""

    def __init__(self, router: MoDRouter, capacity: float) -> None:
        self.router = router
        self.capacity = capacity

    def __call__(self, state: RouteState) -> tuple[Tensor, Tensor]:
        k = capacity_tokens(state.x.shape[1], self.capacity)
        weights = self.router(state.x)  # (B, N)
        return route(state.x, state.mask, weights, k, state.block.residual), state.mask


@contextmanager
def patch(
    model: TextEncoder,
    config: Config = Config(),
    routers: Mapping[int, MoDRouter] | None = None,
) -> Iterator[TextEncoder]:
    """Route `config.blocks` of `model`. `routers` (block index -> router) default to fresh
    seeded ones; pass your own to train them or to read their gradients."""
    if routers is None:
        routers = make_routers(model.config.width, config)
    if set(routers) != set(config.blocks):
        raise ValueError(f"routers for blocks {sorted(routers)}, config routes {config.blocks}")
    skippers = {i: MoDSkipper(routers[i], config.capacity) for i in config.blocks}
    with attach(model, routers=skippers) as patched:
        yield patched
