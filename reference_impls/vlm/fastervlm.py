"""FasterVLM: [CLS] Attention is All You Need for Training-Free Visual Token Pruning: Make VLM
Inference Faster (arXiv 2412.01818).

Checked against the official repository Theia-4869/FasterVLM (`clip_encoder.py`,
`llava_arch.py: encode_images`); no code was taken from it. The image tokens are ranked by the
attention the [CLS] token pays them in the encoder block whose output LLaVA reads (CLIP's layer
-2), averaged over heads; the top `round(keep * n)` are kept, in their original order, and only
they are projected and spliced into the language model's input. The pruned tokens never reach the
language model.

Simplified: nothing of the algorithm. With several views (LLaVA-NeXT-style crops) the scores of
all views are ranked together. The count is `round(keep * n)`, at least one (the official code
takes a configured absolute count).

Shapes: patch features `(B, n, C_vis)`; scores `(B, n)`; kept `(B, k)`.

Record: `fastervlm-2024` in papers/.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, VisualState, attach
from .select import gather, top_in_order

IMPL = ImplInfo(
    name="fastervlm",
    title="FasterVLM: keep the patches the encoder's [CLS] attends to most, before the LLM",
    papers=("fastervlm-2024",),
    family="pruning",
    training_free=True,
    arxiv="2412.01818",
    simplified="none of the algorithm; the kept count is a share of the patches",
)


@dataclass(frozen=True)
class Config:
    keep: float = 0.25  # share of the image tokens kept (the paper reports 75/90/95% reduction)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(keep=min(1.0, keep))


def kept_count(n: int, keep: float) -> int:
    return max(1, min(n, round(keep * n)))


def fastervlm_select(features: Tensor, cls_attn: Tensor, k: int) -> Tensor:
    """The `k` patch tokens of `features (B, n, C)` with the largest `cls_attn (B, H, n)`
    (averaged over heads), in their original order: `(B, k, C)`."""
    return gather(features, top_in_order(cls_attn.mean(dim=1), k))


class FasterVLMReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        k = kept_count(state.features.shape[1], self.config.keep)
        return state.project(fastervlm_select(state.features, state.cls_attention(), k))


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = FasterVLMReducer(config) if config.keep < 1.0 else None
    with attach(model, visual=reducer) as patched:
        yield patched
