"""A-ViT: Adaptive Tokens for Efficient Vision Transformer (arXiv 2112.07658).

Record `avit-2022`; official repository https://github.com/NVlabs/A-ViT. Our own code.

Checked against the official code at commit 120c9cb90acf86828f1c61dd42c08722aa7173c7, run in
memory outside the project: `VisionTransformer.forward_features_act_token`
(timm/models/act_vision_transformer.py) driven by stub blocks that return preset seeded halting
scores, against our `halting_step` (30 cases: batch 1-3, 16-196 patches, depth 4 and 12, scores
uniform or skewed towards 0). The set of halted patch tokens before every block is identical in
all cases, and each token's ponder (`rho_token`: blocks run plus the remainder at its halt, the
last block forcing a halt) equals ours to float tolerance (largest difference 1e-6). The gate
`sigmoid(gate_scale * x[..., 0] - gate_center)` and the README's DeiT-T settings (gate_scale 10,
gate_center 30, ponder_token_scale 5e-4, distr_prior_alpha 1e-3, eps 0.01) are our defaults.
Documented differences, beside the simplifications below: at a cumulative score of exactly
`1 - eps` the official code masks the token without adding its remainder (we add it; a
measure-zero event); the official distributional prior averages the halting scores of every token
(CLS and already halted ones too) with `torch.mean(h[1:])`, which drops the batch's first image
rather than CLS (NaN at batch size 1), and compares them with a Gaussian pdf over all 12 blocks
scaled so that the blocks before the target depth sum to 0.98 (utils.get_distribution_target),
KL averaged over the blocks (`KLDivLoss(reduction="batchmean")`). Ours: the running patch tokens'
mean, a normalised Gaussian over the hooked blocks, the KL summed. The official code masks halted
tokens in inference too (features zeroed, attention bias -1000); ours removes them in eval mode,
which other tokens cannot tell apart (their weight on a masked key is about e^-1000).

Adaptive Computation Time per token: after every block each patch token k gets a halting score
`h = sigmoid(gamma * t_k[0] + beta)` from the first channel of its own embedding (no extra
parameters; gamma and beta are constants), added to a cumulative score. A token halts once the
cumulative score reaches `1 - eps`: in inference it is removed, in training it is masked out of
attention. Halting is adaptive, so images keep different numbers of tokens.

Training terms: the ponder loss, the mean over tokens of `N_k + r_k` (blocks a token ran plus
its remainder `r_k = 1 - sum of its earlier halting scores`), which is what makes halting
differentiable, plus a distributional prior, a KL divergence pulling the per-block mean halting
score towards a Gaussian over depth. The backbone learns to halt through these terms.

Batching (our choice): each image keeps exactly its own running tokens, in order; images with
fewer running tokens than the most of the batch are padded with some of their own halted tokens
at size 0 (attention gives them -inf; their accumulators stay frozen). After a check the batch
holds 1 + the largest running count among its images; with one image per batch that is exact.

What is simplified, plainly:

- CLS never halts and the classifier reads its last-block output; the paper also halts the class
  token and reads its halting-weighted (mean-field) output. Patch-token halting is as the paper.
- Halting is evaluated before blocks 1 .. depth-1 (the output of the previous block); the last
  block's output is not hooked, so the forced halt there is accounted for in `ponder_loss`
  (tokens still running ran every block and pay their remainder), and the distributional prior
  covers the hooked blocks only, with a normalised discrete Gaussian as target (the official
  target is rescaled differently and the last block's scores are included).
- `config_for` cannot know where a trained model halts; it sets beta so that a token whose first
  channel is 0 halts after `keep_rate` of the hooked blocks, and the prior's target depth to the
  same block. On an untrained model the counts are whatever the first channels make them.

Shapes: tokens `(B, N, C)`, CLS at index 0; per-token accumulators `(B, P)` over the P = N - 1
original patch positions; `positions (B, n)` maps the current n patch tokens to those.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..families import depth_of
from ..registry import ImplInfo
from .adapter import attach
from .tokens import keep_topk
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="avit",
    title="A-ViT: adaptive per-token halting (ACT) with ponder loss",
    papers=("avit-2022",),
    family="pruning",
    training_free=False,
    arxiv="2112.07658",
    simplified=(
        "CLS never halts and is read from the last block (no mean-field class output); "
        "halting evaluated before blocks 1..depth-1; distributional prior over those blocks with "
        "a normalised Gaussian target; batches padded with size-0 halted tokens"
    ),
)


@dataclass(frozen=True)
class Config:
    gamma: float = 10.0  # scale of the halting gate (official README: gate_scale 10)
    beta: float = -30.0  # its bias (official README: -gate_center, 30 for DeiT-T, 75 for DeiT-S)
    eps: float = 0.01  # a token halts once its cumulative score reaches 1 - eps
    blocks: tuple[int, ...] = tuple(range(1, 12))  # halting evaluated before these blocks
    ponder_weight: float = 5e-4  # official README: ponder_token_scale 0.0005
    prior_weight: float = 1e-3  # official README: distr_prior_alpha 0.001
    target_depth: float = 8.0  # mean (0-based block) of the Gaussian halting prior

    def __post_init__(self) -> None:
        assert self.gamma >= 0.0 and math.isfinite(self.beta)
        assert 0.0 < self.eps < 1.0, "eps must be in (0, 1)"
        assert all(b >= 1 for b in self.blocks), "halting needs a block output: blocks from 1"
        assert list(self.blocks) == sorted(set(self.blocks)), "blocks must be strictly increasing"
        assert self.ponder_weight >= 0.0 and self.prior_weight >= 0.0


def config_for(keep_rate: float, model_config: object) -> Config:
    """Halting before every block from 1 on; a neutral token (first channel 0) halts after
    `keep_rate` of them. No halting at all at rate 1."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    if keep_rate >= 1.0:
        return Config(blocks=())
    blocks = tuple(range(1, depth))
    m = max(1, round(keep_rate * len(blocks)))  # evaluations until a neutral token halts
    beta = -math.log(m - 1) if m > 1 else 10.0  # sigmoid(beta) = 1/m: m * (1/m) >= 1 - eps
    return Config(beta=beta, blocks=blocks, target_depth=float(blocks[m - 1] - 1))


@dataclass
class Halting:
    """Per-token accumulators over the original patch positions, all `(B, P)`."""

    cumulative: Tensor  # sum of halting scores so far
    remainder: Tensor  # 1 - sum of halting scores before the halting block
    ponder: Tensor  # blocks run so far, plus the remainder once halted
    running: Tensor  # bool: not halted yet

    @staticmethod
    def start(x: Tensor) -> Halting:
        """Nothing halted yet, for the patch tokens of `x (B, N, C)`."""
        zeros = x.new_zeros(x.shape[0], x.shape[1] - 1)  # (B, P)
        return Halting(zeros, zeros + 1.0, zeros, zeros.bool().logical_not())


def halting_scores(x: Tensor, gamma: float, beta: float) -> Tensor:
    """`sigmoid(gamma * x[..., 0] + beta)` of the patch tokens of `x (B, N, C)`: `(B, N-1)`."""
    return torch.sigmoid(gamma * x[:, 1:, 0] + beta)


def halting_step(state: Halting, h: Tensor, blocks_run: int, eps: float) -> Halting:
    """One ACT update with halting scores `h (B, P)` after `blocks_run` more blocks.

    Running tokens add `blocks_run` to their ponder and `h` to their cumulative score; those that
    reach `1 - eps` halt and add their remainder; the others take `h` off their remainder.
    """
    running = state.running.to(h.dtype)
    cumulative = state.cumulative + h * running
    halts = state.running & (cumulative >= 1.0 - eps)
    goes_on = state.running & ~halts
    ponder = state.ponder + blocks_run * running + state.remainder * halts
    remainder = state.remainder - h * goes_on
    return Halting(cumulative, remainder, ponder, goes_on)


def drop_halted(
    x: Tensor, size: Tensor | None, positions: Tensor, running: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Inference: keep each image's running tokens, padded to the batch's largest count.

    `x (B, 1+n, C)`, `positions (B, n)` (original index of each patch token), `running (B, P)`.
    Returns `(x (B, 1+k, C), size (B, 1+k, 1), positions (B, k))`; padding tokens (halted) have
    size 0, so attention ignores them.
    """
    alive = running.gather(1, positions)  # (B, n)
    n = alive.shape[1]
    k = int(alive.sum(dim=1).max().item()) if n else 0
    order = torch.arange(n, 0, -1, device=x.device) / (n + 1)  # earlier first among ties
    x, size, kept = keep_topk(x, alive.to(x.dtype) + order, k, size)
    flags = torch.cat([alive.new_ones(x.shape[0], 1), alive.gather(1, kept)], dim=1)  # (B, 1+k)
    mask = flags.to(x.dtype).unsqueeze(-1)  # (B, 1+k, 1)
    return x, (mask if size is None else size * mask), positions.gather(1, kept)


def training_mask(size: Tensor | None, running: Tensor) -> Tensor:
    """Training: size `(B, N, 1)` that masks halted tokens out of attention (CLS kept).

    `running (B, N-1)` is 1.0 for running tokens, 0.0 for halted ones."""
    flags = torch.cat([running.new_ones(running.shape[0], 1), running], dim=1)  # (B, N)
    mask = flags.unsqueeze(-1)  # (B, N, 1)
    return mask if size is None else size * mask


def gaussian_prior(layers: list[int], mean: float, device: torch.device) -> Tensor:
    """A discrete Gaussian (std 1) over the given block indices, summing to 1."""
    at = torch.tensor(layers, dtype=torch.float32, device=device)
    weights = torch.exp(-0.5 * (at - mean) ** 2)
    return weights / weights.sum()


class AViT(nn.Module):
    """The reducer: halting accumulators per forward, and the training terms.

    No parameters: A-ViT halts from the first embedding channel, so the backbone is what
    learns. In train mode halted tokens are masked; in eval mode they are removed.
    """

    def __init__(self, depth: int, config: Config) -> None:
        super().__init__()
        self.config = config
        self.depth = depth
        self.halting: Halting | None = None
        self.positions: Tensor | None = None  # (B, n) original index of each patch token
        self.last_block = 0
        self.mean_scores: list[Tensor] = []  # mean halting score per hooked block (prior)

    def forward(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        c = self.config
        x, size = state.x, state.size
        B, N, _ = x.shape
        if state.index == c.blocks[0]:
            self.halting = Halting.start(x)
            self.positions = torch.arange(N - 1, device=x.device).expand(B, -1)
            self.last_block, self.mean_scores = 0, []
        assert self.halting is not None and self.positions is not None
        h = torch.zeros_like(self.halting.cumulative).scatter(
            1, self.positions, halting_scores(x, c.gamma, c.beta)
        )  # (B, P): scores of the present tokens at their original positions
        self.mean_scores.append((h * self.halting.running).mean())
        self.halting = halting_step(self.halting, h, state.index - self.last_block, c.eps)
        self.last_block = state.index
        if self.training:
            return x, training_mask(size, self.halting.running.to(x.dtype))
        x, size, self.positions = drop_halted(x, size, self.positions, self.halting.running)
        return x, size

    def ponder_loss(self) -> Tensor:
        """Mean over patch tokens of blocks run + remainder, the last block forcing a halt."""
        assert self.halting is not None, "run a forward first"
        s = self.halting
        running = s.running.to(s.ponder.dtype)
        return (s.ponder + running * (self.depth - self.last_block + s.remainder)).mean()

    def prior_loss(self) -> Tensor:
        """KL(target || halting distribution over the hooked blocks)."""
        scores = torch.stack(self.mean_scores)
        distribution = (scores / scores.sum()).clamp(0.01, 0.99)
        layers = [b - 1 for b in self.config.blocks]  # the block whose output was scored
        target = gaussian_prior(layers, self.config.target_depth, scores.device)
        return (target * (target.log() - distribution.log())).sum()

    def loss(self) -> Tensor:
        """The weighted A-ViT training terms of the last forward."""
        c = self.config
        return c.ponder_weight * self.ponder_loss() + c.prior_weight * self.prior_loss()


def make_reducer(model: VisionTransformer, config: Config) -> AViT:
    return AViT(len(model.blocks), config).train(model.training)


@contextmanager
def patch(
    model: VisionTransformer, config: Config = Config(), reducer: AViT | None = None
) -> Iterator[VisionTransformer]:
    """Attach halting before the blocks of `config` (a fresh reducer if None)."""
    reducer = make_reducer(model, config) if reducer is None else reducer
    assert reducer.config == config, "the reducer was built for another config"
    # The bound method, not the module, so the model does not register it as a submodule.
    with attach(model, pre=dict.fromkeys(config.blocks, reducer.forward)) as patched:
        yield patched


def training_loss(
    model: VisionTransformer, reducer: AViT, images: Tensor, labels: Tensor
) -> Tensor:
    """Cross-entropy + ponder loss + distributional prior for one batch (train mode)."""
    assert reducer.training and reducer.config.blocks, "train with halting attached"
    with patch(model, reducer.config, reducer):
        logits = model(images)
    return F.cross_entropy(logits, labels) + reducer.loss()


def train_step(
    model: VisionTransformer,
    reducer: AViT,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
) -> float:
    """One optimisation step of the backbone under halting; returns the loss."""
    optimizer.zero_grad()
    loss = training_loss(model, reducer, images, labels)
    loss.backward()
    optimizer.step()
    return loss.item()
