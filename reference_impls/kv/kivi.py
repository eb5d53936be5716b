"""KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache, arXiv 2402.02750,
record `kivi-2024`.

Checked against the official repository jy-yuan/KIVI at commit 876b4d2d (`quant/new_pack.py`:
`quant_and_pack_kcache`, `quant_and_pack_vcache`, `pack_tensor`, `unpack_tensor`,
`unpack_and_dequant_kcache`/`_vcache`; the cache policy of `models/llama_kivi.py`,
`LlamaAttention_KIVI.forward`); no code was taken from it.

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

As in KIVI, the layer attends at full precision over the prompt during prefill and the cache
then holds the quantized form; later steps attend over it.

Two ways to run it:

- `KiviCache(config)`, the real storage: pass it as the model's cache
  (`model(ids, KiviCache(config))`, no press). It holds, per layer, the codes packed into
  integer words as the official code packs them (`32 // bits` codes per int32 word along the
  packed axis, code `j` of a word in bits `[j * bits, (j + 1) * bits)`; keys packed along the
  tokens, values along the channels), the scales and zero points in the model's dtype, and the
  full-precision residuals; `nbytes()` counts the bytes of exactly those tensors. The model
  reads a layer dequantized (one layer at a time, transient; the official fused kernels read the
  codes directly). `Config.word_bits = 8` packs into uint8 words for heads too narrow for int32
  words (the official code requires `head_dim` and `residual` to be multiples of `32 // bits`).
  Example, one layer, 3 KV heads, 1024 tokens, head_dim 64, float16, 2 bits, G = 32, R = 128:
  187,392 bytes held against 786,432 for the float16 cache (23.8%).
- `KiviPress(config)` (`make_press`), the same arithmetic for the shared KV-press interface:
  the model's ordinary cache receives the dequantized tensors, so the model computes exactly
  what it computes with `KiviCache` (the tests check the logits are equal) but no memory is
  saved; `packed_bytes(cache)` reports what KIVI stores.

Check against the official code (run in memory from the fetched snapshot, outside the project,
with a stub for the `triton` import): `pack_tensor`/`unpack_tensor` against `pack_codes`/
`unpack_codes` (bits 2, 4, 8; pack axis 2 and 3; 12 seeded cases), and
`quant_and_pack_kcache`/`quant_and_pack_vcache` and `unpack_and_dequant_*` against
`quantize_packed`/`dequantize_packed` (bits 2, 4, 8; G in {16, 32}; float16 and float32; 12
seeded cases, an outlier key channel): packed words equal bit for bit, scales, zero points and
dequantized tensors equal exactly. The residual policy follows
`LlamaAttention_KIVI.forward` (prefill split and the decoding rule), read, not run (it needs the
CUDA kernels).

Simplified: no fused kernels (the model attends over a dequantized copy of one layer at a time);
a group whose entries are all equal (scale 0) is stored exactly (the official division gives
NaN there). `config_for(keep)` reads `keep` as the share of fp16 bits kept (1.0: no
quantization).

Shapes: keys and values `(B, H_kv, T, D)`; key groups `(B, H_kv, T / group, group, D)`; value
groups `(B, H_kv, T, D / group, group)`; packed keys `(B, H_kv, T / per_word, D)`, packed
values `(B, H_kv, T, D / per_word)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import head_dim_of
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
        "no fused kernels: KiviCache holds packed codes and the model attends over one "
        "dequantized layer at a time; the press form keeps dequantized tensors"
    ),
)

BITS = (2, 4, 8, 16)  # 16: no quantization, the cache is left as it is
WORD_DTYPES = {32: torch.int32, 8: torch.uint8}  # packed word width -> storage dtype


@dataclass(frozen=True)
class Config:
    bits: int = 2  # code width of keys and values; 16 switches the method off
    group: int = 32  # entries sharing one scale and zero point (KIVI's group size)
    residual: int = 128  # full-precision recent tokens (KIVI's residual length R)
    float_bytes: int = 2  # bytes of a scale, a zero point or a residual entry (fp16)
    word_bits: int = 32  # KiviCache packs codes into words of this width (official: int32)

    def __post_init__(self) -> None:
        assert self.bits in BITS, f"bits must be one of {BITS}"
        assert self.word_bits in WORD_DTYPES, f"word_bits must be one of {tuple(WORD_DTYPES)}"
        assert self.group >= 1, "group must be >= 1"
        assert self.residual >= self.group and self.residual % self.group == 0, (
            "residual must be a positive multiple of group (keys are quantized in whole groups)"
        )
        assert self.float_bytes >= 1


def config_for(keep: float, model_config: object = None, head_dim: int = 64) -> Config:
    """`keep` is the share of fp16 bits kept: 8 bits from 0.5, 4 from 0.25, else 2; the identity
    (no quantization) at `keep >= 1`. Scales, zero points and the residual come on top. The
    group shrinks to the head dimension for models with heads narrower than KIVI's 32."""
    head_dim = head_dim_of(model_config, head_dim)
    assert keep > 0.0, "keep must be > 0"
    if keep >= 1.0:
        return Config(bits=16)
    bits = next((b for b in (8, 4) if b / 16 <= keep), 2)
    group = min(Config.group, head_dim)
    residual = Config.residual // Config.group * group
    per_word = 32 // bits
    word_bits = 32 if head_dim % per_word == 0 and residual % per_word == 0 else 8
    return Config(bits=bits, group=group, residual=residual, word_bits=word_bits)


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


# --- real packed storage -------------------------------------------------------------------------


def pack_codes(codes: Tensor, bits: int, dim: int, word_bits: int = 32) -> Tensor:
    """Integer codes in `[0, 2^bits)` packed along `dim`, `word_bits // bits` per word: code `j`
    of a word in bits `[j * bits, (j + 1) * bits)` (the official layout). int32 words (their
    bit pattern; a word with its top bit set reads negative) or uint8 words; `dim` shrinks by
    the codes per word."""
    per_word = word_bits // bits
    moved = codes.movedim(dim, -1).long()  # (..., n)
    n = moved.shape[-1]
    if n % per_word:
        raise ValueError(f"KIVI: {n} codes along dim {dim} do not fill {word_bits}-bit words")
    grouped = moved.reshape(*moved.shape[:-1], n // per_word, per_word)  # (..., n/p, p)
    shifts = torch.arange(per_word, device=codes.device) * bits  # (p,)
    words = (grouped << shifts).sum(dim=-1)  # (..., n/p) in [0, 2^word_bits), disjoint bits
    if word_bits == 32:  # the same 32 bits as a signed int32
        words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(WORD_DTYPES[word_bits]).movedim(-1, dim)


def unpack_codes(words: Tensor, bits: int, dim: int) -> Tensor:
    """The codes of `pack_codes` back, uint8, `dim` grown by the codes per word."""
    word_bits = 32 if words.dtype == torch.int32 else 8
    per_word = word_bits // bits
    moved = words.movedim(dim, -1).long() & (2**word_bits - 1)  # (..., n/p) unsigned
    shifts = torch.arange(per_word, device=words.device) * bits  # (p,)
    codes = (moved[..., None] >> shifts) & (2**bits - 1)  # (..., n/p, p)
    return codes.reshape(*moved.shape[:-1], -1).to(torch.uint8).movedim(-1, dim)


@dataclass
class PackedCodes:
    """Quantized entries as stored: packed code words and each group's scale and zero point."""

    words: Tensor  # int32 or uint8 words along the packed axis
    scale: Tensor  # per group, the model's dtype
    zero: Tensor  # per group (the group's minimum)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.words, self.scale, self.zero))


def quantize_packed(x: Tensor, bits: int, group: int, dim: int, word_bits: int = 32) -> PackedCodes:
    """`quantize` then `pack_codes` along the same `dim`."""
    codes, scale, zero = quantize(x, bits, group, dim)
    return PackedCodes(pack_codes(codes, bits, dim, word_bits), scale, zero)


def dequantize_packed(packed: PackedCodes, bits: int, group: int, dim: int) -> Tensor:
    """The entries `packed` stands for, in the dtype of its scales."""
    codes = unpack_codes(packed.words, bits, dim).to(packed.scale.dtype)
    return dequantize(codes, packed.scale, packed.zero, group, dim)


def _join(old: PackedCodes | None, new: PackedCodes) -> PackedCodes:
    """Packed blocks joined along the token axis (dim 2 of words, scales and zero points)."""
    if old is None:
        return new
    return PackedCodes(
        torch.cat([old.words, new.words], dim=2),
        torch.cat([old.scale, new.scale], dim=2),
        torch.cat([old.zero, new.zero], dim=2),
    )


class _Stored:
    """One side (keys or values) of one layer: the quantized part and the residual."""

    def __init__(self, residual: Tensor) -> None:
        self.quantized: PackedCodes | None = None
        self.count = 0  # tokens in `quantized`
        self.residual = residual  # (B, H_kv, R', D) full precision, the newest tokens

    @property
    def length(self) -> int:
        return self.count + self.residual.shape[2]


class _Side:
    """The list-like view the model uses for `cache.keys` or `cache.values`: reading a layer
    dequantizes it; writing a layer back stores the tokens appended since the last read (the
    model writes back what it read with the new tokens last) and quantizes what has left the
    residual."""

    def __init__(self, config: Config, keys: bool) -> None:
        self.config = config
        self.keys = keys
        self.dim = 2 if keys else 3  # keys: groups along the tokens; values: along the channels
        self.layers: list[_Stored] = []

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> Tensor:
        stored, c = self.layers[layer], self.config
        if stored.quantized is None:
            return stored.residual
        old = dequantize_packed(stored.quantized, c.bits, c.group, self.dim)
        return torch.cat([old.to(stored.residual.dtype), stored.residual], dim=2)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[layer] for layer in range(len(self)))

    def append(self, x: Tensor) -> None:
        self._check(x)
        self.layers.append(_Stored(x.new_empty(*x.shape[:2], 0, x.shape[3])))
        self._store(self.layers[-1], x)

    def __setitem__(self, layer: int, x: Tensor) -> None:
        stored = self.layers[layer]
        assert x.shape[2] >= stored.length, "a KiviCache only grows (no eviction)"
        self._store(stored, x[:, :, stored.length :])

    def _check(self, x: Tensor) -> None:
        c = self.config
        if c.bits == 16:
            return
        per_word = c.word_bits // c.bits
        D = x.shape[-1]
        if D % c.group:
            raise ValueError(f"KIVI group {c.group} does not divide head_dim {D}")
        if D % per_word or c.residual % per_word:
            raise ValueError(
                f"KIVI: head_dim {D} and residual {c.residual} must be multiples of the "
                f"{per_word} codes per {c.word_bits}-bit word (try word_bits=8)"
            )

    def _store(self, stored: _Stored, new: Tensor) -> None:
        c = self.config
        residual = torch.cat([stored.residual, new], dim=2)  # (B, H_kv, R', D)
        if c.bits == 16:
            stored.residual = residual
            return
        n = residual.shape[2]
        # keys: whole blocks of `residual` tokens; values: all but the last `residual` tokens
        out = n // c.residual * c.residual if self.keys else max(0, n - c.residual)
        if out:
            block = quantize_packed(residual[:, :, :out], c.bits, c.group, self.dim, c.word_bits)
            stored.quantized = _join(stored.quantized, block)
            stored.count += out
            # a copy, so that the quantized tokens' float storage is freed, not kept by a view
            residual = residual[:, :, out:].clone()
        stored.residual = residual

    def nbytes(self) -> int:
        total = 0
        for stored in self.layers:
            if stored.quantized is not None:
                total += stored.quantized.nbytes()
            total += stored.residual.numel() * stored.residual.element_size()
        return total


class KiviCache(KVCache):
    """A `KVCache` that stores KIVI's packed codes: pass it to the model instead of a plain cache
    (and no press). `nbytes()` is what it holds; `quantized(layer)` how many keys and values
    of a layer are stored as codes."""

    def __init__(self, config: Config = Config()) -> None:
        super().__init__()
        self.config = config
        # The model only takes len(), indexes, assigns and appends these (llm/llama.py).
        self.keys = _Side(config, keys=True)  # type: ignore[assignment]
        self.values = _Side(config, keys=False)  # type: ignore[assignment]

    def _sides(self) -> tuple[_Side, _Side]:
        assert isinstance(self.keys, _Side) and isinstance(self.values, _Side)
        return self.keys, self.values

    def length(self, layer: int = 0) -> int:
        keys, _ = self._sides()
        return keys.layers[layer].length if layer < len(keys) else 0

    def quantized(self, layer: int) -> LayerSplit:
        keys, values = self._sides()
        return LayerSplit(keys.layers[layer].count, values.layers[layer].count)

    def nbytes(self) -> int:
        """Bytes of the tensors held: packed words, scales, zero points, residuals."""
        keys, values = self._sides()
        return keys.nbytes() + values.nbytes()
