"""Shared pieces for the VLM tests: a tiny random LLaVA, prompts, images, a naive reference."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reference_impls.llm.llama import KVCache
from reference_impls.vlm.llava import TINY_LLAVA, Llava, LlavaConfig, LlmState, VisualState, attach

PREFIX, SUFFIX = 5, 7  # text tokens before and after the image
N = TINY_LLAVA.vision.num_patches  # 64 patch tokens per view
DEPTH = TINY_LLAVA.llm.depth


def tiny_llava(
    seed: int = 0, projector: nn.Module | None = None, config: LlavaConfig = TINY_LLAVA
) -> Llava:
    """Random weights, larger than the default init so attention is far from uniform."""
    torch.manual_seed(seed)
    model = Llava(config, projector).eval()
    for name, p in model.named_parameters():
        if name.startswith("llm."):
            nn.init.normal_(p, std=0.3)
        elif p.dim() > 1:
            nn.init.normal_(p, std=0.2)
    return model


def prompt(batch: int = 2, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Prefix `(B, 5)` and suffix `(B, 7)` token ids."""
    g = torch.Generator().manual_seed(seed)
    vocab = TINY_LLAVA.llm.vocab_size
    return (
        torch.randint(0, vocab, (batch, PREFIX), generator=g),
        torch.randint(0, vocab, (batch, SUFFIX), generator=g),
    )


def images(batch: int = 2, seed: int = 2, size: int | None = None) -> Tensor:
    side = size if size is not None else TINY_LLAVA.vision.img_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, side, side, generator=g)


def inputs(batch: int = 2, device: str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """(prefix, images, suffix) for a batch."""
    prefix, suffix = prompt(batch)
    return prefix.to(device), images(batch).to(device), suffix.to(device)


@torch.no_grad()
def run(model: Llava, batch: int = 2, steps: int = 3, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """Prefill logits of the last prompt token `(B, vocab)` and `steps` greedy tokens `(B, s)`."""
    prefix, image, suffix = inputs(batch, device)
    cache = KVCache()
    logits = model.prefill(prefix, image, suffix, cache)
    last = logits[:, -1]
    tokens = []
    for _ in range(steps):
        token = logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens.append(token)
        logits = model.step(token, cache)
    return last, torch.cat(tokens, dim=1)


@torch.no_grad()
def capture_visual(model: Llava, image: Tensor | None = None, batch: int = 2) -> VisualState:
    """The state an encoder-side reducer would see for these inputs."""
    seen: list[VisualState] = []

    def spy(state: VisualState) -> Tensor:
        seen.append(state)
        return state.project(state.features)

    prefix, default, suffix = inputs(batch)
    with attach(model, visual=spy):
        model.prefill(prefix, default if image is None else image, suffix)
    return seen[0]


@torch.no_grad()
def capture_llm(model: Llava, layer: int, batch: int = 2) -> LlmState:
    """The state an in-LLM reducer before `layer` would see (nothing reduced)."""
    seen: list[LlmState] = []

    def spy(state: LlmState) -> tuple[Tensor, Tensor, int]:
        seen.append(state)
        return state.hidden, state.positions, state.visual_len

    with attach(model, llm={layer: spy}):
        model.prefill(*inputs(batch))
    return seen[0]


def fit(model: nn.Module, x: Tensor, target: Tensor, lr: float, steps: int = 60) -> list[float]:
    """Adam on a fixed batch with an MSE loss; the loss after each step (projector tests)."""
    import torch.nn.functional as F

    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses
