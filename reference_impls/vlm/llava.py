"""A tiny LLaVA-style vision-language model with hook points for visual-token reduction.

Built in code with random weights (nothing is downloaded), after LLaVA-1.5:

- a vision encoder: the DeiT-style ViT of `reference_impls.vision.vit` (patch embedding, CLS
  token, pre-norm blocks). As in LLaVA, the language model reads the patch tokens of one block
  near the top (`LlavaConfig.select_block`, by default the penultimate block, CLIP's layer -2),
  CLS dropped; the blocks after it are not run (their output is unused);
- a projector: any `nn.Module` mapping `(B, N, C_vis) -> (B, M, C_llm)`; by default LLaVA-1.5's
  two-layer MLP (`M == N`), but a compressing projector (`M < N`) plugs in the same way;
- a language model: the LLaMA of `reference_impls.llm.llama` (RMSNorm, rotary positions,
  grouped-query attention, eager attention, an explicit `KVCache`). Its layers are reused as
  they are; this module only runs them on embeddings instead of token ids.

A prompt is a text prefix `(B, P)`, an image, and a text suffix `(B, S)` (the question): the
language model reads `[prefix | visual tokens | suffix]`. `Llava.prefill` runs the prompt once
and fills the cache; `generate` then decodes greedily with the cache (`Llava.step`).

Hook points (set and restored by `attach`, a context manager; methods never edit weights):

(a) `visual_reducer(state: VisualState) -> (B, M', C_llm)`: replaces "project the patch
    features" between the encoder and the language model. It sees every encoder block's input,
    attention and head-averaged keys (`VisionOutput`), the selected patch features, the prompt
    ids and the model, so encoder-side methods (FasterVLM, VisionZip, PruMerge, HiRED, TRIM, the
    baselines) can select or merge in the vision space and then call `state.project`.
(b) `llm_reducers[l](state: LlmState) -> (hidden, positions, visual_len)`: runs during prefill
    just before language-model layer `l` (so "after layer l-1"), sees the hidden states, the
    attention probabilities of layer `l-1` and the token layout, and returns a shorter sequence.
    Text tokens are never dropped (use `keep_visual`); kept tokens keep their original rotary
    positions, so decoding continues at position `cache.seen` (as FastV's code does). The cache
    of layer `l-1` and below keeps every token; layers from `l` on hold only what was kept.

After a prefill, `model.counts` holds the visual-token counts at every stage: patch tokens out
of the encoder, visual tokens into the language model, and per layer the visual and text tokens
that entered it. A KV-cache method (`reference_impls.llm.llama.Press`) can be passed alongside.

Shapes: images `(B, 3, H, W)`, or `(B, V, 3, H, W)` for V views of one image (LLaVA-NeXT-style
crops, see `anyres_views`); vision tokens `(B*V, 1 + N, C_vis)` with CLS first; patch features
`(B, V*N, C_vis)`; language-model hidden states `(B, T, C)`; positions `(B, T)`; attention
`(B, H, T, T)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..llm.llama import (
    KVCache,
    Layer,
    Llama,
    LlamaConfig,
    Press,
    PressContext,
    rotary,
    rotate,
)
from ..restore import setting
from ..vision.vit import Block, VisionTransformer, ViTConfig


@dataclass(frozen=True)
class LlavaConfig:
    vision: ViTConfig
    llm: LlamaConfig
    select_block: int = -2  # encoder block whose output the projector reads (-2: penultimate)

    def __post_init__(self) -> None:
        depth = self.vision.depth
        assert -depth <= self.select_block < depth, "select_block out of range"

    @property
    def feature_block(self) -> int:
        """`select_block` as a non-negative block index."""
        return self.select_block % self.vision.depth


# 8x8 patches (64 visual tokens), 4 encoder blocks, an 8-layer language model: CPU tests in ms.
TINY_LLAVA = LlavaConfig(
    vision=ViTConfig(img_size=32, patch_size=4, num_classes=1, width=48, depth=4, heads=3),
    llm=LlamaConfig(
        vocab_size=97, width=48, depth=8, heads=6, kv_heads=2, head_dim=8, mlp_hidden=96
    ),
)


class MlpProjector(nn.Module):
    """LLaVA-1.5's projector (`mlp2x_gelu`): Linear, GELU, Linear; one output per patch."""

    def __init__(self, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_width, llm_width)
        self.fc2 = nn.Linear(llm_width, llm_width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (B, N, C_llm)


@dataclass
class VisionOutput:
    """Everything the encoder computed, for all `B*V` views; block `i` read `hidden[i]`."""

    hidden: list[Tensor]  # (B*V, 1+N, C_vis): the embeddings, then the output of each block run
    attn: list[Tensor]  # per block run: (B*V, H, 1+N, 1+N) attention probabilities
    keys: list[Tensor]  # per block run: (B*V, 1+N, D) keys averaged over heads


@dataclass
class VisualState:
    """What an encoder-side reducer sees (hook point a)."""

    vision: VisionOutput
    features: Tensor  # (B, V*N, C_vis) patch tokens of the selected block, the projector's input
    views: int  # V
    prefix: Tensor  # (B, P) text ids before the image
    suffix: Tensor  # (B, S) text ids after the image (the question)
    model: Llava

    @property
    def block(self) -> int:
        """Index of the encoder block whose output `features` is."""
        return self.model.config.feature_block

    @property
    def grid(self) -> int:
        """Patch grid side of one view."""
        return self.model.config.vision.grid

    def cls_attention(self, block: int | None = None) -> Tensor:
        """Attention of CLS to the patches in `block` (default: the feature block), per head,
        views side by side: `(B, H, V*N)`."""
        attn = self.vision.attn[self.block if block is None else block][:, :, 0, 1:]
        BV, H, N = attn.shape
        B = BV // self.views
        # (B, V, H, N) -> (B, H, V, N) -> (B, H, V*N)
        return attn.reshape(B, self.views, H, N).transpose(1, 2).reshape(B, H, self.views * N)

    def project(self, x: Tensor) -> Tensor:
        """The model's projector: `(B, n, C_vis) -> (B, m, C_llm)`."""
        return self.model.projector(x)


@dataclass
class LlmState:
    """What an in-LLM reducer sees before layer `layer` runs (hook point b), during prefill."""

    layer: int
    hidden: Tensor  # (B, T, C) the input of `layer`
    positions: Tensor  # (B, T) rotary positions (the original ones)
    prefix_len: int  # P text tokens before the visual ones (never dropped)
    visual_len: int  # visual tokens now, contiguous after the prefix; the suffix follows
    attn: Tensor | None  # (B, H, T, T) attention probabilities of layer `layer - 1`
    inputs: Tensor  # (B, T0, C) the language model's input embeddings, before any reduction
    visual_len0: int  # visual tokens in `inputs`
    model: Llava

    @property
    def suffix_len(self) -> int:
        return self.hidden.shape[1] - self.prefix_len - self.visual_len

    def visual_slice(self) -> slice:
        return slice(self.prefix_len, self.prefix_len + self.visual_len)


class VisualReducer(Protocol):
    def __call__(self, state: VisualState) -> Tensor: ...


class LlmReducer(Protocol):
    def __call__(self, state: LlmState) -> tuple[Tensor, Tensor, int]: ...


@dataclass
class Counts:
    """Visual-token counts of the last prefill, stage by stage."""

    encoder: int = 0  # patch tokens out of the encoder (all views, CLS excluded)
    llm_input: int = 0  # visual tokens spliced into the language model's input
    visual: list[int] = field(default_factory=list)  # per LLM layer: visual tokens entering it
    text: list[int] = field(default_factory=list)  # per LLM layer: text tokens entering it


class _Recorder:
    """A press that keeps the latest prefill attention and defers to an optional KV method."""

    def __init__(self, inner: Press | None) -> None:
        self.inner = inner
        self.attn: Tensor | None = None

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        self.attn = ctx.attn
        return self.inner.prefill(ctx) if self.inner is not None else (ctx.keys, ctx.values)

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        return self.inner.decode(ctx) if self.inner is not None else (ctx.keys, ctx.values)


class Llava(nn.Module):
    """Vision encoder + projector + LLaMA; `prefill(prefix, images, suffix) -> logits`."""

    def __init__(
        self, config: LlavaConfig = TINY_LLAVA, projector: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionTransformer(config.vision)
        self.projector = (
            projector
            if projector is not None
            else MlpProjector(config.vision.width, config.llm.width)
        )
        self.llm = Llama(config.llm)
        self.visual_reducer: VisualReducer | None = None
        self.llm_reducers: dict[int, LlmReducer] = {}
        self.counts = Counts()

    # --- the encoder side -------------------------------------------------------------------

    def encode(self, images: Tensor) -> VisionOutput:
        """Run the encoder blocks up to the feature block on `(B*V, 3, H, W)`."""
        x = self.vision.embed(images)  # (B*V, 1+N, C_vis)
        out = VisionOutput([x], [], [])
        for block in list(self.vision.blocks)[: self.config.feature_block + 1]:
            assert isinstance(block, Block)
            delta, attn, keys = block.attn(block.norm1(x))
            x = x + delta
            x = x + block.mlp(block.norm2(x))
            out.hidden.append(x)
            out.attn.append(attn)
            out.keys.append(keys)
        return out

    def visual_tokens(self, images: Tensor, prefix: Tensor, suffix: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` or `(B, V, 3, H, W)` to visual tokens `(B, M, C_llm)`."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        B, V = images.shape[:2]
        vision = self.encode(images.flatten(0, 1))  # views of one image stay adjacent
        patches = vision.hidden[-1][:, 1:]  # (B*V, N, C_vis) CLS dropped
        features = patches.reshape(B, V * patches.shape[1], patches.shape[2])  # (B, V*N, C_vis)
        self.counts.encoder = features.shape[1]
        if self.visual_reducer is None:
            return self.projector(features)
        state = VisualState(vision, features, V, prefix, suffix, self)
        return self.visual_reducer(state)

    # --- the language-model side --------------------------------------------------------------

    def prefill(
        self,
        prefix: Tensor,
        images: Tensor,
        suffix: Tensor,
        cache: KVCache | None = None,
        press: Press | None = None,
    ) -> Tensor:
        """Run the prompt `[prefix | image | suffix]` once; returns logits `(B, T', vocab)` over
        the tokens left in the last layer, and fills `cache` (which must be empty)."""
        cache = cache if cache is not None else KVCache()
        assert len(cache) == 0 and cache.seen == 0, "prefill starts from an empty cache"
        llm = self.llm
        self.counts = Counts()
        visual = self.visual_tokens(images, prefix, suffix)  # (B, M, C)
        embeds = torch.cat(
            [llm.embed_tokens(prefix), visual, llm.embed_tokens(suffix)], dim=1
        )  # (B, T0, C)
        B, T0, _ = embeds.shape
        prefix_len, visual_len = prefix.shape[1], visual.shape[1]
        self.counts.llm_input = visual_len
        positions = torch.arange(T0, device=embeds.device).expand(B, T0)  # (B, T0)
        recorder = _Recorder(press)
        x = embeds
        for index, layer in enumerate(llm.layers):
            assert isinstance(layer, Layer)
            reducer = self.llm_reducers.get(index)
            if reducer is not None:
                state = LlmState(
                    index,
                    x,
                    positions,
                    prefix_len,
                    visual_len,
                    recorder.attn,
                    embeds,
                    self.counts.llm_input,
                    self,
                )
                x, positions, visual_len = reducer(state)
            self.counts.visual.append(visual_len)
            self.counts.text.append(x.shape[1] - visual_len)
            cos, sin = rotary_for(positions, llm.config)
            x = x + layer.self_attn(layer.input_layernorm(x), index, cache, cos, sin, recorder, 0)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.seen = T0  # the next token's position, whatever was dropped
        return llm.lm_head(llm.norm(x))

    def step(self, ids: Tensor, cache: KVCache, press: Press | None = None) -> Tensor:
        """Decode `ids (B, n)` after a prefill: the language model on its cache."""
        return self.llm(ids, cache, press)


def rotary_for(positions: Tensor, config: LlamaConfig) -> tuple[Tensor, Tensor]:
    """cos and sin `(B, 1, T, D)` for per-sample positions `(B, T)`."""
    B, T = positions.shape
    cos, sin = rotary(positions.reshape(-1), config.head_dim, config.rope_theta)  # (B*T, D)
    return cos.view(B, 1, T, -1), sin.view(B, 1, T, -1)


@torch.no_grad()
def generate(
    model: Llava,
    prefix: Tensor,
    images: Tensor,
    suffix: Tensor,
    max_new_tokens: int,
    press: Press | None = None,
) -> tuple[Tensor, KVCache]:
    """Greedy decoding; returns the new tokens `(B, max_new_tokens)` and the cache."""
    cache = KVCache()
    logits = model.prefill(prefix, images, suffix, cache, press)
    out = []
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        out.append(token)
        if step < max_new_tokens - 1:
            logits = model.step(token, cache, press)
    return torch.cat(out, dim=1), cache


@contextmanager
def attach(
    model: Llava,
    visual: VisualReducer | None = None,
    llm: Mapping[int, LlmReducer] | None = None,
) -> Iterator[Llava]:
    """Set the hook points inside a `with` block; everything is restored on exit, also when the
    body raises."""
    depth = model.config.llm.depth
    for index in llm or {}:
        if not 0 <= index < depth:
            raise ValueError(f"LLM layer {index} out of range for depth {depth}")
    changes: list[tuple[object, str, object]] = []
    if visual is not None:
        changes.append((model, "visual_reducer", visual))
    if llm:
        changes.append((model, "llm_reducers", {**model.llm_reducers, **llm}))
    with setting(*changes):
        yield model


# --- helpers for reducers ---------------------------------------------------------------------


def keep_visual(
    state: LlmState,
    kept: Tensor,
    extra: Tensor | None = None,
    extra_positions: Tensor | None = None,
) -> tuple[Tensor, Tensor, int]:
    """The sequence with every text token, the visual tokens at `kept (B, k)` (indices into the
    current visual span, kept in the given order) and, after them, `extra (B, e, C)` new visual
    tokens at positions `extra_positions (B, e)`. Returns `(hidden, positions, visual_len)`."""
    B, T, _ = state.hidden.shape
    device = state.hidden.device
    P, V = state.prefix_len, state.visual_len
    index = torch.cat(
        [
            torch.arange(P, device=device).expand(B, P),
            kept + P,
            torch.arange(P + V, T, device=device).expand(B, T - P - V),
        ],
        dim=1,
    )  # (B, T')
    hidden = state.hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, state.hidden.shape[2]))
    positions = state.positions.gather(1, index)
    visual_len = kept.shape[1]
    if extra is not None:
        assert extra_positions is not None and extra.shape[:2] == extra_positions.shape
        cut = P + visual_len
        hidden = torch.cat([hidden[:, :cut], extra, hidden[:, cut:]], dim=1)
        positions = torch.cat([positions[:, :cut], extra_positions, positions[:, cut:]], dim=1)
        visual_len += extra.shape[1]
    return hidden, positions, visual_len


def query_attention(
    model: Llava, layer: int, hidden: Tensor, positions: Tensor, query: int
) -> Tensor:
    """Attention probabilities `(B, H, T)` that the token at sequence index `query` would give
    every earlier token in language-model layer `layer`, whose input is `hidden (B, T, C)`: the
    layer's own norm, projections and rotary positions (PyramidDrop ranks with these)."""
    c = model.config.llm
    block = model.llm.layers[layer]
    assert isinstance(block, Layer)
    B, T, _ = hidden.shape
    query = query % T
    x = block.input_layernorm(hidden)
    q = block.self_attn.q_proj(x[:, query : query + 1]).view(B, 1, c.heads, c.head_dim)
    k = block.self_attn.k_proj(x).view(B, T, c.kv_heads, c.head_dim)
    cos, sin = rotary_for(positions, c)  # (B, 1, T, D)
    q = rotate(q.transpose(1, 2), cos[:, :, query : query + 1], sin[:, :, query : query + 1])
    k = rotate(k.transpose(1, 2), cos, sin)  # (B, H_kv, T, D)
    k = k.repeat_interleave(c.heads // c.kv_heads, dim=1)  # (B, H, T, D)
    scores = (q @ k.transpose(-2, -1))[:, :, 0] / c.head_dim**0.5  # (B, H, T)
    future = torch.arange(T, device=hidden.device) > query
    return scores.masked_fill(future, float("-inf")).float().softmax(dim=-1).to(q.dtype)


def block_qk(block: Block, x: Tensor) -> tuple[Tensor, Tensor]:
    """Queries and keys `(B, 1+N, C_vis)` (all heads side by side) that encoder `block` computes
    from its input `x (B, 1+N, C_vis)`."""
    C = x.shape[-1]
    qkv = block.attn.qkv(block.norm1(x))  # (B, 1+N, 3C)
    return qkv[..., :C], qkv[..., C : 2 * C]


def anyres_views(images: Tensor, grid: tuple[int, int], size: int) -> Tensor:
    """LLaVA-NeXT-style views of high-resolution images `(B, 3, gh*size, gw*size)`: the whole
    image pooled to `size x size`, then the `gh x gw` crops row by row: `(B, 1+gh*gw, 3, s, s)`."""
    gh, gw = grid
    B, C, H, W = images.shape
    assert (gh * size, gw * size) == (H, W), "images must be gh*size by gw*size"
    full = F.adaptive_avg_pool2d(images, size).unsqueeze(1)  # (B, 1, 3, s, s)
    crops = images.reshape(B, C, gh, size, gw, size).permute(0, 2, 4, 1, 3, 5)  # (B,gh,gw,3,s,s)
    return torch.cat([full, crops.reshape(B, gh * gw, C, size, size)], dim=1)
