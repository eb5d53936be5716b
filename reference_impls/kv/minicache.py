"""MiniCache: KV Cache Compression in Depth Dimension for Large Language Models, arXiv 2405.14366,
record `minicache-2024`.

No official code: the official repository AkideLiu/MiniCache (checked at
f1baccacba6bc83dc499f5db9257576397bb4ed8, 2024-09-07) holds only the project page (index.html,
method figures, abstract) and no Python, so this is written from the paper and that page.

Adjacent layers in the middle-to-deep part of an LLM hold very similar KV states, so MiniCache
stores one shared state for a pair of layers. From layer `S = ceil(start * depth)` on, layers are
paired `(S, S+1), (S+2, S+3), ...` (a last unpaired layer stays as it is). For each pair
`(a, b)`, each KV head and each token, separately for keys and values, with `x_a`, `x_b` the two
layers' vectors:

1. magnitudes `|x_a|`, `|x_b|` are kept per layer;
2. the directions are merged by spherical interpolation of the unit vectors,
   `e = sin((1 - t) W) / sin W * x_a/|x_a| + sin(t W) / sin W * x_b/|x_b|`, with `W` the angle
   between `x_a` and `x_b` (`t` weighs the deeper layer `b`); `e` is a unit vector;
3. each layer is restored as its own magnitude times the shared direction, `|x_a| e` and `|x_b| e`;
4. token retention: pairs whose normalised angular distance `d = W / pi` is large are not merged
   and both layers' vectors are stored as they are (restored exactly). The threshold is set per
   head from the prompt, relative to the spread of `d` over its tokens:
   `d > d_min + gamma * (d_max - d_min)`; it is then kept for the tokens generated later.

Since the press sees one layer at a time, the pair is merged when its second layer arrives: the
first layer's cache (already stored in `ctx.cache`) is rewritten too. During prefill both layers
attend at full precision first; the merged cache serves the following steps. While decoding, the
new tokens of a pair are merged the same way when the second layer has produced them.

Simplified: the shared state is simulated: the cache holds each layer's restored tensors, not
the shared direction, so the model computes what MiniCache's restoration would give but uses no
less memory; `MiniCachePress.packed_bytes(cache)` reports what MiniCache stores (per merged pair
and head: the shared directions, two magnitudes per token, both layers' retained tokens and
their indices; unmerged layers in full), all at `float_bytes` (fp16) with `index_bytes` per
retained index. The relative threshold form and the default `gamma` are our reading of the
paper's retention rule, not checked against code (none is released); the retention threshold
of decoded tokens is the prompt's; no quantization on top (the paper combines MiniCache with
4-bit KIVI). `config_for(keep)` maps the share of
the cache kept to the start depth: merging a share `m` of the layers keeps about `1 - m / 2`.

Shapes: keys and values `(B, H_kv, T, D)`; magnitudes, angles and retention masks `(B, H_kv, T)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..llm.llama import KVCache, PressContext
from ..registry import ImplInfo

IMPL = ImplInfo(
    name="minicache",
    title="MiniCache: cross-layer KV merging by SLERP of directions, per-layer magnitudes",
    papers=("minicache-2024",),
    family="kv-merging",
    training_free=True,
    arxiv="2405.14366",
    simplified=(
        "simulated shared storage (the cache holds restored tensors; packed_bytes reports the "
        "merged size); retention threshold relative to the prompt's angular distances; no "
        "quantization on top"
    ),
)

EPS = 1e-6  # below this sin(W) the two directions are taken as equal (linear interpolation)


@dataclass(frozen=True)
class Config:
    start: float = 0.5  # merging starts at layer ceil(start * depth); 1.0 merges nothing
    t: float = 0.6  # interpolation weight of the deeper layer of a pair
    gamma: float = 0.9  # retention threshold, relative to the spread of angular distances
    float_bytes: int = 2  # bytes of a stored element (fp16)
    index_bytes: int = 4  # bytes of a retained token's index

    def __post_init__(self) -> None:
        assert 0.0 <= self.start <= 1.0, "start must be in [0, 1]"
        assert 0.0 <= self.t <= 1.0, "t must be in [0, 1]"
        assert 0.0 <= self.gamma <= 1.0, "gamma must be in [0, 1]"
        assert self.float_bytes >= 1 and self.index_bytes >= 1

    def start_layer(self, depth: int) -> int:
        return min(depth, math.ceil(self.start * depth - 1e-9))

    def pairs(self, depth: int) -> list[tuple[int, int]]:
        """The merged layer pairs `(a, a + 1)` of a model of this depth."""
        return [(a, a + 1) for a in range(self.start_layer(depth), depth - 1, 2)]


def config_for(keep: float, model_config: object = None) -> Config:
    """Merging the layers from `start` on keeps about `(1 + start) / 2` of the cache (magnitudes
    and retained tokens come on top), so `start = 2 keep - 1`, at least 0; the identity (no
    merging) at `keep >= 1`."""
    assert keep > 0.0, "keep must be > 0"
    return Config(start=min(1.0, max(0.0, 2.0 * keep - 1.0)))


def angles(xa: Tensor, xb: Tensor) -> Tensor:
    """Angle `W` in `[0, pi]` between the per-token vectors of two layers: `(B, H_kv, T)`.

    As `2 atan2(|ua - ub|, |ua + ub|)` of the unit vectors: exactly 0 for equal directions and
    accurate for small angles, where `arccos` of the cosine is not.
    """
    ua = xa / xa.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ub = xb / xb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 2 * torch.atan2((ua - ub).norm(dim=-1), (ua + ub).norm(dim=-1))


def slerp(xa: Tensor, xb: Tensor, t: float) -> Tensor:
    """Unit direction `(B, H_kv, T, D)` a share `t` of the way from x_a's direction to x_b's."""
    ua = xa / xa.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ub = xb / xb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    omega = angles(xa, xb).unsqueeze(-1)  # (B, H_kv, T, 1)
    sin = omega.sin()
    parallel = sin < EPS
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    spherical = ((1 - t) * omega).sin() / safe * ua + (t * omega).sin() / safe * ub
    linear = (1 - t) * ua + t * ub
    linear = linear / linear.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(parallel, linear, spherical)


def retention_threshold(distance: Tensor, gamma: float) -> Tensor:
    """Per head `(B, H_kv)`: `d_min + gamma * (d_max - d_min)` over the tokens of `(B, H_kv, T)`."""
    low, high = distance.amin(dim=-1), distance.amax(dim=-1)
    return low + gamma * (high - low)


def merge_pair(
    xa: Tensor, xb: Tensor, t: float, threshold: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge two layers' states `(B, H_kv, T, D)`: `(restored_a, restored_b, retained)`.

    Tokens whose normalised angular distance exceeds `threshold` `(B, H_kv)` are retained: both
    layers keep their own vectors. The others are each layer's magnitude times the shared
    SLERP direction.
    """
    direction = slerp(xa, xb, t)  # (B, H_kv, T, D)
    retained = angles(xa, xb) / math.pi > threshold.unsqueeze(-1)  # (B, H_kv, T)
    keep = retained.unsqueeze(-1)  # (B, H_kv, T, 1)
    restored_a = torch.where(keep, xa, xa.norm(dim=-1, keepdim=True) * direction)
    restored_b = torch.where(keep, xb, xb.norm(dim=-1, keepdim=True) * direction)
    return restored_a, restored_b, retained


@dataclass
class PairState:
    """What a merged pair keeps between steps: thresholds and retention masks, keys and values."""

    thresholds: tuple[Tensor, Tensor]  # (B, H_kv) each
    retained: list[Tensor] = field(default_factory=list)  # keys' and values' masks (B, H_kv, T)


class MiniCachePress:
    """Merge each pair of layers when its second layer arrives; rewrite the first in the cache."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pairs: dict[int, PairState] = {}  # first layer of a pair -> its state

    def _pair_of(self, layer: int, depth: int) -> tuple[int, int] | None:
        for a, b in self.config.pairs(depth):
            if layer == b:
                return a, b
        return None

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        pair = self._pair_of(ctx.layer, ctx.config.depth)
        if pair is None:
            return ctx.keys, ctx.values
        a, _ = pair
        merged, states = [], []
        for xa, xb in ((ctx.cache.keys[a], ctx.keys), (ctx.cache.values[a], ctx.values)):
            assert xa.shape == xb.shape, "MiniCache merges layers holding the same tokens"
            threshold = retention_threshold(angles(xa, xb) / math.pi, self.config.gamma)
            restored_a, restored_b, retained = merge_pair(xa, xb, self.config.t, threshold)
            merged.append((restored_a, restored_b))
            states.append((threshold, retained))
        (keys_a, keys_b), (values_a, values_b) = merged
        ctx.cache.keys[a], ctx.cache.values[a] = keys_a, values_a
        self.pairs[a] = PairState((states[0][0], states[1][0]), [states[0][1], states[1][1]])
        return keys_b, values_b

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        pair = self._pair_of(ctx.layer, ctx.config.depth)
        if pair is None:
            return ctx.keys, ctx.values
        a, _ = pair
        state = self.pairs[a]
        n = ctx.queries.shape[2]  # new tokens, stored unmerged by layer a this step
        out = []
        for i, (stored_a, xb) in enumerate(
            ((ctx.cache.keys[a], ctx.keys), (ctx.cache.values[a], ctx.values))
        ):
            assert stored_a.shape == xb.shape, "MiniCache merges layers holding the same tokens"
            restored_a, restored_b, retained = merge_pair(
                stored_a[:, :, -n:], xb[:, :, -n:], self.config.t, state.thresholds[i]
            )
            state.retained[i] = torch.cat([state.retained[i], retained], dim=-1)
            out.append(
                (
                    torch.cat([stored_a[:, :, :-n], restored_a], dim=2),
                    torch.cat([xb[:, :, :-n], restored_b], dim=2),
                )
            )
        (keys_a, keys_b), (values_a, values_b) = out
        ctx.cache.keys[a], ctx.cache.values[a] = keys_a, values_a
        return keys_b, values_b

    def packed_bytes(self, cache: KVCache) -> int:
        """Bytes MiniCache stores for this cache: per merged pair, head and tensor the shared
        directions (T x D), two magnitudes per token, both layers' retained vectors and one index
        per retained token; unmerged layers in full."""
        c = self.config
        merged = {a: b for a, b in c.pairs(len(cache)) if a in self.pairs}
        total = 0
        for layer in range(len(cache)):
            B, H, T, D = cache.keys[layer].shape
            if layer in merged:
                for retained in self.pairs[layer].retained:  # keys, then values
                    total += B * H * T * (D + 2) * c.float_bytes
                    total += int(retained.sum()) * (2 * D * c.float_bytes + c.index_bytes)
            elif layer not in merged.values():
                total += 2 * B * H * T * D * c.float_bytes
        return total


def make_press(config: Config = Config()) -> MiniCachePress:
    return MiniCachePress(config)
