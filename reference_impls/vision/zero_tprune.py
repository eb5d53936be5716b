"""Zero-TPrune: Zero-Shot Token Pruning through Leveraging of the Attention Graph in Pre-Trained
Transformers (arXiv 2305.17328).

Record `zero-tprune-2024`. No official code: none was found to check against (the paper links
only a project page, jha-lab.github.io/zerotprune; the stored GitHub index, searched by name and
by title, has only a third-party reimplementation, MahdiarKhodabakhshi/Zero-TPrune, not by the
authors and not used here). This follows the paper's description.

The I-stage, between attention and MLP of the chosen blocks: each head's attention matrix
`A (N, N)` (rows: queries, summing to 1) is read as a weighted directed graph, and token
importance is its Weighted PageRank: start from the uniform distribution `s = 1/N` and apply the
graph shift `s <- A^T s`, i.e. `s_i = sum_j A[j, i] s_j`: a token is important when important
tokens attend to it. The shift keeps `s` a distribution. The number of iterations falls with depth
(the paper uses many in the first blocks and a single one in the last); `config_for` uses 30 in
the first three blocks, 1 in the last three and 5 in between. Heads are combined by the root mean
square over heads (the paper's "emphasizing informative region" aggregation), and the patch tokens
with the lowest importance are pruned: a block keeps exactly `1 + round(keep_rate * n)` tokens.

Simplified: only the I-stage is implemented. The paper's S-stage (similarity-based pruning of
tokens partitioned by importance) and its variance-based head filter are omitted: their exact
rules (partition scheme, similarity metric, variance thresholds) could not be checked against
code, so they are left out rather than guessed. Training-free, as in the paper.

Shapes: tokens `(B, N, C)`, CLS at index 0 always kept and unchanged; attention `(B, H, N, N)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .adapter import attach
from .tokens import keep_topk, kept_count, three_stages
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="zero_tprune",
    title="Zero-TPrune I-stage: Weighted PageRank on the attention graph",
    papers=("zero-tprune-2024",),
    family="pruning",
    training_free=True,
    arxiv="2305.17328",
    simplified=(
        "I-stage only: the S-stage (similarity-based pruning) and the variance-based head filter "
        "are omitted"
    ),
)


@dataclass(frozen=True)
class Config:
    keep_rate: float = 0.7  # share of the current patch tokens kept at each chosen block
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based
    iterations: tuple[int, ...] = (5, 5, 1)  # WPR iterations, one entry per block

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"
        assert len(set(self.blocks)) == len(self.blocks), "each block at most once"
        assert len(self.iterations) == len(self.blocks), "one iteration count per block"
        assert all(t >= 1 for t in self.iterations), "at least one WPR iteration"


def wpr_iterations(index: int, depth: int) -> int:
    """Iterations for block `index`: many early (30), one in the last three blocks, 5 between."""
    if index < 3:
        return 30
    return 1 if index >= depth - 3 else 5


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three equal stages at 1/4, 1/2 and 3/4 depth leaving ~keep_rate of the patches; identity
    (no pruning block) at keep_rate >= 1."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    if keep_rate >= 1.0:
        return Config(keep_rate=1.0, blocks=(), iterations=())
    blocks = three_stages(depth)
    return Config(
        keep_rate=keep_rate ** (1 / 3),
        blocks=blocks,
        iterations=tuple(wpr_iterations(b, depth) for b in blocks),
    )


def weighted_page_rank(attn: Tensor, iterations: int) -> Tensor:
    """Per-head WPR of the attention graph `attn (B, H, N, N)`: `(B, H, N)`, each summing to 1."""
    B, H, N, _ = attn.shape
    s = attn.new_full((B, H, N, 1), 1.0 / N)  # (B, H, N, 1) uniform start
    shift = attn.transpose(-2, -1)  # (B, H, N, N): A^T
    for _ in range(iterations):
        s = shift @ s  # (B, H, N, 1)
    return s.squeeze(-1)


def token_importance(attn: Tensor, iterations: int) -> Tensor:
    """Importance of the patch tokens: root mean square over heads of their WPR, `(B, N-1)`."""
    s = weighted_page_rank(attn, iterations)[:, :, 1:]  # (B, H, N-1)
    return s.square().mean(dim=1).sqrt()


def zero_tprune(
    x: Tensor, attn: Tensor, k: int, iterations: int, size: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Keep CLS and the `k` most important patch tokens of `x (B, N, C)`; see `tokens.keep_topk`."""
    return keep_topk(x, token_importance(attn, iterations), k, size)


class ZeroTPruneReducer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.iterations = dict(zip(config.blocks, config.iterations, strict=True))

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        assert state.attn is not None, "Zero-TPrune acts between attention and MLP (mid hook)"
        k = kept_count(state.x.shape[1] - 1, self.config.keep_rate)
        x, size, _ = zero_tprune(state.x, state.attn, k, self.iterations[state.index], state.size)
        return x, size


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    with attach(model, mid=dict.fromkeys(config.blocks, ZeroTPruneReducer(config))) as patched:
        yield patched
