"""TokenLearner: Adaptive Space-Time Tokenization for Videos (arXiv 2106.11297).

Record `tokenlearner-2021`; checked against the official implementation in
https://github.com/google-research/scenic/tree/main/scenic/projects/token_learner (model.py:
TokenLearnerModule and TokenLearnerModuleV11). Our own code.

At one block, the P patch tokens are replaced by S learned tokens. A small network maps each
patch token to S attention logits, giving S spatial attention maps over the P positions; learned
token i is the attention-weighted pooling of the patch tokens under map i. Every later block sees
1 + S tokens (CLS is kept as it is). Two attention forms are provided:

- `"sigmoid"` (the paper's): weights `sigmoid(a) / P`, i.e. spatial average pooling of the
  patch tokens gated by a sigmoid map (the official version 1 code sums instead of averaging);
- `"softmax"` (the official version 1.1): weights normalised by a softmax over space, so each
  learned token is a convex combination of patch tokens.

What is simplified, plainly:

- The attention logits come from a per-token MLP (LayerNorm, Linear(C, hidden), GELU,
  Linear(hidden, S)) as in the official version 1.1, for both forms; the paper's version uses
  3x3 convolutions over the patch grid, which see neighbouring tokens.
- Images only (one frame); CLS is kept and passed through (the paper's image models pool without
  a class token). TokenFuser (the paper's optional remapping back to the patch grid) is left out.
- The learner starts random unless a trained one is passed to `patch`; its MACs are not in
  `macs.vit_macs` (`learner_macs` reports them).
- A size vector, if present, restarts at 1 for the learned tokens: they are not averages with a
  patch count, and the paper uses plain attention over them.

Shapes: tokens `(B, N, C)`, CLS at index 0; patches `(B, P, C)`, P = N - 1; attention weights
`(B, S, P)`; output `(B, 1 + S, C)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import ImplInfo
from .adapter import attach
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="tokenlearner",
    title="TokenLearner: S learned tokens pooled by spatial attention maps",
    papers=("tokenlearner-2021",),
    family="learned-compression",
    training_free=False,
    arxiv="2106.11297",
    simplified=(
        "attention maps from a per-token MLP (the paper's version uses 3x3 convs); images only, "
        "CLS kept; no TokenFuser; learner starts random unless trained; its MACs reported "
        "separately"
    ),
)

ATTENTION_FORMS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class Config:
    keep_rate: float = 8 / 196  # S = round(keep_rate * P), at least 1 (the paper: 8 or 16)
    blocks: tuple[int, ...] = (6,)  # the block the learner runs before (at most one)
    hidden: int = 64  # hidden width of the attention MLP (official v1.1: 64)
    attention: str = "sigmoid"  # "sigmoid" (paper) or "softmax" (official v1.1)
    seed: int = 0  # initialises the learner when `patch` gets none

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"
        assert len(self.blocks) <= 1 and all(b >= 0 for b in self.blocks), "one 0-based block"
        assert self.hidden >= 1
        assert self.attention in ATTENTION_FORMS, f"attention must be one of {ATTENTION_FORMS}"

    def num_tokens(self, num_patches: int) -> int:
        return max(1, round(self.keep_rate * num_patches))


def config_for(keep_rate: float, depth: int) -> Config:
    """S = round(keep_rate * P) learned tokens before the middle block; no learner at rate 1."""
    if keep_rate >= 1.0:
        return Config(keep_rate=1.0, blocks=())
    return Config(keep_rate=keep_rate, blocks=(depth // 2,))


def attention_weights(logits: Tensor, form: str) -> Tensor:
    """Spatial pooling weights `(B, S, P)` from per-token logits `(B, P, S)`."""
    maps = logits.transpose(1, 2)  # (B, S, P)
    if form == "softmax":
        return maps.softmax(dim=-1)
    return torch.sigmoid(maps) / maps.shape[-1]


def learn_tokens(x: Tensor, weights: Tensor) -> Tensor:
    """CLS then the S pooled tokens: `x (B, N, C)`, `weights (B, S, N-1)` -> `(B, 1+S, C)`."""
    pooled = weights @ x[:, 1:]  # (B, S, C)
    return torch.cat([x[:, :1], pooled], dim=1)


class TokenLearner(nn.Module):
    """The reducer: the attention MLP and the pooling, attached before one block."""

    def __init__(self, width: int, num_tokens: int, config: Config) -> None:
        super().__init__()
        self.config = config
        self.num_tokens = num_tokens
        self.maps = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, num_tokens),
        )

    def weights(self, x: Tensor) -> Tensor:
        """Pooling weights `(B, S, P)` over the patch tokens of `x (B, N, C)`."""
        return attention_weights(self.maps(x[:, 1:]), self.config.attention)

    def forward(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        x = learn_tokens(state.x, self.weights(state.x))  # (B, 1+S, C)
        size = None if state.size is None else x.new_ones(x.shape[0], x.shape[1], 1)
        return x, size


def make_learner(model: VisionTransformer, config: Config) -> TokenLearner:
    """A learner initialised from `config.seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        learner = TokenLearner(
            model.config.width, config.num_tokens(model.config.num_patches), config
        )
    return learner.to(model.pos_embed.device).train(model.training)


@contextmanager
def patch(
    model: VisionTransformer, config: Config = Config(), learner: TokenLearner | None = None
) -> Iterator[VisionTransformer]:
    """Attach `learner` (a fresh seeded one if None) before the block of `config`."""
    learner = make_learner(model, config) if learner is None else learner
    assert learner.config == config, "the learner was built for another config"
    # The bound method, not the module, so the model does not register it as a submodule.
    with attach(model, pre=dict.fromkeys(config.blocks, learner.forward)) as patched:
        yield patched


def training_loss(
    model: VisionTransformer, learner: TokenLearner, images: Tensor, labels: Tensor
) -> Tensor:
    """Cross-entropy of the model with the learner attached, for one batch."""
    with patch(model, learner.config, learner):
        logits = model(images)
    return F.cross_entropy(logits, labels)


def train_step(
    model: VisionTransformer,
    learner: TokenLearner,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
) -> float:
    """One optimisation step of the backbone and the learner; returns the loss."""
    optimizer.zero_grad()
    loss = training_loss(model, learner, images, labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def learner_macs(width: int, num_patches: int, config: Config) -> int:
    """MACs of the attention MLP and the pooling for one image."""
    s = config.num_tokens(num_patches)
    return num_patches * (width * config.hidden + config.hidden * s) + s * num_patches * width
