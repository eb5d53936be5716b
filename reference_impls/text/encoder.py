"""A small BERT-style text encoder with hook points for token pruning and token skipping.

The model is ours (random weights; nothing is downloaded). It follows BERT: token and learned
position embeddings, blocks of multi-head self-attention and an MLP, and a linear head on the
[CLS] token. `EncoderConfig.pre_norm` picks the block layout: False is BERT's post-LN
(`h = LN(x + attn(x)); out = LN(h + mlp(h))`, with a LayerNorm on the embeddings), True is
pre-LN (`h = x + attn(LN(x)); out = h + mlp(LN(h))`, with a final LayerNorm). Attention is eager
so that methods can read the attention probabilities.

Inputs are token ids `(B, N)` whose first token is [CLS] and a padding mask `(B, N)`, True for
real tokens. The mask must mark [CLS] real; padding may sit anywhere, though tokenizers put it
last. Padding keys get a score of -inf, so no token attends to padding and padding never changes
a real token; padding rows are still computed (their values mean nothing).

Hook points per block, set and restored by `attach`:

- `block.mid_reducer(state)`: between attention (with its residual, and its LayerNorm when
  post-LN) and the MLP, where PoWER-BERT and LTP act; sees the block's attention
  probabilities `(B, H, N, N)` and returns `(x, mask)`, possibly with fewer tokens;
- `block.post_reducer(state)`: after the MLP, with the same attention (LTP's soft mask);
- `block.router(state)`: replaces the block: it decides which tokens the block processes and
  calls `state.block.residual(x_sub, mask_sub)` on them (Mixture-of-Depths token skipping).

Every block records per forward `last_counts = (tokens into attention, tokens into the MLP)`
(tensor lengths, padding included) and `last_lengths`, the real tokens per sample at the same
two points. Shapes: tokens `(B, N, C)` with [CLS] at index 0; masks `(B, N)`; attention
`(B, H, N, N)` with rows the queries and columns the keys.

This module is infrastructure only: the reduction algorithms live in their own modules.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from ..restore import setting
from ..selection import gather as gather
from ..vision.vit import Mlp  # the same two-layer GELU MLP


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    max_len: int = 512
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 2
    pre_norm: bool = False  # False: BERT's post-LN blocks; True: pre-LN blocks
    cls_id: int = 101  # BERT's [CLS] id; `TextEncoder` only reads position 0, see `batch`
    pad_id: int = 0

    def __post_init__(self) -> None:
        assert self.width % self.heads == 0, "width must be divisible by heads"
        assert self.depth >= 1 and self.mlp_ratio > 0 and self.max_len >= 1
        assert 0 <= self.cls_id < self.vocab_size and 0 <= self.pad_id < self.vocab_size


BERT_BASE = EncoderConfig()  # 12 blocks, width 768, 12 heads
TINY_ENCODER = EncoderConfig(
    vocab_size=100, max_len=64, width=32, depth=4, heads=4, num_classes=3, cls_id=1
)


@dataclass
class TextTokenState:
    """What a reducer sees at a hook point."""

    x: Tensor  # (B, N, C) tokens, [CLS] first
    mask: Tensor  # (B, N) bool, True for real tokens
    index: int  # block index, 0-based
    input_len: int  # N of the embedded input, before any reduction
    attn: Tensor  # (B, H, N_in, N_in) this block's attention probabilities


class Reducer(Protocol):
    def __call__(self, state: TextTokenState) -> tuple[Tensor, Tensor]: ...


@dataclass
class RouteState:
    """What a router sees: the block's input and the block itself."""

    x: Tensor  # (B, N, C)
    mask: Tensor  # (B, N) bool
    index: int
    block: Block


class Router(Protocol):
    def __call__(self, state: RouteState) -> tuple[Tensor, Tensor]: ...


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, N, D)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = scores.softmax(dim=-1)  # (B, H, N, N)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(out), attn


class Block(nn.Module):
    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.pre_norm = c.pre_norm
        self.norm1 = nn.LayerNorm(c.width, eps=1e-12)
        self.attn = Attention(c.width, c.heads)
        self.norm2 = nn.LayerNorm(c.width, eps=1e-12)
        self.mlp = Mlp(c.width, int(c.width * c.mlp_ratio))
        self.mid_reducer: Reducer | None = None
        self.post_reducer: Reducer | None = None
        self.router: Router | None = None
        self.last_counts: tuple[int, int] = (0, 0)
        self.last_lengths: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def forward(self, x: Tensor, mask: Tensor, index: int, input_len: int) -> tuple[Tensor, Tensor]:
        if self.router is not None:
            assert self.mid_reducer is None and self.post_reducer is None, (
                "a routed block takes no reducers"
            )
            return self.router(RouteState(x, mask, index, self))
        return self.run(x, mask, index, input_len)

    def run(
        self, x: Tensor, mask: Tensor, index: int = -1, input_len: int = 0
    ) -> tuple[Tensor, Tensor]:
        """The block on `x (B, N, C)` with its reducers (not its router): `(x, mask)`."""
        n_attn, real_attn = x.shape[1], _lengths(mask)
        if self.pre_norm:
            out, attn = self.attn(self.norm1(x), mask)
            h = x + out
        else:
            out, attn = self.attn(x, mask)
            h = self.norm1(x + out)
        if self.mid_reducer is not None:
            h, mask = self.mid_reducer(TextTokenState(h, mask, index, input_len, attn))
        self.last_counts = (n_attn, h.shape[1])
        self.last_lengths = (real_attn, _lengths(mask))
        out = h + self.mlp(self.norm2(h)) if self.pre_norm else self.norm2(h + self.mlp(h))
        if self.post_reducer is not None:
            out, mask = self.post_reducer(TextTokenState(out, mask, index, input_len, attn))
        return out, mask

    def residual(self, x: Tensor, mask: Tensor) -> Tensor:
        """What the block adds to `x (B, N, C)`: `block(x) = x + residual(x)`, `(B, N, C)`.

        For pre-LN blocks this is the attention plus MLP update of the residual stream; for
        post-LN blocks it is defined by the same identity (the LayerNorms are inside it).
        """
        assert self.mid_reducer is None and self.post_reducer is None, "no reducers when routed"
        out, _ = self.run(x, mask)
        return out - x


class TextEncoder(nn.Module):
    """BERT-style encoder; `forward(ids (B, N), mask (B, N)) -> logits (B, classes)`."""

    def __init__(self, config: EncoderConfig = BERT_BASE) -> None:
        super().__init__()
        self.config = config
        c = config
        self.tok_embed = nn.Embedding(c.vocab_size, c.width)
        self.pos_embed = nn.Embedding(c.max_len, c.width)
        self.embed_norm: nn.Module = nn.Identity() if c.pre_norm else nn.LayerNorm(c.width, 1e-12)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm: nn.Module = nn.LayerNorm(c.width, eps=1e-12) if c.pre_norm else nn.Identity()
        self.head = nn.Linear(c.width, c.num_classes)
        self.apply(_init_weights)

    def embed(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)  # (N,)
        return self.embed_norm(self.tok_embed(ids) + self.pos_embed(positions))  # (B, N, C)

    def forward_tokens(self, ids: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The final tokens `(B, N', C)` and their mask `(B, N')` after every block."""
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed max_len {self.config.max_len}")
        if mask is None:
            mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        if mask.shape != ids.shape or not bool(mask[:, 0].all()):
            raise ValueError("mask must have the shape of ids and mark [CLS] (position 0) real")
        x = self.embed(ids)
        for index, block in enumerate(self.blocks):
            x, mask = block(x, mask, index, ids.shape[1])
        return self.norm(x), mask

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.head(self.forward_tokens(ids, mask)[0][:, 0])

    def token_counts(self) -> list[tuple[int, int]]:
        """Per block, the tokens that entered attention and the MLP in the last forward."""
        return [cast(Block, block).last_counts for block in self.blocks]

    def token_lengths(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per block, the real tokens of each sample at attention and at the MLP."""
        return [cast(Block, block).last_lengths for block in self.blocks]


def _lengths(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in mask.sum(dim=1).tolist())


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def batch(
    lengths: list[int], config: EncoderConfig, seed: int = 0, device: str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Random ids `(B, N)` with [CLS] first and padding after each sample's length, and the mask
    `(B, N)`; `N = max(lengths)`."""
    generator = torch.Generator().manual_seed(seed)
    n = max(lengths)
    assert min(lengths) >= 1, "every sample has at least its [CLS] token"
    ids = torch.randint(0, config.vocab_size, (len(lengths), n), generator=generator)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]  # (B, N)
    ids = ids.masked_fill(~mask, config.pad_id)
    ids[:, 0] = config.cls_id
    return ids.to(device), mask.to(device)


# --- token selection shared by the methods --------------------------------------------------


def compact(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the rows of `x (B, N, C)` where `keep (B, N)` is True, per sample.

    Each sample's kept rows move to the front in their original order; the batch is padded to the
    longest sample's count `K` with zero rows. Returns `(x (B, K, C), mask (B, K))`, the mask True
    for kept rows, so the batch stays rectangular and the padding stays invisible to attention.
    """
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # kept first
    k = int(keep.sum(dim=1).max())
    index = order[:, :k]  # (B, K)
    mask = keep.gather(1, index)  # (B, K)
    return gather(x, index).masked_fill(~mask.unsqueeze(-1), 0.0), mask


def attention_received(attn: Tensor, mask: Tensor, exclude_self: bool = False) -> Tensor:
    """Attention each token receives, summed over heads and over the real query rows:
    `(B, N)` from `attn (B, H, N, N)` and `mask (B, N)`. With `exclude_self` a token's attention
    to itself is left out. Padding keys receive none (their columns are zero)."""
    rows = attn * mask[:, None, :, None]  # (B, H, N, N) padding queries zeroed
    received = rows.sum(dim=(1, 2))  # (B, N)
    if exclude_self:
        received = received - (rows.diagonal(dim1=-2, dim2=-1)).sum(dim=1)
    return received


# --- the reversible adapter -----------------------------------------------------------------


@contextmanager
def attach(
    model: TextEncoder,
    mid: Mapping[int, Reducer] | None = None,
    post: Mapping[int, Reducer] | None = None,
    routers: Mapping[int, Router] | None = None,
) -> Iterator[TextEncoder]:
    """Attach reducers and routers to blocks by index; everything is restored on exit."""
    blocks = list(model.blocks)
    for index in [*(mid or {}), *(post or {}), *(routers or {})]:
        if not 0 <= index < len(blocks):
            raise ValueError(f"block index {index} out of range for depth {len(blocks)}")
    hook_points = (("mid_reducer", mid), ("post_reducer", post), ("router", routers))
    changes = [
        (blocks[index], name, hook)
        for name, hooks in hook_points
        for index, hook in (hooks or {}).items()
    ]
    with setting(*changes):
        yield model
