"""KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache, arXiv 2402.02750,
record `kivi-2024`.

Checked against the official repository jy-yuan/KIVI (models/llama_kivi.py, quant/new_pack.py);
no code was taken from it: this is written from the paper.

KIVI stores the KV cache in `bits` (2, 4 or 8) with asymmetric uniform quantization: a group of
entries is stored as integer codes `q = round((x - min) / scale)`, `scale = (max - min) /
(2^bits - 1)`, plus the group's `scale` and `min` (the zero point), and read back as
`q * scale + min`, so every entry is off by at most `scale / 2`. The two halves differ:

1. keys are quantized per channel: a group is `group` consecutive tokens of one channel (keys
   have outlier channels, so each channel gets its own range);
2. values are quantized per token: a group is `group` consecutive channels of one token;
3. the most recent tokens stay in full precision (the residual). Keys are quantized in whole
   blocks of `residual` tokens: after prefill the first `T - T % residual` keys are quantized and
   the remainder waits; during decoding the residual grows until it holds `residual` tokens and
   is then quantized at once. Values keep a sliding window of the last `residual` tokens in full
   precision; a value is quantized when it leaves the window.

As in KIVI, the layer attends at full precision over the prompt during prefill and the press
then stores the quantized cache; later steps attend over it.

Simplified: quantization is simulated: the cache holds the dequantized tensors in the model's
dtype, not packed codes, so the model attends over the values KIVI's kernels would read from
the codes but uses no less memory. `KiviPress.packed_bytes(cache)` reports the size KIVI would
store: `bits` per quantized entry, an fp16 scale and zero point per group, fp16 residual
entries. No fused kernels; a group whose entries are all equal (scale 0) is stored exactly.
`config_for(keep)` reads `keep` as the share of fp16 bits kept (1.0: no quantization).

Shapes: keys and values `(B, H_kv, T, D)`; key groups `(B, H_kv, T / group, group, D)`; value
groups `(B, H_kv, T, D / group, group)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..llm.llama import KVCache, PressContext
from ..registry import ImplInfo

IMPL = ImplInfo(
    name="kivi",
    title="KIVI: per-channel key, per-token value asymmetric quantization with a residual",
    papers=("kivi-2024",),
    family="kv-quantization",
    training_free=True,
    arxiv="2402.02750",
    simplified=(
        "simulated quantization (the cache holds dequantized tensors; packed_bytes reports the "
        "packed size); no fused kernels"
    ),
)

BITS = (2, 4, 8, 16)  # 16: no quantization, the cache is left as it is


@dataclass(frozen=True)
class Config:
    bits: int = 2  # code width of keys and values; 16 switches the method off
    group: int = 32  # entries sharing one scale and zero point (KIVI's group size)
    residual: int = 128  # full-precision recent tokens (KIVI's residual length R)
    float_bytes: int = 2  # bytes of a scale, a zero point or a residual entry (fp16)

    def __post_init__(self) -> None:
        assert self.bits in BITS, f"bits must be one of {BITS}"
        assert self.group >= 1, "group must be >= 1"
        assert self.residual >= self.group and self.residual % self.group == 0, (
            "residual must be a positive multiple of group (keys are quantized in whole groups)"
        )
        assert self.float_bytes >= 1


def config_for(keep: float, head_dim: int = 64) -> Config:
    """`keep` is the share of fp16 bits kept: 8 bits from 0.5, 4 from 0.25, else 2; the identity
    (no quantization) at `keep >= 1`. Scales, zero points and the residual come on top. The
    group shrinks to the head dimension for models with heads narrower than KIVI's 32."""
    assert keep > 0.0, "keep must be > 0"
    if keep >= 1.0:
        return Config(bits=16)
    bits = next((b for b in (8, 4) if b / 16 <= keep), 2)
    group = min(Config.group, head_dim)
    return Config(bits=bits, group=group, residual=Config.residual // Config.group * group)


def quantize(x: Tensor, bits: int, group: int, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric uniform quantization in groups of `group` consecutive entries along `dim`.

    Returns `(codes, scale, zero)`: codes shaped like `x` (integers in `[0, 2^bits - 1]`, kept in
    x's dtype), and per group `scale` and `zero` (the group's minimum), shaped like `x` with `dim`
    of size `x.shape[dim] // group` and a trailing axis of size 1.
    """
    assert x.shape[dim] % group == 0, (
        f"size {x.shape[dim]} along dim {dim} is not a multiple of {group}"
    )
    levels = 2**bits - 1
    moved = x.movedim(dim, -1)  # (..., n)
    grouped = moved.reshape(*moved.shape[:-1], moved.shape[-1] // group, group)  # (..., n/G, G)
    zero = grouped.amin(dim=-1, keepdim=True)  # (..., n/G, 1)
    scale = (grouped.amax(dim=-1, keepdim=True) - zero) / levels  # (..., n/G, 1)
    # A constant group (scale 0) gets code 0 and is read back exactly as its minimum.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = ((grouped - zero) / safe).round().clamp(0, levels)  # (..., n/G, G)
    codes = codes.reshape(moved.shape).movedim(-1, dim)  # like x
    return codes, scale.movedim(-2, dim), zero.movedim(-2, dim)


def dequantize(codes: Tensor, scale: Tensor, zero: Tensor, group: int, dim: int) -> Tensor:
    """`codes * scale + zero`, each group's scale and zero applied to its `group` entries."""
    moved = codes.movedim(dim, -1)  # (..., n)
    grouped = moved.reshape(*moved.shape[:-1], moved.shape[-1] // group, group)  # (..., n/G, G)
    out = grouped * scale.movedim(dim, -2) + zero.movedim(dim, -2)  # (..., n/G, G)
    return out.reshape(moved.shape).movedim(-1, dim)


def fake_quantize(x: Tensor, bits: int, group: int, dim: int) -> Tensor:
    """`x` quantized and read back: what a quantized cache holds, in x's dtype."""
    if x.shape[dim] == 0:
        return x
    codes, scale, zero = quantize(x, bits, group, dim)
    return dequantize(codes, scale, zero, group, dim)


def quantize_keys(keys: Tensor, bits: int, group: int) -> Tensor:
    """Per-channel: groups of `group` tokens `(B, H_kv, T, D)`, statistics per channel."""
    return fake_quantize(keys, bits, group, dim=2)


def quantize_values(values: Tensor, bits: int, group: int) -> Tensor:
    """Per-token: groups of `group` channels of one token `(B, H_kv, T, D)`."""
    return fake_quantize(values, bits, group, dim=3)


@dataclass
class LayerSplit:
    """How many of a layer's tokens are quantized; the rest is the full-precision residual."""

    keys: int
    values: int


class KiviPress:
    """Quantize after prefill, then keep the residual/quantized split right while decoding."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.splits: dict[int, LayerSplit] = {}

    @property
    def enabled(self) -> bool:
        return self.config.bits < 16

    def _check(self, ctx: PressContext) -> None:
        D = ctx.keys.shape[-1]
        if D % self.config.group:
            raise ValueError(f"KIVI group {self.config.group} does not divide head_dim {D}")

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        T = ctx.keys.shape[2]
        self.splits[ctx.layer] = LayerSplit(0, 0)
        if not self.enabled:
            return ctx.keys, ctx.values
        self._check(ctx)
        return self._advance(ctx.layer, ctx.keys, ctx.values, T)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        if not self.enabled:
            return ctx.keys, ctx.values
        return self._advance(ctx.layer, ctx.keys, ctx.values, ctx.keys.shape[2])

    def _advance(self, layer: int, keys: Tensor, values: Tensor, T: int) -> tuple[Tensor, Tensor]:
        """Quantize what has left the residual since the last step; the rest is untouched."""
        c = self.config
        split = self.splits[layer]
        # Keys: whole blocks of `residual` tokens, each quantized in groups of `group` tokens.
        n_keys = split.keys + (T - split.keys) // c.residual * c.residual
        if n_keys > split.keys:
            block = quantize_keys(keys[:, :, split.keys : n_keys], c.bits, c.group)
            keys = torch.cat([keys[:, :, : split.keys], block, keys[:, :, n_keys:]], dim=2)
        # Values: everything older than the last `residual` tokens, token by token.
        n_values = max(split.values, T - c.residual)
        if n_values > split.values:
            block = quantize_values(values[:, :, split.values : n_values], c.bits, c.group)
            values = torch.cat(
                [values[:, :, : split.values], block, values[:, :, n_values:]], dim=2
            )
        self.splits[layer] = LayerSplit(n_keys, n_values)
        return keys, values

    def packed_bytes(self, cache: KVCache) -> int:
        """Bytes KIVI stores for this cache: codes at `bits` per entry, an fp16 scale and zero
        point per group, fp16 residual entries (the whole cache in fp16 when disabled)."""
        c = self.config
        bits = 0
        for layer in range(len(cache)):
            B, H, T, D = cache.keys[layer].shape
            split = self.splits.get(layer, LayerSplit(0, 0)) if self.enabled else LayerSplit(0, 0)
            for quantized, groups in (
                (split.keys, split.keys // c.group * D),  # per channel, per block of G tokens
                (split.values, split.values * (D // c.group)),  # per token, per G channels
            ):
                codes = quantized * D * c.bits
                statistics = groups * 2 * c.float_bytes * 8  # scale and zero point
                residual = (T - quantized) * D * c.float_bytes * 8
                bits += B * H * (codes + statistics + residual)
        return -(-bits // 8)


def make_press(config: Config = Config()) -> KiviPress:
    return KiviPress(config)
