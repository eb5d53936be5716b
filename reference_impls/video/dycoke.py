"""DyCoke, token temporal merging (TTM): "DyCoke: Dynamic Compression of Tokens for Fast Video
Large Language Models", arXiv 2411.15024.

Checked against the official repository KD-TAO/DyCoke (`dycole_ttm` in `llava/model/llava_arch.py`
and its README setting `dycoke_k=0.7`); no code was taken from it. The frames' visual tokens are
taken in windows of four frames `(f0, f1, f2, f3)`. `f0` is kept whole; every other frame is
compared token by token (cosine similarity of the tokens at the same spatial position) with a
reference frame, as the official code pairs them:

- `f1` and `f2` with `f0`, the window's first frame;
- `f3` with `f2` (its whole, unpruned tokens).

Of each compared frame the `int((1 - K) * N)` tokens *least* similar to their reference are kept
and the rest dropped, `K` being the pruning rate: a redundant token is represented by the token
of the reference frame at the same position (no averaging happens, despite the name). With `T` a
multiple of four the kept share is `(1 + 3 (1 - K)) / 4`. `Config.threshold` switches to a
content-adaptive variant that drops exactly the tokens whose similarity exceeds the threshold.

Simplified:
- DyCoke's second stage, dynamic KV-cache pruning during decoding (keeping at each step the
  visual tokens the last query attends most, refreshed when the attention pattern changes), is
  not implemented; this module is the prefill-time TTM stage alone.
- Kept tokens stay in frame, then position order; the official code orders a pruned frame's
  kept tokens by increasing similarity.
- Every frame follows the window rule, including incomplete last windows: the official loops drop
  a trailing frame when `T` is odd and leave the third frame of the last window unpruned when `T`
  is a multiple of four.

Shapes: video tokens `(B, T, N, C)` (N tokens per frame, e.g. 196); output `video.packing.Packed`
with `(B, M, C)` tokens, time-major.

Record: `dycoke-2024` in papers/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import ImplInfo
from .packing import Packed, pack

IMPL = ImplInfo(
    name="dycoke",
    title="DyCoke TTM: drop tokens of later frames similar to their window's reference frame",
    papers=("dycoke-2024",),
    family="pruning",
    training_free=True,
    arxiv="2411.15024",
    simplified=(
        "temporal merging stage only (no dynamic KV-cache pruning during decoding); kept tokens in "
        "positional order; incomplete windows handled like full ones"
    ),
)

WINDOW = 4  # frames per window, as in the official code


@dataclass(frozen=True)
class Config:
    prune_ratio: float = 0.7  # K: share of a compared frame's tokens dropped (README: 0.7)
    threshold: float | None = None  # if set: drop exactly the tokens more similar than this

    def __post_init__(self) -> None:
        assert 0.0 <= self.prune_ratio <= 1.0, "prune_ratio must be in [0, 1]"
        assert self.threshold is None or -1.0 <= self.threshold <= 1.0, "a cosine threshold"


def config_for(keep: float) -> Config:
    """The pruning rate that keeps ~`keep` of the tokens for `T` a multiple of four:
    `K = 4 (1 - keep) / 3`, clipped to [0, 1] (below 1/4 only the window anchors remain)."""
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    return Config(prune_ratio=min(1.0, max(0.0, 4 * (1 - keep) / 3)))


def reference_frames(frames: int) -> list[int | None]:
    """The frame each frame is compared with (None for a window's first frame, kept whole)."""
    refs: list[int | None] = []
    for t in range(frames):
        offset, start = t % WINDOW, t - t % WINDOW
        refs.append(None if offset == 0 else start if offset <= 2 else t - 1)
    return refs


def kept_per_frame(num_tokens: int, config: Config) -> int:
    """Tokens kept of a compared frame in the fixed-rate mode: `int((1 - K) * N)`."""
    return int((1 - config.prune_ratio) * num_tokens)


def temporal_keep_mask(video: Tensor, config: Config) -> Tensor:
    """Which tokens of `video (B, T, N, C)` TTM keeps: `(B, T, N)` bool."""
    B, T, N, _ = video.shape
    refs = reference_frames(T)
    keep = torch.ones(B, T, N, dtype=torch.bool, device=video.device)
    compared = [t for t, ref in enumerate(refs) if ref is not None]
    if not compared:
        return keep
    sources = torch.tensor([refs[t] for t in compared], device=video.device)
    targets = torch.tensor(compared, device=video.device)
    similarity = F.cosine_similarity(video[:, targets], video[:, sources], dim=-1)  # (B, T', N)
    if config.threshold is not None:
        keep[:, targets] = similarity <= config.threshold
        return keep
    k = kept_per_frame(N, config)
    least_similar = similarity.topk(k, dim=-1, largest=False).indices  # (B, T', k)
    chosen = torch.zeros_like(similarity, dtype=torch.bool).scatter_(-1, least_similar, True)
    keep[:, targets] = chosen
    return keep


def dycoke_ttm(video: Tensor, config: Config) -> Packed:
    """The tokens of `video (B, T, N, C)` that TTM keeps, packed (time-major, zero-padded)."""
    return pack(video, temporal_keep_mask(video, config))
