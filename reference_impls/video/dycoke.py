"""DyCoke, token temporal merging (TTM): "DyCoke: Dynamic Compression of Tokens for Fast Video
Large Language Models", arXiv 2411.15024.

Checked against the official repository KD-TAO/DyCoke at commit dd746349 (`dycole_ttm` in
`llava/model/llava_arch.py`, the README setting `dycoke_k=0.7`; the decoding stage in
`PrunableDynamicCache.dycoke_pruning` / `update_cache` of
`llava/model/language_model/modeling_qwen2.py`); no code was taken from it.

TTM (prefill, before the language model). The frames' visual tokens are taken in windows of four
frames `(f0, f1, f2, f3)`. `f0` is kept whole; the other frames are compared token by token
(cosine similarity of the tokens at the same spatial position) with a reference frame, as the
official code pairs them:

- `f1` and `f2` with `f0`, the window's first frame;
- `f3` with `f2` (its whole, unpruned tokens).

Of each compared frame the `int((1 - K) * N)` tokens *least* similar to their reference are kept
and the rest dropped, `K` being the pruning rate: a redundant token is represented by the token
of the reference frame at the same position (no averaging happens, despite the name).

The official loops decide two edge cases, reproduced by default (`windows="official"`):

- frames are taken in pairs `(2i, 2i + 1)`: a trailing frame of an odd frame count is dropped
  with all its tokens;
- the `f2`-against-`f0` pass runs over `range(0, T - 4, 4)`, so the third frame of a window
  starting at `T - 4` or later is left whole (for `T` a multiple of four: frame `T - 2`).

`windows="every"` applies the window rule to every frame instead (no frame dropped, every `f2`
pruned). The official code fails for `T <= 4` (an empty `torch.stack`); here the same rules
extend to those counts, and a single frame is kept whole.

Order: a pruned frame's kept tokens follow in increasing similarity (the order of
`topk(largest=False)`), which decides their positions in the language model; whole frames keep
positional order. `order="position"` keeps every frame in positional order instead.

Check against the official code (run in memory from the fetched snapshot, outside the project):
`dycole_ttm` against `dycoke_ttm` on 20 seeded random videos (T in {5, 6, 7, 8, 9, 12, 13, 16,
17, 30}, N in {9, 196}, C = 16, K in {0.3, 0.7}, batch 1 as the official function takes one
video): the kept tokens are the same rows in the same order in every case.

`Config.threshold` switches to a content-adaptive variant of ours (no official counterpart): it
drops exactly the tokens whose similarity exceeds the threshold.

The second stage, dynamic KV pruning while decoding, is given as its pure selection rule,
`decode_keep`: at every decoding step the attention of the new token in layer `L - 1` (sample 0,
averaged over heads) over the image tokens is compared (cosine) with the previous step's; when
the similarity is below 0.9 (or at the first step), layers `L..` attend to the text tokens and
the `int(n (1 - P))` most attended image tokens only; otherwise, in the official code, they
attend to the whole cache for that step (the selection is reset at every step, so a similar
pattern does not reuse the previous selection). The cache itself keeps every entry. README
setting: `L = 3` (`dycoke_l`), `P = 0.7` (`dycoke_p`). This stage is not attached to a model
here: it restricts which cached entries a layer attends to during one step without evicting
them, which the KV press interface (`llm.llama.Press`, called after the layer has attended,
returning what the cache keeps) cannot express, and it needs the image span, which a
`PressContext` does not carry.

Simplified: ties in similarity or attention go to the earlier token (the official `topk` leaves
them to the backend).

Shapes: video tokens `(B, T, N, C)` (N tokens per frame, e.g. 196); output `video.packing.Packed`
with `(B, M, C)` tokens, time-major; image attention `(n,)`.

Record: `dycoke-2024` in papers/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
        "temporal merging stage applied; the decoding-time KV pruning is given as its selection "
        "rule only (no model hook for it)"
    ),
)

WINDOW = 4  # frames per window, as in the official code
DECODE_SIMILARITY = 0.9  # the official threshold of the decoding stage


@dataclass(frozen=True)
class Config:
    prune_ratio: float = 0.7  # K (`dycoke_k`): share of a compared frame's tokens dropped
    threshold: float | None = None  # if set: drop exactly the tokens more similar than this
    windows: Literal["official", "every"] = "official"  # see the module docstring
    order: Literal["similarity", "position"] = "similarity"  # kept tokens of a pruned frame

    def __post_init__(self) -> None:
        assert 0.0 <= self.prune_ratio <= 1.0, "prune_ratio must be in [0, 1]"
        assert self.threshold is None or -1.0 <= self.threshold <= 1.0, "a cosine threshold"
        assert self.windows in ("official", "every"), "windows must be 'official' or 'every'"
        assert self.order in ("similarity", "position"), "order must be 'similarity' or 'position'"


def config_for(keep: float, model_config: object = None) -> Config:
    """The pruning rate that keeps ~`keep` of the tokens of a long video (each window keeps
    `(1 + 3 (1 - K)) / 4`): `K = 4 (1 - keep) / 3`, clipped to [0, 1] (below 1/4 only the
    window anchors remain)."""
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    return Config(prune_ratio=min(1.0, max(0.0, 4 * (1 - keep) / 3)))


DROPPED = -1  # `reference_frames`: a frame left out entirely


def reference_frames(frames: int, windows: str = "official") -> list[int | None]:
    """The frame each frame is compared with: None for a frame kept whole, `DROPPED` for a frame
    left out (the trailing frame of an odd count, official windows only)."""
    refs: list[int | None] = []
    for t in range(frames):
        offset, start = t % WINDOW, t - t % WINDOW
        ref: int | None = None if offset == 0 else start if offset <= 2 else t - 1
        if windows == "official" and frames > 1:
            if t == frames - 1 and frames % 2:
                ref = DROPPED
            elif offset == 2 and start >= frames - WINDOW:
                ref = None  # the f2-against-f0 pass stops before the last window
        refs.append(ref)
    return refs


def kept_per_frame(num_tokens: int, config: Config) -> int:
    """Tokens kept of a compared frame in the fixed-rate mode: `int((1 - K) * N)`."""
    return int((1 - config.prune_ratio) * num_tokens)


def _keep_and_rank(video: Tensor, config: Config) -> tuple[Tensor, Tensor]:
    """Keep mask `(B, T, N)` and, per frame, the order `(B, T, N)` in which its tokens are
    emitted (a permutation of the positions; the kept ones first for a pruned frame)."""
    B, T, N, _ = video.shape
    refs = reference_frames(T, config.windows)
    keep = torch.ones(B, T, N, dtype=torch.bool, device=video.device)
    order = torch.arange(N, device=video.device).expand(B, T, N).clone()
    dropped = [t for t, ref in enumerate(refs) if ref == DROPPED]
    keep[:, dropped] = False
    compared = [t for t, ref in enumerate(refs) if ref is not None and ref != DROPPED]
    if not compared:
        return keep, order
    sources = torch.tensor([refs[t] for t in compared], device=video.device)
    targets = torch.tensor(compared, device=video.device)
    unit = F.normalize(video, dim=-1)  # (B, T, N, C), as the official code normalizes first
    # (B, T', N) cosine of each compared token with the reference token at its position
    similarity = torch.linalg.vecdot(unit.index_select(1, targets), unit.index_select(1, sources))
    ascending = similarity.sort(dim=-1, stable=True).indices  # (B, T', N) least similar first
    if config.threshold is not None:
        chosen = similarity <= config.threshold
    else:
        k = kept_per_frame(N, config)
        chosen = torch.zeros_like(similarity, dtype=torch.bool)
        chosen.scatter_(-1, ascending[..., :k], True)
    keep[:, targets] = chosen
    if config.order == "similarity":
        order[:, targets] = ascending
    return keep, order


def temporal_keep_mask(video: Tensor, config: Config) -> Tensor:
    """Which tokens of `video (B, T, N, C)` TTM keeps: `(B, T, N)` bool."""
    return _keep_and_rank(video, config)[0]


def dycoke_ttm(video: Tensor, config: Config) -> Packed:
    """The tokens of `video (B, T, N, C)` that TTM keeps, packed time-major (zero-padded); within
    a pruned frame in `config.order`."""
    B, T, N, C = video.shape
    keep, order = _keep_and_rank(video, config)  # (B, T, N) each
    # Pack the flat source index of every token in emission order, then gather the tokens once.
    source = order + torch.arange(T, device=video.device)[None, :, None] * N  # (B, T, N)
    packed_source = pack(source[..., None].double(), keep.gather(2, order))  # (B, M, 1)
    index = packed_source.tokens[..., 0].long()  # (B, M), 0 at padding
    offset = torch.arange(B, device=video.device)[:, None] * (T * N)  # (B, 1)
    rows = (index + offset).flatten()  # (B * M,) rows of the flattened video
    tokens = video.reshape(B * T * N, C).index_select(0, rows).view(B, -1, C)  # (B, M, C)
    mask = packed_source.mask
    none = torch.full_like(index, -1)
    return Packed(
        tokens=tokens * mask[..., None],
        mask=mask,
        frame=packed_source.frame,
        position=torch.where(mask, index % N, none),
    )


def decode_keep(
    image_attention: Tensor,
    previous: Tensor | None,
    prune_ratio: float = 0.7,
    similarity: float = DECODE_SIMILARITY,
) -> Tensor | None:
    """DyCoke's decoding-stage choice for one step: `image_attention (n,)` is the new token's
    attention over the image tokens in layer `L - 1` (averaged over heads), `previous (n,)` the
    previous step's (None at the first step). Returns the image tokens layers `L..` attend to,
    ascending `(int(n (1 - P)),)`, or None when the pattern is as similar as `similarity` to the
    previous one (then the official code attends to the whole cache this step)."""
    if previous is not None:
        cosine = F.cosine_similarity(image_attention, previous, dim=0)
        if cosine >= similarity:
            return None
    k = int(image_attention.shape[0] * (1 - prune_ratio))
    top = image_attention.sort(descending=True, stable=True).indices[:k]
    return top.sort().values


# The family's one entry point (`reference_impls.pack_video`).
pack_video = dycoke_ttm
