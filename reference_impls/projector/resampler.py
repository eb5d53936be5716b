"""Q-Former-style resampler: the query branch of BLIP-2's Querying Transformer, "BLIP-2:
Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language Models",
arXiv 2301.12597.

Official code: salesforce/LAVIS@506965b9c4a18c1e565bd32acaccabe0198433f7
(`lavis/models/blip2_models/Qformer.py: BertEmbeddings`, `BertEncoder`, `BertLayer` with
`query_length`, `BertAttention`, `BertIntermediate`/`BertOutput` for the queries; the
configuration of `blip2.py: Blip2Base.init_Qformer`), run in memory outside the project (its
`transformers` imports reduced to `ACT2FN`) with our weights copied into it, on the query
branch as `blip2_opt.py` calls it (`query_embeds` only, `ln_vision` features as
`encoder_hidden_states`): outputs equal to float tolerance (max abs diff 2.4e-7) on 24 seeded
cases (depth/cross-attention frequency 2/1, 3/2, 4/2; 2 seeds; B 1 and 3; 16 and 37 image
tokens). Fixed to match it: the query embeddings are layer-normalised first (`BertEmbeddings`
applies its LayerNorm to `query_embeds`), and every Q-Former LayerNorm uses BERT's eps 1e-12
(`Config.layer_norm_eps`; was PyTorch's 1e-5). No code was taken from it.

A fixed set of `M` learned query embeddings is layer-normalised and passes through `depth`
BERT-style layers, each post-LayerNorm:

1. self-attention among the queries: `q = LN(q + SelfAttn(q))`;
2. in every `cross_attention_every`-th layer (BLIP-2: every second one), cross-attention from the
   queries to the image features: `q = LN(q + CrossAttn(q, image))`;
3. a feed-forward block: `q = LN(q + FFN(q))`.

The image features are layer-normalised first (BLIP-2's `ln_vision`), and a final linear layer
maps the `M` query outputs to the LLM width (`opt_proj` / `t5_proj` in the official code). The
output count `M` is the number of queries whatever the input grid; with no positional embedding
added to the image features, the output is invariant to a permutation of the input tokens (the
encoder's features carry the positions).

Simplified: the Q-Former's text branch, its BERT initialisation and the two-stage pre-training
(image-text contrastive, matching and generation losses) are omitted; this is the query branch
with random initial weights, trained end to end if at all. BLIP-2 uses 32 queries and 12 layers
of width 768; the defaults here are tiny.

Shapes: image features `(B, N, C_vis)` (any N); queries `(1, M, D)`; output `(B, M, C_llm)`.

Record: `blip-2-2023` in papers/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..families import patches_of
from ..registry import ImplInfo

IMPL = ImplInfo(
    name="resampler",
    title="Q-Former resampler: M learned queries cross-attend to the image features",
    papers=("blip-2-2023",),
    family="learned-compression",
    training_free=False,
    arxiv="2301.12597",
    simplified=(
        "query branch only (no text branch, no BERT initialisation, no BLIP-2 pre-training "
        "losses); tiny widths; random initial weights"
    ),
)


@dataclass(frozen=True)
class Config:
    in_dim: int = 32  # C_vis
    out_dim: int = 64  # C_llm
    num_queries: int = 32  # M (BLIP-2: 32)
    width: int = 32  # D, the Q-Former width (BLIP-2: 768)
    depth: int = 2  # layers (BLIP-2: 12)
    heads: int = 4
    cross_attention_every: int = 1  # a cross-attention in layers 0, k, 2k, ... (BLIP-2: 2)
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-12  # BERT's `layer_norm_eps`, in every Q-Former LayerNorm

    def __post_init__(self) -> None:
        assert self.in_dim > 0 and self.out_dim > 0, "dimensions must be positive"
        assert self.num_queries >= 1, "at least one query"
        assert self.depth >= 1 and self.cross_attention_every >= 1
        assert self.width % self.heads == 0, "width must be divisible by heads"
        assert self.mlp_ratio > 0


def config_for(keep: float, model_config: object = None, num_patches: int = 576) -> Config:
    """`M = round(keep * num_patches)` queries (at least one)."""
    num_patches = patches_of(model_config, num_patches)
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    return Config(num_queries=max(1, round(keep * num_patches)))


def output_tokens(num_patches: int, config: Config) -> int:
    """M: the number of queries, whatever the input."""
    return config.num_queries


class QFormerLayer(nn.Module):
    """Self-attention over the queries, optional cross-attention to the image, FFN; post-LN."""

    def __init__(self, config: Config, cross: bool) -> None:
        super().__init__()
        D = config.width
        self.self_attn = nn.MultiheadAttention(D, config.heads, batch_first=True)
        eps = config.layer_norm_eps
        self.norm_self = nn.LayerNorm(D, eps=eps)
        self.cross_attn = (
            nn.MultiheadAttention(
                D, config.heads, kdim=config.in_dim, vdim=config.in_dim, batch_first=True
            )
            if cross
            else None
        )
        self.norm_cross = nn.LayerNorm(D, eps=eps) if cross else None
        hidden = int(D * config.mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, D))
        self.norm_ffn = nn.LayerNorm(D, eps=eps)

    def forward(self, q: Tensor, image: Tensor) -> Tensor:
        """`q (B, M, D)`, `image (B, N, C_vis)` -> `(B, M, D)`."""
        q = self.norm_self(q + self.self_attn(q, q, q, need_weights=False)[0])
        if self.cross_attn is not None and self.norm_cross is not None:
            attended = self.cross_attn(q, image, image, need_weights=False)[0]  # (B, M, D)
            q = self.norm_cross(q + attended)
        return self.norm_ffn(q + self.ffn(q))


class QFormerResampler(nn.Module):
    """`M` learned queries read the image through cross-attention; a linear map to the LLM."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.image_norm = nn.LayerNorm(config.in_dim)  # BLIP-2's ln_vision
        # BLIP-2 initialises the queries from N(0, 0.02^2)
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, config.width) * 0.02)
        # BertEmbeddings: the query embeddings alone are layer-normalised before the layers
        self.query_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            QFormerLayer(config, cross=i % config.cross_attention_every == 0)
            for i in range(config.depth)
        )
        self.proj = nn.Linear(config.width, config.out_dim)  # BLIP-2's opt_proj / t5_proj

    def forward(self, x: Tensor) -> Tensor:
        """`x (B, N, C_vis)` -> `(B, M, C_llm)`."""
        image = self.image_norm(x)  # (B, N, C_vis)
        q = self.query_norm(self.queries).expand(x.shape[0], -1, -1)  # (B, M, D)
        for layer in self.layers:
            q = layer(q, image)
        return self.proj(q)


# The family's one name for this module's projector (`reference_impls.make_projector`).
Projector = QFormerResampler
