"""A small DeiT-style Vision Transformer with hook points for token reduction.

The model is ours (random or self-trained weights; nothing is downloaded). It follows DeiT:
patch embedding, a CLS token, learned position embeddings, pre-norm blocks of multi-head
self-attention and an MLP, and a linear head on the CLS token.

Token-reduction methods attach to a block through two hook points, set and restored by the
adapters (`reference_impls.vision.adapter`):

- `block.pre_reducer(state)`: before the block, sees the tokens only;
- `block.mid_reducer(state)`: between attention and MLP (where ToMe, EViT, ... act), sees the
  attention probabilities `(B, H, N, N)` and the keys averaged over heads `(B, N, D)`.

Both return `(x, size)`. Shapes: tokens `(B, N, C)` with N including the CLS token at index 0;
`size (B, N, 1)` counts how many original patches a token stands for (merging methods). When a
size vector is present, attention adds `log(size)` to the scores (ToMe's proportional attention);
a size of 0 therefore marks a padding token that no query attends to.

Each block records `last_counts = (tokens into attention, tokens into the MLP)` on every forward,
which is what the analytic MAC counter (`macs.py`) follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        assert self.img_size % self.patch_size == 0, "img_size must be a multiple of patch_size"
        assert self.width % self.heads == 0, "width must be divisible by heads"
        assert self.depth >= 1 and self.mlp_ratio > 0

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1


DEIT_S = ViTConfig()  # depth 12, width 384, 6 heads, 197 tokens
DEIT_T = ViTConfig(width=192, heads=3)
DEIT_B = ViTConfig(width=768, heads=12)


@dataclass
class TokenState:
    """What a reducer sees at a hook point."""

    x: Tensor  # (B, N, C) tokens, CLS first
    size: Tensor | None  # (B, N, 1) patches per token, or None
    index: int  # block index, 0-based
    attn: Tensor | None = None  # (B, H, N, N) attention probabilities (mid hook only)
    keys: Tensor | None = None  # (B, N, D) keys averaged over heads (mid hook only)


class Reducer(Protocol):
    def __call__(self, state: TokenState) -> tuple[Tensor, Tensor | None]: ...


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, N, D)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        if size is not None:
            scores = scores + size.log()[:, None, None, :, 0]  # proportional attention
        attn = scores.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(out), attn, k.mean(dim=1)  # keys (B, N, D)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.pre_reducer: Reducer | None = None
        self.mid_reducer: Reducer | None = None
        self.last_counts: tuple[int, int] = (0, 0)

    def forward(self, x: Tensor, size: Tensor | None, index: int) -> tuple[Tensor, Tensor | None]:
        if self.pre_reducer is not None:
            x, size = self.pre_reducer(TokenState(x, size, index))
        n_attn = x.shape[1]
        out, attn, keys = self.attn(self.norm1(x), size)
        x = x + out
        if self.mid_reducer is not None:
            x, size = self.mid_reducer(TokenState(x, size, index, attn, keys))
        self.last_counts = (n_attn, x.shape[1])
        x = x + self.mlp(self.norm2(x))
        return x, size


class VisionTransformer(nn.Module):
    """DeiT-style ViT; `forward(images (B, 3, H, W)) -> logits (B, classes)`."""

    def __init__(self, config: ViTConfig = DEIT_S) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Conv2d(c.in_chans, c.width, c.patch_size, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.num_classes)
        # Start every forward with a size vector (ones), so attention is proportional from the
        # first block: set by merging adapters such as ToMe.
        self.track_size = False
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def embed(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N-1, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N, C)

    def forward_tokens(self, images: Tensor) -> Tensor:
        """The final normalised tokens (B, N', C) after every block and reduction."""
        x = self.embed(images)
        size = x.new_ones(x.shape[0], x.shape[1], 1) if self.track_size else None
        for index, block in enumerate(self.blocks):
            x, size = block(x, size, index)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.forward_tokens(images)[:, 0])

    def token_counts(self) -> list[tuple[int, int]]:
        """Per block, the tokens that entered attention and the MLP in the last forward."""
        return [cast(Block, block).last_counts for block in self.blocks]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def cls_attention(attn: Tensor) -> Tensor:
    """Attention from the CLS token to every other token, averaged over heads: (B, N-1)."""
    return attn[:, :, 0, 1:].mean(dim=1)
