"""SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference (arXiv
2410.04417).

Official code: Gumpest/SparseVLMs@26a5f48813c46cd1c7364160354e7fdd3febaa67
(`llava/model/language_model/modelling_sparse_llama.py`, `score.py`, `utils.py`); no code was
taken from it. Checked in memory, version 1.0 (`USE_VERSION=1_0`, the default), retain 192: the
rater selection of `LlamaModel.forward`, `score.attn_postprocess_topk`, the recycling block of
`forward` and `utils.cluster_and_merge` (its density noise set to zero) against `select_raters`,
`rater_scores`, `top_in_order`, `recycle_counts`, `dpc_knn` and `cluster_means` on 40 seeded
cases (batch 1, 37-576 visual tokens, 10-22 text tokens, layers 2, 6, 15, fp32): the same
raters, kept tokens, recycled tokens and counts in every case; scores and recycled means equal
to 2.4e-7. Fixed after the check: the recycled mean is the official `sum / (size + 1e-6)`.
Text-guided pruning inside the language model, during prefill:

1. raters: once, at the language model's input, the text tokens after the image that are
   relevant to it: `m = softmax_text(V T^T)` averaged over the visual tokens `V`, raters are the
   text tokens `t` with `m_t > mean(m)`;
2. after each sparsification layer (2, 6 and 15 of 32, 0-based), the attention of that layer,
   averaged over heads, from the raters (queries) to the visual tokens, averaged over the raters,
   scores each visual token; the best `min(count, v - 1)` stay in their order (`count` from the
   official 192-token schedule: 300, 200, 110 of 576);
3. recycling: the best-scored `r = int(0.3 d) + 1` of the `d` deleted tokens are clustered by
   density peaks (DPC-kNN: density from the `c` nearest neighbours, distance to the nearest
   denser token, centres = largest product; every token joins its nearest centre) into
   `c = int(r / 10) + 1` clusters, and each cluster's mean is inserted after the kept visual
   tokens; the next layers see the kept plus the recycled tokens.

Simplified / differs from the official code: the first release (October 2024) set the number
of tokens kept from the rank of the rater-visual attention matrix (`scale * rank`); the current
code uses fixed per-layer counts, one schedule per budget (`OFFICIAL_SCHEDULES`: 192, 128, 96
and 64 retained tokens; the 128/96/64 schedules are not the 192 one scaled, which `config_for`
does today). Positions: kept tokens keep their original rotary positions and a recycled token
takes the position of its cluster centre; version 1.0 renumbers positions contiguously after
each pruning and decodes at the cache length (this model continues decoding at the original
length, `llava.py`, so renumbering alone would leave a gap). The official code adds noise
(uniform, below 1e-6) to the densities to break ties; none is added here (exact ties go to
the first index). The official code prunes by sample 0's scores only (`mask[0][indices]`) and
runs batch 1; here every sample chooses. Version 2.0 (SparseVLM+: attention divided by a
rotary bias, the 14 heads with most text-to-visual attention, no recycling, positions kept)
is not included. One rater set serves all sparsification layers, as in the official code.

Shapes: hidden `(B, T, C)`; attention `(B, H, T, T)`; scores `(B, v)`; recycled `(B, c, C)`.

Record: `sparsevlm-2024` in papers/.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, LlmState, attach, keep_visual
from .select import complement, gather, top_by_score, top_in_order

IMPL = ImplInfo(
    name="sparsevlm",
    title="SparseVLM: text-rater attention prunes visual tokens in the LLM, DPC-kNN recycling",
    papers=("sparsevlm-2024",),
    family="prune-merge",
    training_free=True,
    arxiv="2410.04417",
    simplified=(
        "fixed per-layer counts (the official code's), not the first release's rank-based count; "
        "original positions kept; no tie-breaking noise"
    ),
)

# The official 192-token schedule for LLaVA-1.5 (576 visual tokens, 32 layers).
OFFICIAL_LAYERS = (2, 6, 15)
OFFICIAL_KEEP = (300 / 576, 200 / 576, 110 / 576)
OFFICIAL_BUDGET = 192 / 576
# score.py's per-layer counts (of 576) for each number of retained tokens, version 1.0.
OFFICIAL_SCHEDULES = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}


@dataclass(frozen=True)
class Config:
    layers: tuple[int, ...] = OFFICIAL_LAYERS  # sparsify after these layers (0-based)
    keep: tuple[float, ...] = OFFICIAL_KEEP  # visual tokens kept there, share of the original
    recycle: bool = True
    recycle_share: float = 0.3  # share of the deleted tokens recycled (plus one)
    tokens_per_cluster: int = 10  # recycled tokens per cluster (clusters = int(d / 10) + 1)

    def __post_init__(self) -> None:
        assert len(self.layers) == len(self.keep), "one keep share per layer"
        assert list(self.layers) == sorted(set(self.layers)), "layers strictly increasing"
        assert all(layer >= 0 for layer in self.layers)
        assert all(0.0 < k <= 1.0 for k in self.keep), "keep shares must be in (0, 1]"
        assert 0.0 <= self.recycle_share <= 1.0 and self.tokens_per_cluster >= 1


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    """The official schedule scaled to an average budget `keep` (192/576 is the official one)
    and to `depth` layers; identity (no layer) at `keep >= 1`."""
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    if keep >= 1.0:
        return Config(layers=(), keep=())
    layers = sorted({min(depth - 2, round(layer * depth / 32)) for layer in OFFICIAL_LAYERS})
    shares = [min(1.0, k * keep / OFFICIAL_BUDGET) for k in OFFICIAL_KEEP][: len(layers)]
    return Config(layers=tuple(layers), keep=tuple(shares))


def select_raters(inputs: Tensor, start: int, n: int) -> Tensor:
    """Raters from the input embeddings `(B, T0, C)` with the visual tokens at `[start,
    start + n)` and the text after them: a mask `(B, S)` over that text."""
    visual = inputs[:, start : start + n]  # (B, n, C)
    text = inputs[:, start + n :]  # (B, S, C)
    relevance = (visual @ text.transpose(1, 2)).softmax(dim=-1).mean(dim=1)  # (B, S)
    raters = relevance > relevance.mean(dim=1, keepdim=True)
    return raters | ~raters.any(dim=1, keepdim=True)  # all equal: every text token rates


def rater_scores(attn: Tensor, raters: Tensor, start: int, n: int) -> Tensor:
    """Visual scores `(B, n)`: attention `(B, H, T, T)` averaged over heads, rows = the raters
    (a mask `(B, S)` over the last S tokens), columns = the visual tokens, averaged over raters."""
    S = raters.shape[1]
    rows = attn.mean(dim=1)[:, -S:, start : start + n]  # (B, S, n)
    weights = raters.to(rows.dtype)
    return (rows * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)


def dpc_knn(x: Tensor, clusters: int) -> tuple[Tensor, Tensor]:
    """Density-peak clustering of `x (B, n, C)` into `clusters` groups. Returns `(centres (B, c)`
    indices, best first, `assign (B, n)` the cluster of each token, centres in their own)."""
    B, n, C = x.shape
    dist = torch.cdist(x, x) / C**0.5  # (B, n, n)
    near = dist.topk(clusters, dim=-1, largest=False).values  # (B, n, c), self included
    density = (-(near**2).mean(dim=-1)).exp()  # (B, n)
    denser = density[:, None, :] > density[:, :, None]  # (B, n, n): [i, j] j denser than i
    far = dist.flatten(1).max(dim=1).values[:, None, None]  # (B, 1, 1)
    parent = torch.where(denser, dist, far).min(dim=-1).values  # (B, n)
    centres = top_by_score(parent * density, clusters)  # (B, c)
    assign = dist.gather(1, centres.unsqueeze(-1).expand(-1, -1, n)).argmin(dim=1)  # (B, n)
    assign = assign.scatter(1, centres, torch.arange(clusters, device=x.device).expand(B, -1))
    return centres, assign


def cluster_means(x: Tensor, assign: Tensor, clusters: int) -> Tensor:
    """Mean of the rows of `x (B, n, C)` in each cluster: `(B, clusters, C)`, each row weighted
    `1 / (size + 1e-6)` as the official `cluster_and_merge` does (a mean scaled by
    `size / (size + 1e-6)`)."""
    one_hot = torch.nn.functional.one_hot(assign, clusters).to(x.dtype)  # (B, n, c)
    weights = one_hot / (one_hot.sum(dim=1, keepdim=True) + 1e-6)  # (B, n, c)
    return weights.transpose(1, 2) @ x


def recycle_counts(deleted: int, config: Config) -> tuple[int, int]:
    """(tokens recycled, clusters) out of `deleted` tokens."""
    if not config.recycle or deleted == 0:
        return 0, 0
    recycled = min(deleted, int(deleted * config.recycle_share) + 1)
    return recycled, min(recycled, int(recycled / config.tokens_per_cluster) + 1)


class SparseVLMReducer:
    """One sparsification step. The raters depend on the input embeddings only, so every step
    of a prefill finds the same ones."""

    def __init__(self, config: Config, count: float) -> None:
        self.config = config
        self.count = count

    def __call__(self, state: LlmState) -> tuple[Tensor, Tensor, int]:
        assert state.attn is not None, "SparseVLM needs the attention of the layer just run"
        P, v = state.prefix_len, state.visual_len
        raters = select_raters(state.inputs, P, state.visual_len0)  # (B, S)
        scores = rater_scores(state.attn, raters, P, v)  # (B, v)
        k = min(round(self.count * state.visual_len0), v - 1)
        if k <= 0 or k >= v:
            return state.hidden, state.positions, v
        kept = top_in_order(scores, k)  # (B, k)
        deleted = complement(kept, v)  # (B, d) in order
        recycled, clusters = recycle_counts(v - k, self.config)
        if recycled == 0:
            return keep_visual(state, kept)
        best = top_by_score(scores.gather(1, deleted), recycled)  # (B, r) into `deleted`
        chosen = deleted.gather(1, best)  # (B, r) into the visual span
        tokens = gather(state.hidden[:, state.visual_slice()], chosen)  # (B, r, C)
        centres, assign = dpc_knn(tokens, clusters)
        merged = cluster_means(tokens, assign, clusters)  # (B, c, C)
        visual_positions = state.positions[:, state.visual_slice()]  # (B, v)
        positions = visual_positions.gather(1, chosen.gather(1, centres))  # (B, c)
        return keep_visual(state, kept, merged, positions)


def reducers(config: Config) -> dict[int, SparseVLMReducer]:
    """Reducers by the layer they run before (one after each sparsification layer)."""
    return {
        layer + 1: SparseVLMReducer(config, share)
        for layer, share in zip(config.layers, config.keep, strict=True)
    }


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    with attach(model, llm=reducers(config)) as patched:
        yield patched
