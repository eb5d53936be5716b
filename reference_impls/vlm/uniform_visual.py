"""Uniform (strided) visual-token dropping before the language model (a baseline).

No official code: a baseline written from its description, following no released
implementation.

Not a paper's method: keep `k = round(keep * n)` of the `n` patch tokens at evenly spaced
positions `floor(i * n / k)`, `i = 0..k-1` (row-major order over the patch grid; for `k = n / s`
this is every s-th token), and project only those. Uses no content at all.

Shapes: patch features `(B, n, C_vis)`; kept positions `(k,)`, the same for every image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, VisualState, attach

IMPL = ImplInfo(
    name="uniform_visual",
    title="Evenly spaced visual tokens kept before the LLM (baseline)",
    papers=(),
    family="pruning",
    training_free=True,
    arxiv=None,
    simplified="nothing: a baseline with no paper to follow",
)


@dataclass(frozen=True)
class Config:
    keep: float = 0.25  # share of the patch tokens kept

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(keep=min(1.0, keep))


def uniform_positions(n: int, k: int, device: torch.device | None = None) -> Tensor:
    """`floor(i * n / k)` for `i = 0..k-1`: `k` distinct ascending positions in `[0, n)`."""
    assert 1 <= k <= n
    return torch.arange(k, device=device) * n // k


class UniformReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        n = state.features.shape[1]
        k = max(1, min(n, round(self.config.keep * n)))
        return state.project(state.features[:, uniform_positions(n, k, state.features.device)])


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = UniformReducer(config) if config.keep < 1.0 else None
    with attach(model, visual=reducer) as patched:
        yield patched
