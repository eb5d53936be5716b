"""A small diffusion transformer (DiT-style) with a hook point around its self-attention.

The denoiser the diffusion methods are tested on, built in code with random weights: a latent
`(B, C, H, W)` is cut into `p x p` patches (tokens on an `h x w` grid, row-major), a fixed 2D
sine-cosine positional embedding is added, and `depth` blocks follow, each

    h = modulate(LN(x), shift1, scale1);  x = x + gate1 * SelfAttention(h)
    x = x + gate2 * MLP(modulate(LN(x), shift2, scale2))

with `shift, scale, gate` computed from the timestep embedding (adaptive LayerNorm conditioning,
`modulate(u, shift, scale) = u * (1 + scale) + shift`). A final adaptive LayerNorm and a linear
layer map the tokens back to patches of the output `(B, C, H, W)`.

Hook point: `DiTBlock.attn_hook`, when set, is called as `hook(x, h, (h_tokens, w_tokens), attn)`
instead of `attn(h)` and must return a tensor of `h`'s shape; a method (ToMe for SD) merges
tokens before `attn` and unmerges after. `Attention.tokens_seen` records the sequence length of
its last call, so tests can count what attention saw.

Not a faithful DiT: the weights are random and the modulation is not zero-initialised (a
zero-initialised, untrained block would be the identity and hide every effect); no class
conditioning and no learned variance. This module implements no reduction method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# hook(x, h, (h_tokens, w_tokens), attn) -> attention output of h's shape
AttnHook = Callable[[Tensor, Tensor, tuple[int, int], "Attention"], Tensor]


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 4
    image_size: int = 16  # latent side H = W
    patch_size: int = 2  # tokens on a (16 / 2) x (16 / 2) = 8 x 8 grid
    width: int = 48
    depth: int = 2
    heads: int = 3
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        assert self.image_size % self.patch_size == 0, "patch_size must divide image_size"
        assert self.width % self.heads == 0, "width must be divisible by heads"

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side


TINY_DIT = DiTConfig()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """`x (B, N, C) * (1 + scale (B, C)) + shift (B, C)`."""
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps `t (B,)` -> `(B, dim)`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    embedding = torch.cat([angles.cos(), angles.sin()], dim=-1)
    return torch.cat([embedding, torch.zeros_like(embedding[:, :1])], -1) if dim % 2 else embedding


def sincos_2d(h: int, w: int, dim: int) -> Tensor:
    """Fixed 2D sine-cosine positional embedding `(h * w, dim)`: half the channels encode the row,
    half the column."""
    assert dim % 4 == 0, "dim must be divisible by 4"
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angle = coord.double()[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention; records the number of tokens of its last call."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.tokens_seen = 0

    def forward(self, x: Tensor) -> Tensor:
        """`x (B, N, C)` -> `(B, N, C)`."""
        B, N, C = x.shape
        self.tokens_seen = N
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class DiTBlock(nn.Module):
    """adaLN-conditioned transformer block with a hook point around its self-attention."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        C = config.width
        self.norm1 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(C, config.heads)
        self.norm2 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        hidden = int(C * config.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(C, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, C)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.attn_hook: AttnHook | None = None

    def forward(self, x: Tensor, c: Tensor, grid: tuple[int, int]) -> Tensor:
        """`x (B, N, C)` tokens on `grid = (h, w)`, conditioning `c (B, C)` -> `(B, N, C)`."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift1, scale1)
        attended = self.attn(h) if self.attn_hook is None else self.attn_hook(x, h, grid, self.attn)
        x = x + gate1[:, None] * attended
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Patchify, positional embedding, timestep-conditioned blocks, adaptive final layer."""

    def __init__(self, config: DiTConfig = TINY_DIT) -> None:
        super().__init__()
        self.config = config
        C, p = config.width, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, C, p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(*config.grid, C), persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C))
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        self.final = nn.Linear(C, p * p * config.in_channels)

    def dit_blocks(self) -> list[DiTBlock]:
        """The blocks, typed (iterating the ModuleList gives plain modules)."""
        return [block for block in self.blocks if isinstance(block, DiTBlock)]

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Latent `x (B, C_in, H, W)`, timesteps `t (B,)` -> prediction `(B, C_in, H, W)`."""
        B, C_in, H, W = x.shape
        p, (gh, gw) = self.config.patch_size, self.config.grid
        if (gh * p, gw * p) != (H, W):
            raise ValueError(f"latent {H}x{W}, the model is built for {gh * p}x{gw * p}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        c = self.time_embed(timestep_embedding(t, self.config.width))  # (B, C)
        for block in self.blocks:
            tokens = block(tokens, c, (gh, gw))
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))  # (B, N, p*p*C_in)
        out = out.reshape(B, gh, gw, p, p, C_in).permute(
            0, 5, 1, 3, 2, 4
        )  # (B, C_in, gh, p, gw, p)
        return out.reshape(B, C_in, H, W)
