"""Run-Length Tokenization (RLT): "Don't Look Twice: Faster Video Transformers with Run-Length
Tokenization", arXiv 2411.05222.

Checked against the official repository rccchoudhury/rlt (`batched_find_idxs_to_keep` and
`batched_get_token_lengths` in `src/models/static_token_utils.py`, the `Tokenizer` in
`src/models/tokenizer.py`, the configs' `drop_param: 0.1`); no code was taken from it. Before the
model runs, the video `(B, T, C, H, W)` is cut into spatio-temporal patches of `tubelet` frames
and `p x p` pixels. A patch is dropped when it repeats the patch at the same position one tubelet
earlier: the mean absolute difference between its last frame and the first frame of the earlier
patch, over pixels and channels, is at most `threshold`. The first tubelet is always kept. Each
kept patch gets a run length: the number of tubelets until the next kept patch at its position
(or the end of the video), so the lengths of a position sum to `T / tubelet`. `length_encoding`
gives a sinusoidal code of a run length for a model to add to the token (base 1000; the official
tokenizer builds its length table with that base).

A patch is compared with its predecessor, not with the last kept patch, as officially: a patch
that drifts slowly can be dropped many times in a row.

Simplified: the patch embedding, the video transformer and its (optional) training with the
length encoding are not part of this module; it returns the kept raw patches, their run lengths
and positions. Negative thresholds keep every patch (`config_for(1.0)`).

Shapes: video `(B, T, C, H, W)`; patches `(B, T', N, tubelet, C * p * p)` with `T' = T / tubelet`
and `N = (H / p) (W / p)`; output `RunLengthTokens`: a `video.packing.Packed` of flattened patches
`(B, M, tubelet * C * p * p)` and run lengths `(B, M)`.

Record: `rlt-2024` in papers/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ImplInfo
from .packing import Packed, pack

IMPL = ImplInfo(
    name="rlt",
    title="Run-length tokenization: drop patches that repeat the previous one, keep run lengths",
    papers=("rlt-2024",),
    family="pruning",
    training_free=True,
    arxiv="2411.05222",
    simplified=(
        "tokenizer only: no video transformer, no training with the length encoding; negative "
        "thresholds keep everything"
    ),
)


@dataclass(frozen=True)
class Config:
    patch_size: int = 16  # p
    tubelet: int = 2  # frames per patch (official: 2)
    threshold: float = 0.1  # mean |difference| at or below which a patch repeats (official: 0.1)

    def __post_init__(self) -> None:
        assert self.patch_size >= 1 and self.tubelet >= 1


def config_for(keep: float, model_config: object = None) -> Config:
    """RLT has no token budget: what it keeps depends on how static the video is. `keep >= 1`
    keeps every patch (a negative threshold); any smaller keep gives the official threshold."""
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    return Config(threshold=-1.0) if keep >= 1.0 else Config()


@dataclass(frozen=True)
class RunLengthTokens:
    packed: Packed  # kept patches (B, M, tubelet * C * p * p) with frame (tubelet) and position
    run_length: Tensor  # (B, M) long: tubelets each kept patch stands for, 0 at padding


def patchify(video: Tensor, patch_size: int, tubelet: int) -> Tensor:
    """`video (B, T, C, H, W)` -> patches `(B, T / tubelet, N, tubelet, C * p * p)`, positions in
    row-major order, pixels of a frame flattened as `(C, p, p)`."""
    B, T, C, H, W = video.shape
    p = patch_size
    if T % tubelet or H % p or W % p:
        raise ValueError(f"video {tuple(video.shape)} does not divide into {tubelet}x{p}x{p}")
    x = video.reshape(B, T // tubelet, tubelet, C, H // p, p, W // p, p)
    x = x.permute(0, 1, 4, 6, 2, 3, 5, 7)  # (B, T', H/p, W/p, tubelet, C, p, p)
    return x.reshape(B, T // tubelet, (H // p) * (W // p), tubelet, C * p * p)


def static_keep_mask(patches: Tensor, threshold: float) -> Tensor:
    """`(B, T', N)` bool: the first tubelet, and every patch whose last frame differs from the
    first frame of the patch before it by a mean absolute difference above `threshold`."""
    B, _, N = patches.shape[:3]
    change = (patches[:, 1:, :, -1] - patches[:, :-1, :, 0]).abs().mean(-1)  # (B, T'-1, N)
    first = torch.ones(B, 1, N, dtype=torch.bool, device=patches.device)
    return torch.cat([first, change > threshold], dim=1)


def run_lengths(keep: Tensor) -> Tensor:
    """For `keep (B, T', N)`: at each kept entry, the steps to the next kept entry at the same
    position (or to `T'`); 0 where dropped. `(B, T', N)` long."""
    T = keep.shape[1]
    steps = torch.arange(T, device=keep.device)[None, :, None]  # (1, T', 1)
    marks = torch.where(keep, steps, torch.full_like(steps, T).expand_as(keep))
    # next_kept[t] = min(marks[t + 1:], T): a reversed running minimum, shifted by one step.
    tail = torch.cat([marks[:, 1:], torch.full_like(marks[:, :1], T)], dim=1)
    next_kept = tail.flip(1).cummin(1).values.flip(1)
    return torch.where(keep, next_kept - steps, torch.zeros_like(marks))


def run_length_tokenize(video: Tensor, config: Config) -> RunLengthTokens:
    """The patches of `video (B, T, C, H, W)` that RLT keeps, packed, with their run lengths."""
    patches = patchify(video, config.patch_size, config.tubelet)  # (B, T', N, tubelet, D)
    keep = static_keep_mask(patches, config.threshold)  # (B, T', N)
    lengths = run_lengths(keep)  # (B, T', N)
    packed = pack(patches.flatten(3), keep)
    flat_lengths = lengths.reshape(lengths.shape[0], -1)  # (B, T'*N)
    index = (packed.frame * keep.shape[2] + packed.position).clamp(min=0)
    run_length = flat_lengths.gather(1, index) * packed.mask
    return RunLengthTokens(packed=packed, run_length=run_length)


def length_encoding(run_length: Tensor, dim: int, base: float = 1000.0) -> Tensor:
    """Sinusoidal code of run lengths `(...)` -> `(..., dim)`: `sin(l / base^(2i/dim))` in channel
    `2i`, `cos` of the same angle in channel `2i + 1`."""
    channel = torch.arange(dim, device=run_length.device)
    frequency = base ** (-(channel - channel % 2).double() / dim)  # (dim,)
    angle = run_length.double()[..., None] * frequency
    return torch.where(channel % 2 == 0, angle.sin(), angle.cos()).float()


# The family's one entry point (`reference_impls.pack_video`).
pack_video = run_length_tokenize
