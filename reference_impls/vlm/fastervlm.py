"""FasterVLM: [CLS] Attention is All You Need for Training-Free Visual Token Pruning: Make VLM
Inference Faster (arXiv 2412.01818).

The image tokens are ranked by the attention the [CLS] token pays them in the encoder block whose
output LLaVA reads (CLIP's layer -2: `attentions[select_layer][:, :, 0, 1:]`, the softmax row
taken over CLS and all patches), averaged over heads; the top `k` are kept, in their original
order, and only they reach the language model. With several views (LLaVA-NeXT-style crops) each
view is ranked on its own and keeps `k` tokens, as the official `encode_images` does on the
concatenated views (`per_view=True`); `per_view=False` ranks all views' scores together (`k` of
all `V*n` tokens).

Official code: Theia-4869/FasterVLM@f5d5f12037e105a51865ecb4b28a73cd86eb4921
(`llava/model/llava_arch.py: encode_images`, `clip_encoder.py: feature_select`), run in memory
outside the project on our tiny LLaVA's encoder attention, features and projector (stubbed
vision tower and `mm_projector`): the same tokens kept and the projected outputs equal to
float tolerance (max abs diff 4e-6) on 36 seeded cases (3 seeds; B 1 and 3; 1 and 5 views; k 1,
16, 64 of 64). The official code projects every patch and then masks (the same for a per-token
projector); we project only the kept ones. No code was taken from it.

Options (official names): `visual_token_num`, the official absolute count per view (overrides
`keep`; `None` uses `round(keep * n)`, at least one). Ties: the earlier token wins (the official
`torch.topk` leaves ties to the backend; random scores have none).

Simplified: nothing of the algorithm. The layout of LLaVA-NeXT's crops (spatial unpadding,
newline tokens) is the model's (`llava.py`), not the method's.

Shapes: patch features `(B, V*n, C_vis)`; scores `(B, H, V*n)`; kept `(B, V*k, C_vis)`.

Record: `fastervlm-2024` in papers/.
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
from .select import gather, top_in_order

IMPL = ImplInfo(
    name="fastervlm",
    title="FasterVLM: keep the patches the encoder's [CLS] attends to most, before the LLM",
    papers=("fastervlm-2024",),
    family="pruning",
    training_free=True,
    arxiv="2412.01818",
    simplified="none of the algorithm",
)


@dataclass(frozen=True)
class Config:
    keep: float = 0.25  # share of the image tokens kept (the paper reports 75/90/95% reduction)
    visual_token_num: int | None = None  # official: absolute count kept per view (overrides keep)
    per_view: bool = True  # official: rank each view on its own; False: all views together

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert self.visual_token_num is None or self.visual_token_num >= 1, (
            "visual_token_num must be at least 1"
        )

    @property
    def is_identity(self) -> bool:
        return self.keep >= 1.0 and self.visual_token_num is None


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(keep=min(1.0, keep))


def kept_count(n: int, keep: float, visual_token_num: int | None = None) -> int:
    """Tokens kept of `n`: `visual_token_num` if given, else `round(keep * n)`; in `[1, n]`."""
    want = visual_token_num if visual_token_num is not None else round(keep * n)
    return max(1, min(n, want))


def fastervlm_select(features: Tensor, cls_attn: Tensor, k: int, views: int = 1) -> Tensor:
    """The `k` patch tokens of each of the `views` views of `features (B, V*n, C)` with the
    largest `cls_attn (B, H, V*n)` (averaged over heads), in their original order, views in
    order: `(B, V*k, C)`. With `views=1` the `k` best of all tokens."""
    B, N, _ = features.shape
    n = N // views
    score = cls_attn.mean(dim=1).reshape(B, views, n)  # (B, V, n)
    local = top_in_order(score, k)  # (B, V, k) positions within each view
    offset = torch.arange(views, device=local.device)[None, :, None] * n
    return gather(features, (local + offset).flatten(1))


class FasterVLMReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        c = self.config
        views = state.views if c.per_view else 1
        n = state.features.shape[1] // views
        k = kept_count(n, c.keep, c.visual_token_num)
        return state.project(fastervlm_select(state.features, state.cls_attention(), k, views))


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = None if config.is_identity else FasterVLMReducer(config)
    with attach(model, visual=reducer) as patched:
        yield patched
