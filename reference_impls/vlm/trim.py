"""TRIM: Less is More: A Simple yet Effective Token Reduction Method for Efficient Multi-modal
LLMs (Token Reduction using CLIP Metric, arXiv 2409.10994).

Official code: FreedomIntelligence/TRIM@f5a232d51eb6279354d9a5c07f0bb5539fec2fd0
(`llava/model/multimodal_encoder/clip_encoder.py`, `CLIPVisionTower.token_reduction`); no code
was taken from it. Checked in memory: the official `token_reduction` (CLIP's post-layernorm and
visual projection stubbed by identities, so both sides score the same joint-space features)
against `trim_scores` + `kept_count` + `trim_tokens` on 40 seeded cases (batch 1-3, 17-576
tokens, `TRIM:-1` adaptive and fixed 0.1/0.25/0.5, float64): the same counts and tokens, equal
to 4.4e-16. Fixed after the check: the official sign is the default (`negate=True`) and an
adaptive count of zero keeps no token but the average, as officially. Before the projector,
guided by the question:

1. similarity: each image token's feature in CLIP's joint space against the question's CLIP text
   embedding (dot products), turned into a distribution over the image tokens by a softmax;
2. adaptive count: `k = int(n * outliers / n)`, the outliers being the scores above `Q3 + 1.5 *
   IQR` (interquartile range); the `k` best tokens are kept in their original order;
3. the tokens not kept are averaged into one token appended after them, so `k + 1` tokens are
   projected (`Config.adaptive = False` keeps `int(n * keep)` instead).

Simplified: the tiny model has no CLIP text tower and no joint space, so a stand-in plays their
part: the question embedding is the mean of the language model's input embeddings of the suffix
tokens, and an image token's joint-space feature is its projected (language-model-space) token;
the selection and the average are still taken on the vision features, as officially. Paper and
code disagree on the sign: the official code negates the similarities before the softmax, so its
outlier test keeps the tokens *least* aligned with the question; that is the default here
(`negate=True`), since the paper's numbers came from that code. `negate=False` keeps the most
aligned tokens, as the paper's motivation (keep the tokens relevant to the question) reads. The
paper instruction-tunes LLaVA with TRIM in place; here it is applied to a given model. Quartiles
over a whole batch, as the official code (it flattens the batch). Ties keep the earlier token
(the official `topk` leaves them to the backend); when every token is kept no average is added
(the official code then fails with an index error).

Shapes: patch features `(B, n, C_vis)`; joint-space tokens `(B, n, C)`; question `(B, C)`;
scores `(B, n)`; output `(B, k + 1, C_vis)` before the projector.

Record: `trim-2024` in papers/.
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
from .select import complement, gather, iqr_outliers, top_in_order

IMPL = ImplInfo(
    name="trim",
    title="TRIM: question-image similarity, IQR outliers kept, the rest averaged into one token",
    papers=("trim-2024",),
    family="prune-merge",
    training_free=True,
    arxiv="2409.10994",
    simplified=(
        "no CLIP text tower: question = mean input embedding, image tokens scored in the "
        "projected space; no instruction tuning"
    ),
)


@dataclass(frozen=True)
class Config:
    adaptive: bool = True  # IQR outlier count (True) or `int(n * keep)` (False)
    keep: float = 0.21  # share kept when not adaptive (the paper reports ~79% fewer tokens)
    negate: bool = True  # the official code's sign; False: the most aligned tokens (docstring)

    def __post_init__(self) -> None:
        assert 0.0 < self.keep <= 1.0, "keep must be in (0, 1]"

    @property
    def identity(self) -> bool:
        return not self.adaptive and self.keep >= 1.0


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    return Config(adaptive=False, keep=min(1.0, keep))


def trim_scores(joint: Tensor, question: Tensor, negate: bool = False) -> Tensor:
    """Softmax over the image tokens of `joint (B, n, C) @ question (B, C)`: `(B, n)`."""
    similarity = (joint @ question.unsqueeze(-1)).squeeze(-1)  # (B, n)
    return (-similarity if negate else similarity).softmax(dim=-1)


def kept_count(scores: Tensor, config: Config) -> int:
    n = scores.shape[1]
    ratio = iqr_outliers(scores) / scores.numel() if config.adaptive else config.keep
    return min(n, int(n * ratio))  # 0 (no outlier): only the average token, as officially


def trim_tokens(features: Tensor, scores: Tensor, k: int) -> Tensor:
    """The `k` best-scored tokens of `features (B, n, C)` in order, then the mean of the others
    (none when all are kept): `(B, k + 1, C)`."""
    kept = top_in_order(scores, k)  # (B, k)
    out = gather(features, kept)
    if k == features.shape[1]:
        return out
    rest = gather(features, complement(kept, features.shape[1])).mean(dim=1, keepdim=True)
    return torch.cat([out, rest], dim=1)


class TRIMReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: VisualState) -> Tensor:
        question = state.model.llm.embed_tokens(state.suffix).mean(dim=1)  # (B, C)
        joint = state.project(state.features)  # (B, n, C) the stand-in joint space
        scores = trim_scores(joint, question, self.config.negate)
        k = kept_count(scores, self.config)
        return state.project(trim_tokens(state.features, scores, k))


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    reducer = None if config.identity else TRIMReducer(config)
    with attach(model, visual=reducer) as patched:
        yield patched
