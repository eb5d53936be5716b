"""A small LLaMA of our own with an explicit KV cache and a hook for KV-cache methods.

Architecture as LLaMA (and SmolLM2): RMSNorm pre-norm blocks, rotary position embeddings,
grouped-query attention (`heads` query heads share `kv_heads` key/value heads), SwiGLU MLP, tied
or untied output embedding. Attention is eager so methods can read the attention probabilities.
`tests/impls/llm/test_llama.py` checks that the logits equal transformers' LlamaForCausalLM on
the same weights.

The cache (`KVCache`) holds, per layer, keys and values `(B, H_kv, T, D)` with the keys already
rotated (as in transformers), plus how many tokens the model has seen, which is the position of
the next token whatever was evicted. A KV-cache method is a `Press`: after a layer has attended
over the full prompt (prefill) its `prefill` hook returns what to keep; during generation its
`decode` hook can evict again. Both get a `PressContext` with the layer's new keys, values,
queries and attention probabilities. Presses never see or change the model's weights.

Shapes: ids `(B, T)`; hidden `(B, T, C)`; queries `(B, H, T, D)`; keys/values `(B, H_kv, T, D)`;
attention `(B, H, T_q, T_k)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 49152
    width: int = 576
    depth: int = 30
    heads: int = 9
    kv_heads: int = 3
    head_dim: int = 64
    mlp_hidden: int = 1536
    rope_theta: float = 100000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        assert self.heads % self.kv_heads == 0, "query heads must be a multiple of KV heads"
        assert self.head_dim % 2 == 0, "rotary embeddings need an even head dimension"


SMOLLM2_135M = LlamaConfig()
TINY_LLAMA = LlamaConfig(
    vocab_size=97, width=48, depth=3, heads=6, kv_heads=2, head_dim=8, mlp_hidden=96
)


@dataclass
class KVCache:
    """Per-layer keys and values `(B, H_kv, T, D)`; `seen` tokens went through the model."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    seen: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    def length(self, layer: int = 0) -> int:
        """Tokens held for a layer (methods may keep different lengths per layer)."""
        return self.keys[layer].shape[2] if layer < len(self.keys) else 0

    def nbytes(self) -> int:
        """Bytes of the stored tensors (a quantizing method reports its own packed size)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class PressContext:
    """What a KV-cache method sees for one layer at one step."""

    layer: int
    keys: Tensor  # (B, H_kv, T, D) everything this layer now holds, the new tokens last
    values: Tensor  # (B, H_kv, T, D)
    queries: Tensor  # (B, H, T_new, D) the new tokens' queries, rotated
    attn: Tensor  # (B, H, T_new, T) attention probabilities of the new tokens
    hidden: Tensor  # (B, T_new, C) the layer's input for the new tokens
    cache: KVCache  # earlier layers of this step are already stored
    seen: int  # tokens seen before this step
    config: LlamaConfig


class Press(Protocol):
    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]: ...

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]: ...


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


def rotary(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin `(T, D)` for integer positions `(T,)`."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim
    )
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply rotary embeddings to `(B, H, T, D)` (the rotate-half convention of LLaMA)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.width, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.width, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.width, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.width, bias=False)

    def forward(
        self,
        x: Tensor,
        layer: int,
        cache: KVCache,
        cos: Tensor,
        sin: Tensor,
        press: Press | None,
        seen: int,
    ) -> Tensor:
        c = self.c
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, c.heads, c.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if layer < len(cache):
            k = torch.cat([cache.keys[layer], k], dim=2)  # (B, Hkv, T_all, D)
            v = torch.cat([cache.values[layer], v], dim=2)
        groups = c.heads // c.kv_heads
        k_all = k.repeat_interleave(groups, dim=1)  # (B, H, T_all, D)
        v_all = v.repeat_interleave(groups, dim=1)
        scores = (q @ k_all.transpose(-2, -1)) / c.head_dim**0.5  # (B, H, T, T_all)
        # Causal among the new tokens; every cached token is in the past.
        past = k.shape[2] - T
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        mask = torch.cat([torch.zeros(T, past, dtype=torch.bool, device=x.device), future], dim=1)
        scores = scores.masked_fill(mask, float("-inf"))
        attn = scores.float().softmax(dim=-1).to(q.dtype)  # (B, H, T, T_all)
        out = (attn @ v_all).transpose(1, 2).reshape(B, T, c.heads * c.head_dim)
        if press is not None:
            ctx = PressContext(layer, k, v, q, attn, x, cache, seen, c)
            k, v = press.prefill(ctx) if seen == 0 else press.decode(ctx)
        if layer < len(cache):
            cache.keys[layer], cache.values[layer] = k, v
        else:
            cache.keys.append(k)
            cache.values.append(v)
        return self.o_proj(out)


class Mlp(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.width, c.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(c.width, c.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(c.mlp_hidden, c.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.width, c.rms_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.width, c.rms_eps)
        self.mlp = Mlp(c)


class Llama(nn.Module):
    """`forward(ids (B, T), cache) -> logits (B, T, vocab)`; the cache is extended in place."""

    def __init__(self, config: LlamaConfig = TINY_LLAMA) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.width)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.width, config.rms_eps)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self, ids: Tensor, cache: KVCache | None = None, press: Press | None = None
    ) -> Tensor:
        cache = cache if cache is not None else KVCache()
        seen = cache.seen
        positions = torch.arange(seen, seen + ids.shape[1], device=ids.device)
        cos, sin = rotary(positions, self.config.head_dim, self.config.rope_theta)
        x = self.embed_tokens(ids)  # (B, T, C)
        for index, layer in enumerate(self.layers):
            assert isinstance(layer, Layer)
            x = x + layer.self_attn(layer.input_layernorm(x), index, cache, cos, sin, press, seen)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.seen = seen + ids.shape[1]
        return self.lm_head(self.norm(x))


@torch.no_grad()
def generate(
    model: Llama,
    ids: Tensor,
    max_new_tokens: int,
    press: Press | None = None,
    stop: int | None = None,
) -> tuple[Tensor, KVCache]:
    """Greedy decoding from a prompt `ids (1, T)`; returns the new tokens `(1, n)` and the cache."""
    cache = KVCache()
    logits = model(ids, cache, press)
    out = []
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
        out.append(token)
        if (stop is not None and int(token) == stop) or step == max_new_tokens - 1:
            break
        logits = model(token, cache, press)
    return torch.cat(out, dim=1), cache


@torch.no_grad()
def perplexity(model: Llama, ids: Tensor, prefix: int, press: Press | None = None) -> float:
    """Perplexity of `ids[:, prefix:]` given the first `prefix` tokens, decoding one token at a
    time after the prefix so that a press's cache (not the full prompt) conditions every step."""
    cache = KVCache()
    logits = model(ids[:, :prefix], cache, press)
    nll = 0.0
    for t in range(prefix, ids.shape[1]):
        log_probs = logits[:, -1].float().log_softmax(dim=-1)
        nll -= float(log_probs[0, ids[0, t]])
        logits = model(ids[:, t : t + 1], cache, press)
    return float(torch.tensor(nll / (ids.shape[1] - prefix)).exp())
