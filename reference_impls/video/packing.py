"""The packed representation of the video methods' variable-length outputs.

A video method keeps a different number of tokens in each sample. `Packed` holds the kept tokens
of a batch left-aligned and zero-padded to the largest count, with a mask and, for every kept
token, the frame (time step) and the spatial position it came from, in time-major order (frame
0's kept tokens first, by position, then frame 1's, ...). `pack` builds it from dense tokens and a
keep mask; `unpack` scatters it back. This module implements no reduction method.

Shapes: dense tokens `(B, T, N, C)`, keep mask `(B, T, N)`; packed tokens `(B, M, C)` with
`M = max_b kept_b`, per-token fields `(B, M)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Packed:
    """Kept tokens of a batch, left-aligned and zero-padded; -1 marks padding in the indices."""

    tokens: Tensor  # (B, M, C), zeros at padding
    mask: Tensor  # (B, M) bool, True for a kept token
    frame: Tensor  # (B, M) long, time step of each token, -1 at padding
    position: Tensor  # (B, M) long, spatial index inside its frame, -1 at padding

    @property
    def lengths(self) -> Tensor:
        """Kept tokens per sample, `(B,)` long."""
        return self.mask.sum(1)


def pack(tokens: Tensor, keep: Tensor) -> Packed:
    """Left-align the tokens of `tokens (B, T, N, C)` where `keep (B, T, N)` is True, in
    time-major order, zero-padded to the largest kept count of the batch."""
    B, T, N, C = tokens.shape
    assert keep.shape == (B, T, N) and keep.dtype == torch.bool, "keep must be (B, T, N) bool"
    flat_keep = keep.reshape(B, T * N)
    counts = flat_keep.sum(1)  # (B,)
    M = int(counts.max()) if B else 0
    # A stable sort of "not kept" puts the kept indices first, in their original order.
    order = torch.sort((~flat_keep).to(torch.uint8), dim=1, stable=True).indices[:, :M]  # (B, M)
    mask = torch.arange(M, device=tokens.device)[None, :] < counts[:, None]  # (B, M)
    gathered = tokens.reshape(B, T * N, C).gather(1, order[..., None].expand(B, M, C))
    none = torch.full_like(order, -1)
    return Packed(
        tokens=gathered * mask[..., None],
        mask=mask,
        frame=torch.where(mask, order // N, none),
        position=torch.where(mask, order % N, none),
    )


def unpack(packed: Packed, frames: int, positions: int) -> tuple[Tensor, Tensor]:
    """Scatter `packed` back to dense `(B, T, N, C)` tokens (zeros where nothing was kept) and the
    keep mask `(B, T, N)`."""
    B, M, C = packed.tokens.shape
    dense = packed.tokens.new_zeros(B, frames * positions + 1, C)  # last row: padding sink
    index = torch.where(packed.mask, packed.frame * positions + packed.position, frames * positions)
    dense.scatter_(1, index[..., None].expand(B, M, C), packed.tokens)
    keep = torch.zeros(B, frames * positions + 1, dtype=torch.bool, device=dense.device)
    keep.scatter_(1, index, packed.mask)
    return (
        dense[:, :-1].reshape(B, frames, positions, C),
        keep[:, :-1].reshape(B, frames, positions),
    )
