"""VisionZip: Longer is Better but Not Necessary in Vision Language Models (arXiv 2412.04467).

Official code: dvlab-research/VisionZip@3151f6df4fca36a4cd1c985e5956e725b1f9ad02
(`visionzip/clip_encoder.py: CLIPVisionTower_VisionZip.forward`, with `utils.py`'s head-averaged
keys as the metric and `main.py`'s `dominant_num = dominant - 1`), run in memory outside the
project with a stubbed vision tower fed our tiny LLaVA's block attention, hidden states and keys:
equal (max abs diff 0) on 60 seeded cases (6 seeds; B 1 and 3; dominant/contextual 54/10, 10/2,
2/1, 30/30, 60/4 of 64 patches). No code was taken from it.

In the encoder block whose output LLaVA reads (CLIP's layer -2):

1. dominant tokens: the [CLS] token and the `d - 1` patches with the largest [CLS] attention,
   summed over heads (`d` dominant tokens in all, CLS counted as one, as `visionzip(model,
   dominant=54, contextual=10)` does), in their original order;
2. contextual tokens: the remaining `r` patches, ordered, are compared through their keys
   (the block's keys averaged over heads, L2-normalised); `c` targets are every `max(1, r // c)`-th
   remaining token (the first `c` of them); each other remaining token joins the target with the
   largest cosine similarity; a contextual token is `target + mean(tokens that joined it)` (the
   target itself is added to the mean, not averaged in, as in the official code);
3. the `d + c` tokens (dominant first) are projected and replace the image in the prompt.

Simplified: nothing of the training-free algorithm (VisionZip also offers an optional projector
fine-tuning, not reproduced). One view only (the official multi-view path,
`encode_images_visionzip_multi`, is not reproduced). Counts: the official absolute `dominant`
(CLS included) and `contextual` when given (the official defaults are 191 and 30 of 576);
otherwise from a share of the patches, `d + c = max(2, round(keep * n))` with
`c = max(1, round((d + c) * contextual_share))`.

Shapes: encoder tokens `(B, 1+n, C_vis)` with CLS first; keys `(B, 1+n, D)`; output
`(B, d + c, C_vis)` before the projector.

Record: `visionzip-2024` in papers/.
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
from .llava import Llava, VisualState, attach
from .select import complement, gather, top_in_order

IMPL = ImplInfo(
    name="visionzip",
    title="VisionZip: CLS-attention dominant tokens plus key-similarity contextual merges",
    papers=("visionzip-2024",),
    family="prune-merge",
    training_free=True,
    arxiv="2412.04467",
    simplified="one view only; counts from a share of the patches; optional fine-tuning omitted",
)


@dataclass(frozen=True)
class Config:
    keep: float = 64 / 576  # (dominant + contextual) / patches: 54 + 10 of 576 in the README
    contextual_share: float = 10 / 64  # contextual / (dominant + contextual)
    dominant: int | None = None  # official: dominant tokens, CLS included (overrides keep)
    contextual: int | None = None  # official: contextual tokens (with `dominant`)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"
        assert 0.0 < self.contextual_share < 1.0, "contextual_share must be in (0, 1)"
        assert (self.dominant is None) == (self.contextual is None), (
            "give both dominant and contextual, or neither"
        )
        assert self.dominant is None or self.dominant >= 1, "dominant counts CLS: at least 1"
        assert self.contextual is None or self.contextual >= 1, "contextual must be positive"

    @property
    def is_identity(self) -> bool:
        return self.keep >= 1.0 and self.dominant is None


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(keep=min(1.0, keep))


def counts(n: int, config: Config) -> tuple[int, int]:
    """(dominant tokens including CLS, contextual tokens) for `n` patches."""
    if config.dominant is not None and config.contextual is not None:
        assert config.dominant - 1 + config.contextual <= n, (
            f"dominant - 1 + contextual must not exceed the {n} patches"
        )
        return config.dominant, config.contextual
    total = max(2, min(n, round(config.keep * n)))
    contextual = max(1, min(total - 1, round(total * config.contextual_share)))
    return total - contextual, contextual


def visionzip_tokens(
    tokens: Tensor, cls_attn: Tensor, keys: Tensor, dominant: int, contextual: int
) -> Tensor:
    """`tokens (B, 1+n, C)` (CLS first), `cls_attn (B, H, n)`, `keys (B, 1+n, D)` to the
    `dominant + contextual` VisionZip tokens `(B, d + c, C)`."""
    B, N1, _ = tokens.shape
    n = N1 - 1
    top = top_in_order(cls_attn.sum(dim=1), dominant - 1) + 1  # (B, d-1) token indices
    kept = torch.cat([top.new_zeros(B, 1), top], dim=1)  # (B, d) CLS first, then in order
    rest = complement(kept, N1)  # (B, r) remaining patches, in order
    r = n - (dominant - 1)
    assert contextual <= r, f"{contextual} contextual tokens need as many of {r} remaining"
    step = max(1, r // contextual)
    targets = torch.arange(0, r, step, device=tokens.device)[:contextual]  # (c,) into `rest`
    others = complement(targets.expand(B, -1), r)  # (B, r - c) into `rest`
    metric = F.normalize(gather(keys, rest), dim=-1)  # (B, r, D)
    rest_tokens = gather(tokens, rest)  # (B, r, C)
    target_index = targets.expand(B, -1)
    similarity = gather(metric, others) @ gather(metric, target_index).transpose(1, 2)  # (B,r-c,c)
    assign = F.one_hot(similarity.argmax(dim=-1), contextual).to(tokens.dtype)  # (B, r-c, c)
    size = assign.sum(dim=1).clamp_min(1).unsqueeze(-1)  # (B, c, 1)
    merged = assign.transpose(1, 2) @ gather(rest_tokens, others) / size  # (B, c, C)
    return torch.cat([gather(tokens, kept), gather(rest_tokens, target_index) + merged], dim=1)


class VisionZipReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        assert state.views == 1, "VisionZip here handles one view"
        block = state.block
        dominant, contextual = counts(state.features.shape[1], self.config)
        tokens = visionzip_tokens(
            state.vision.hidden[block + 1],
            state.cls_attention(),
            state.vision.keys[block],
            dominant,
            contextual,
        )
        return state.project(tokens)


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = None if config.is_identity else VisionZipReducer(config)
    with attach(model, visual=reducer) as patched:
        yield patched
