"""DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification (arXiv 2106.02034).

Record `dynamicvit-2021`; official repository https://github.com/raoyongming/DynamicViT. Our own
code.

Checked against the official code at commit 1322e626d1e9eca18cc150569908fb4af29e15f7, run in
memory outside the project on seeded random inputs: `PredictorLG.forward` (models/dyvit.py) with
its weights loaded into our `Predictor` gives exactly equal log-probabilities (20 cases: widths
48/64/384, batch 1-3, 64-196 patches, all-ones and random 0/1 keep policies); the eval-time
selection of `VisionTransformerDiffPruning.forward` (argsort descending, first `int(n * ratio)`,
`utils.batch_index_select` with CLS in front) equals our `prune` exactly in 99 of 100 cases
(ratios 0.7, 0.49, 0.343, 0, 1); the one difference is the order of two tokens with bit-equal
scores (torch leaves the tie order of `argsort` and `topk` unspecified). As in the official
code, the kept tokens come best first (the official layout; `keep_order=True` keeps the spatial
order instead: the CLS output is the same, as attention does not depend on token order here).
Per call (197 x 384 tokens, keep 137, CPU, one thread) ours takes 1.03x the official
selection's time at batch 1 and 1.7x at batch 8-64: the shared `tokens.gather` (an
expanded-index `gather`) costs 3x a flat `index_select` of whole rows. Read from the same code:
the training-time masked softmax (`softmax_with_policy`), the ratio loss
(`DistillDiffPruningLoss_dynamic`, ratio weight 2, kept share per image against rho**s, averaged
over stages) and the keep rates `[rho, rho**2, rho**3]` of the n initial patches (main.py).

Before chosen blocks (4, 7 and 10 of 12 when 1-based) a small prediction module scores every patch
token from its own feature and the mean feature of the tokens still kept (local + global), and
outputs keep/drop log-probabilities. Stage s keeps `int(n * rho**s)` of the `n` patch tokens the
model started with, so the token count shrinks hierarchically; CLS is always kept.

- Inference: the `k` tokens with the highest keep score are gathered, the others removed.
- Training: a hard Gumbel-softmax decision per token (straight-through gradient); a token dropped
  at one stage stays dropped. Nothing is removed: dropped tokens are masked out of attention so
  that no other token attends to them, and a ratio loss pulls the kept share of stage s towards
  `rho**s`. The predictors learn through that masking (see `training_loss`).

What is simplified, plainly:

- The attention mask goes through the ViT's size vector (attention adds `log(size)`, so a size
  of 0 is an exact -inf mask). In training a dropped token gets size `mask_eps` (1e-6) instead of
  0 so that `log(size)` and its gradient stay finite and the straight-through gradient reaches
  the predictor: a dropped token keeps a weight of about 1e-6 relative to a kept one (the
  official masked softmax also adds an epsilon of 1e-6). Unlike the paper, a dropped token's own
  query does not keep full weight on itself; that only changes the dropped token's own output,
  which reaches kept tokens through the same 1e-6 weight.
- The loss is classification + ratio loss (weight 2); the paper's distillation terms (token-wise
  and CLS KL to a teacher) are left out.
- The predictors start random unless trained ones are passed to `patch`; their MACs are not in
  `macs.vit_macs` (`predictor_macs` reports them: about 0.1 GMACs on DeiT-S at rho 0.7).
- Kept counts: the official `int(n * rho**s)` can keep no patch at all; ours keeps at least one
  and rounds `n * rho**s` to 6 decimals first (equal to the official count for the official
  rates 0.9, 0.8, 0.7; it only matters for our cube-root rates from `config_for`).

Shapes: tokens `(B, N, C)`, CLS at index 0; patch tokens `(B, P, C)` with P = N - 1; keep
decisions `(B, P)`; sizes `(B, N, 1)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..families import depth_of
from ..registry import ImplInfo
from .adapter import attach
from .tokens import keep_topk, three_stages
from .vit import TokenState, VisionTransformer

IMPL = ImplInfo(
    name="dynamicvit",
    title="DynamicViT: learned keep/drop predictors with hierarchical token pruning",
    papers=("dynamicvit-2021",),
    family="pruning",
    training_free=False,
    arxiv="2106.02034",
    simplified=(
        "training masks dropped tokens through the size vector with size 1e-6 (not exactly 0); "
        "loss is classification + ratio loss, no teacher distillation; predictors start random "
        "unless trained; predictor MACs reported separately"
    ),
)


@dataclass(frozen=True)
class Config:
    keep_ratio: float = 0.7  # rho: stage s keeps int(n * rho**s) of the n initial patch tokens
    blocks: tuple[int, ...] = (3, 6, 9)  # 0-based blocks a predictor runs before
    ratio_weight: float = 2.0  # weight of the ratio loss (official default 2)
    tau: float = 1.0  # Gumbel-softmax temperature
    mask_eps: float = 1e-6  # size of a dropped token in training (see the module docstring)
    seed: int = 0  # initialises the predictors when `patch` gets none
    # False (official): kept tokens come best first, as the official argsort lays them out;
    # True: they keep their original (spatial) order. The CLS output is the same either way.
    keep_order: bool = False

    def __post_init__(self) -> None:
        assert 0.0 < self.keep_ratio <= 1.0, "keep_ratio must be in (0, 1]"
        assert all(b >= 0 for b in self.blocks), "block indices are 0-based"
        assert list(self.blocks) == sorted(set(self.blocks)), "blocks must be strictly increasing"
        assert self.ratio_weight >= 0.0 and self.tau > 0.0
        assert 0.0 < self.mask_eps < 1.0, "mask_eps must be in (0, 1)"


def config_for(keep_rate: float, model_config: object) -> Config:
    """Three stages at 1/4, 1/2 and 3/4 depth with rho = keep_rate^(1/3); none at rate 1."""
    depth = depth_of(model_config)  # a ViTConfig (or, as before, the depth)
    if keep_rate >= 1.0:
        return Config(keep_ratio=1.0, blocks=())
    return Config(keep_ratio=keep_rate ** (1 / 3), blocks=three_stages(depth))


def kept_count(n: int, keep_ratio: float, stage: int) -> int:
    """Patch tokens kept at 1-based `stage`: int(n * rho**stage), at least one.

    Rounded to 6 decimals first so that float noise (0.5**(1/3))**3 = 0.49999... does not lose
    a token."""
    return max(1, int(round(n * keep_ratio**stage, 6)))


class Predictor(nn.Module):
    """Keep/drop log-probabilities `(B, P, 2)` of the patch tokens `(B, P, C)`.

    Each token's projected feature is split in two halves: the first stays local, the second is
    averaged over the tokens still kept (`keep (B, P)`, weights in [0, 1]) into one global
    feature; a small MLP reads [local, global]. Index 0 of the last axis is "keep".
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.head = nn.Sequential(
            nn.Linear(width, width // 2),
            nn.GELU(),
            nn.Linear(width // 2, width // 4),
            nn.GELU(),
            nn.Linear(width // 4, 2),
        )

    def forward(self, patches: Tensor, keep: Tensor) -> Tensor:
        h = self.embed(patches)  # (B, P, C)
        half = h.shape[-1] // 2
        local, glob = h[..., :half], h[..., half:]  # (B, P, C/2), (B, P, C - C/2)
        w = keep.unsqueeze(-1)  # (B, P, 1)
        # (B, 1, C - C/2); the clamp only matters when every token was dropped (then 0, not NaN)
        pooled = (glob * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1e-6)
        z = torch.cat([local, pooled.expand(-1, h.shape[1], -1)], dim=-1)  # (B, P, C)
        return self.head(z).log_softmax(dim=-1)  # (B, P, 2)


def prune(
    x: Tensor,
    log_probs: Tensor,
    k: int,
    size: Tensor | None = None,
    keep_order: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Inference: keep CLS and the `k` patch tokens of highest keep log-probability.

    `x (B, N, C)`, `log_probs (B, N-1, 2)`; returns `(x (B, 1+k, C), size, kept (B, k))`.
    The kept tokens come best first (the official layout) unless `keep_order`.
    """
    return keep_topk(x, log_probs[..., 0], k, size, keep_order=keep_order)


def gumbel_decision(log_probs: Tensor, previous: Tensor, tau: float = 1.0) -> Tensor:
    """Training: hard 0/1 keep decisions `(B, P)` with a straight-through gradient.

    A token dropped before (`previous` 0) stays dropped."""
    return F.gumbel_softmax(log_probs, tau=tau, hard=True)[..., 0] * previous  # (B, P)


def mask_size(decision: Tensor, size: Tensor | None, eps: float) -> Tensor:
    """Size vector `(B, N, 1)` that masks the dropped tokens out of attention (CLS kept).

    A kept token has size 1 (times any size it had), a dropped one `eps`; the gradient of the
    decision passes through unchanged up to the factor (1 - eps)."""
    policy = torch.cat([decision.new_ones(decision.shape[0], 1), decision], dim=1)  # (B, N)
    masked = (eps + (1.0 - eps) * policy).unsqueeze(-1)  # (B, N, 1)
    return masked if size is None else size * masked


class DynamicViT(nn.Module):
    """The reducer: one predictor per stage; attached before every block in `config.blocks`.

    In training mode it records each stage's decisions (for the ratio loss) and masks; in eval
    mode it removes tokens.
    """

    def __init__(self, width: int, num_patches: int, config: Config) -> None:
        super().__init__()
        self.config = config
        self.num_patches = num_patches
        self.predictors = nn.ModuleList(Predictor(width) for _ in config.blocks)
        self.decisions: list[Tensor] = []  # (B, P) per stage of the last training forward

    def forward(self, state: TokenState) -> tuple[Tensor, Tensor | None]:
        stage = self.config.blocks.index(state.index)
        if stage == 0:
            self.decisions = []
        patches = state.x[:, 1:]  # (B, P, C)
        if self.training:
            previous = (
                self.decisions[-1] if self.decisions else patches.new_ones(patches.shape[:2])
            )  # (B, P)
            log_probs = self.predictors[stage](patches, previous)
            decision = gumbel_decision(log_probs, previous, self.config.tau)
            self.decisions.append(decision)
            return state.x, mask_size(decision, state.size, self.config.mask_eps)
        log_probs = self.predictors[stage](patches, patches.new_ones(patches.shape[:2]))
        k = kept_count(self.num_patches, self.config.keep_ratio, stage + 1)
        x, size, _ = prune(state.x, log_probs, k, state.size, self.config.keep_order)
        return x, size

    def ratio_loss(self) -> Tensor:
        """Mean over stages of the squared gap between each image's kept share and rho**s."""
        rho = self.config.keep_ratio
        terms = [
            ((d.mean(dim=1) - rho ** (s + 1)) ** 2).mean() for s, d in enumerate(self.decisions)
        ]
        return torch.stack(terms).mean()


def make_pruner(model: VisionTransformer, config: Config) -> DynamicViT:
    """Predictors initialised from `config.seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        pruner = DynamicViT(model.config.width, model.config.num_patches, config)
    return pruner.to(model.pos_embed.device).train(model.training)


@contextmanager
def patch(
    model: VisionTransformer, config: Config = Config(), pruner: DynamicViT | None = None
) -> Iterator[VisionTransformer]:
    """Attach `pruner` (a fresh seeded one if None) before the blocks of `config`."""
    pruner = make_pruner(model, config) if pruner is None else pruner
    assert pruner.config == config, "the pruner was built for another config"
    # The bound method, not the module: assigning an nn.Module to a block would register it as
    # a submodule of the model.
    with attach(model, pre=dict.fromkeys(config.blocks, pruner.forward)) as patched:
        yield patched


def training_loss(
    model: VisionTransformer, pruner: DynamicViT, images: Tensor, labels: Tensor
) -> Tensor:
    """Cross-entropy + ratio_weight * ratio loss for one batch (both modules in train mode)."""
    assert pruner.training and pruner.config.blocks, "train a pruner with at least one stage"
    with patch(model, pruner.config, pruner):
        logits = model(images)
    return F.cross_entropy(logits, labels) + pruner.config.ratio_weight * pruner.ratio_loss()


def train_step(
    model: VisionTransformer,
    pruner: DynamicViT,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
) -> float:
    """One optimisation step of the backbone and the predictors; returns the loss."""
    optimizer.zero_grad()
    loss = training_loss(model, pruner, images, labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def predictor_macs(width: int, tokens: Sequence[int]) -> int:
    """MACs of the predictors when stage s scores `tokens[s]` patch tokens (linear layers only)."""
    c = width
    per_token = c * c + c * (c // 2) + (c // 2) * (c // 4) + (c // 4) * 2
    return per_token * sum(tokens)
