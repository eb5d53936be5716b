"""TokenLearner: Adaptive Space-Time Tokenization for Videos (arXiv 2106.11297).

Record `tokenlearner-2021`; official implementation in
https://github.com/google-research/scenic/tree/main/scenic/projects/token_learner (JAX/Flax).
Our own code.

Checked against the official code at commit 4a38d475ee89cb821078c0e2bf2065ee030e1535
(scenic/projects/token_learner/model.py), run in memory outside the project with jax and flax
installed in a scratch environment: `TokenLearnerModuleV11` (the official default, `use_v11=True`
in the model and in configs/im1k_token_learner_config.py) and `TokenLearnerModule` (version 1,
"the module used for the experiments in the paper", sum and mean pooling), each with its Flax
parameters (perturbed by seeded noise so that the near-zero biases count) copied into our
learner, on seeded random patch tokens: 36 cases (batch 1-3, 4x4, 8x8 and 14x14 grids, widths
48-96, S = 5, 8, 16; v1.1, v1 with sum and with mean pooling), all equal to float tolerance
(largest relative difference 7e-7). Fixed by that check: the version 1.1 MLP now uses Flax's
LayerNorm eps (1e-6) and tanh GELU; version 1 now has the official convolutions and sum pooling
(it had shared v1.1's per-token MLP and averaged); the default is version 1.1, as officially.

At one block, the P patch tokens are replaced by S learned tokens. A small network maps each
patch token to S attention logits, giving S spatial attention maps over the P positions; learned
token i is the attention-weighted pooling of the patch tokens under map i. Every later block sees
1 + S tokens (CLS is kept as it is). Two attention forms are provided:

- `"softmax"` (default; the official version 1.1): LayerNorm (eps 1e-6), Dense(C, 64), GELU
  (tanh approximation, Flax's default), Dense(64, S) per token; the S maps are normalised by a
  softmax over space, so each learned token is a convex combination of patch tokens;
- `"sigmoid"` (version 1, the paper's): LayerNorm, three 3x3 convolutions (S channels, no bias,
  each followed by GELU) and a fourth 3x3 convolution over the square patch grid give the maps,
  gated by a sigmoid; the gated patch tokens are summed over space (official
  `use_sum_pooling=True`) or, with `use_sum_pooling=False`, averaged (the paper's "spatial
  pooling").

In both forms the pooled features are the block's input tokens, not the normalised ones.

What is simplified, plainly:

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

from ..families import depth_of
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
        "images only, CLS kept (the official image models pool every token, classifier 'gap'); "
        "no TokenFuser; learner starts random unless trained; its MACs reported separately"
    ),
)

ATTENTION_FORMS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class Config:
    keep_rate: float = 8 / 196  # S = round(keep_rate * P), at least 1 (the paper: 8 or 16)
    blocks: tuple[int, ...] = (6,)  # the block the learner runs before (at most one)
    hidden: int = 64  # hidden width of the v1.1 attention MLP (official bottleneck_dim 64)
    attention: str = "softmax"  # "softmax" (official default v1.1) or "sigmoid" (v1, the paper)
    use_sum_pooling: bool = True  # v1 only: sum the gated tokens (official) or average them
    seed: int = 0  # initialises the learner when `patch` gets none

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_rate <= 1.0, "keep_rate must be in (0, 1]"
        assert len(self.blocks) <= 1 and all(b >= 0 for b in self.blocks), "one 0-based block"
        assert self.hidden >= 1
        assert self.attention in ATTENTION_FORMS, f"attention must be one of {ATTENTION_FORMS}"

    def num_tokens(self, num_patches: int) -> int:
        return max(1, round(self.keep_rate * num_patches))


def config_for(keep_rate: float, model_config: object) -> Config:
    """S = round(keep_rate * P) learned tokens before the middle block; no learner at rate 1."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    if keep_rate >= 1.0:
        return Config(keep_rate=1.0, blocks=())
    return Config(keep_rate=keep_rate, blocks=(depth // 2,))


def attention_weights(logits: Tensor, form: str, use_sum_pooling: bool = True) -> Tensor:
    """Spatial pooling weights `(B, S, P)` from per-token logits `(B, P, S)`."""
    maps = logits.transpose(1, 2)  # (B, S, P)
    if form == "softmax":
        return maps.softmax(dim=-1)
    gates = torch.sigmoid(maps)
    return gates if use_sum_pooling else gates / maps.shape[-1]


class ConvMaps(nn.Module):
    """Version 1's attention logits `(B, P, S)` from patch tokens `(B, P, C)` on a square grid."""

    def __init__(self, width: int, num_tokens: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.convs = nn.ModuleList(
            nn.Conv2d(width if i == 0 else num_tokens, num_tokens, 3, padding=1, bias=False)
            for i in range(4)
        )
        self.act = nn.GELU(approximate="tanh")

    def forward(self, patches: Tensor) -> Tensor:
        B, P, C = patches.shape
        side = round(P**0.5)
        assert side * side == P, f"version 1 needs a square patch grid, got {P} patches"
        h = self.norm(patches).transpose(1, 2).reshape(B, C, side, side)  # (B, C, h, w)
        for i, conv in enumerate(self.convs):
            h = conv(h)  # (B, S, h, w)
            h = self.act(h) if i < 3 else h
        return h.flatten(2).transpose(1, 2)  # (B, P, S)


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
        self.maps: nn.Module
        if config.attention == "softmax":
            self.maps = nn.Sequential(
                nn.LayerNorm(width, eps=1e-6),
                nn.Linear(width, config.hidden),
                nn.GELU(approximate="tanh"),
                nn.Linear(config.hidden, num_tokens),
            )
        else:
            self.maps = ConvMaps(width, num_tokens)

    def weights(self, x: Tensor) -> Tensor:
        """Pooling weights `(B, S, P)` over the patch tokens of `x (B, N, C)`."""
        logits = self.maps(x[:, 1:])  # (B, P, S)
        return attention_weights(logits, self.config.attention, self.config.use_sum_pooling)

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
    """MACs of the attention maps (MLP, or v1's four 3x3 convs) and the pooling, one image."""
    s = config.num_tokens(num_patches)
    if config.attention == "softmax":
        maps = num_patches * (width * config.hidden + config.hidden * s)
    else:
        maps = num_patches * 9 * (width * s + 3 * s * s)
    return maps + s * num_patches * width
