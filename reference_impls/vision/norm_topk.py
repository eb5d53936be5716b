"""Top-k by token norm: keep the patch tokens with the largest L2 norm (a baseline).

No official code: a baseline written from its description, following no released
implementation.

Not a paper's method: a cheap importance proxy that needs no attention map, used as a control
(large-norm tokens are often, but not always, the informative ones). Applied between attention and
MLP of the chosen blocks, like EViT.

Shapes: tokens `(B, N, C)`, CLS at index 0 always kept.
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
    name="norm_topk",
    title="Top-k tokens by L2 norm (baseline)",
    papers=(),
    family="pruning",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    keep_rate: float = 0.7
    blocks: tuple[int, ...] = (3, 6, 9)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three equal pruning stages at 1/4, 1/2 and 3/4 depth leaving ~keep_rate of the patches."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    return Config(keep_rate=keep_rate ** (1 / 3), blocks=three_stages(depth))


def norm_topk(
    x: Tensor, k: int, size: Tensor | None = None, num_prefix: int = 1
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Keep the prefix and the `k` other tokens of largest L2 norm; see `tokens.keep_topk`."""
    scores = x[:, num_prefix:].norm(dim=-1)  # (B, N - prefix)
    return keep_topk(x, scores, k, size, num_prefix)


class NormTopK:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        k = kept_count(state.x.shape[1] - 1, self.config.keep_rate)
        x, size, _ = norm_topk(state.x, k, state.size)
        return x, size


@contextmanager
def patch(model: VisionTransformer, config: Config = Config()) -> Iterator[VisionTransformer]:
    with attach(model, mid=dict.fromkeys(config.blocks, NormTopK(config))) as patched:
        yield patched
