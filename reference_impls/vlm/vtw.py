"""VTW: Boosting Multimodal Large Language Models with Visual Tokens Withdrawal for Rapid
Inference (arXiv 2405.05803), record `vtw-2024`.

Official repository lzhxmu/VTW; no code was taken from it. Checked against it at commit
a3d8cfc3c3f8c957b02b504f85e140d633c30453 (llava/model/language_model/VTW.py), its statements run
in memory outside the project: the `pe_type = "keep"` cut of the hidden states and position ids
before layer `temp_cache.k` is bit-identical to `withdraw_visual` (10 seeded cases, batch 1-3,
35 system + 576 visual + 20 text tokens), and the `findk` divergence
(`KLDivLoss(reduction="batchmean")(log_softmax(full), softmax(cut))`) equals `withdrawal_kl`'s to
float tolerance (relative 2e-7, 20 seeded cases of 6 layers, batch 1-4). Deep layers of a
multimodal LLM attend almost only to text: by then the visual information has migrated into the
text tokens ("information migration"). VTW therefore withdraws *all* visual tokens once, during
prefill, before language-model layer K (0-based; the official code cuts the hidden states when
`layer_idx == k`, k = 15 for the 32-layer LLaVA-1.5):

1. layers 0..K-1 run on the whole prompt `[prefix | visual | suffix]`, and their cache keeps
   every token;
2. before layer K the visual tokens are removed from the sequence; the text tokens keep their
   original rotary positions (the official default `pe_type = "keep"`), so layers K.. run on, and
   cache, text only, and decoding continues at the original next position;
3. K is chosen offline: on a few samples, the KL divergence between the last prompt token's
   output distribution with withdrawal at K and without it is measured for each K, and the
   earliest K whose divergence is under a threshold is taken (`withdrawal_kl`, `choose_layer`).
   Here K is a `Config` field; the search is offered as helpers.

At K >= the model's depth nothing is withdrawn (the identity). Simplified: the search measures
every K from 1 (the official code scans from layer 5, more than our test models have) and
averages the divergence over the batch of the given prompt only; the threshold is the caller's.
Shapes: hidden states `(B, T, C)`; positions `(B, T)`; logits `(B, vocab)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .llava import Llava, LlmState, attach, keep_visual

IMPL = ImplInfo(
    name="vtw",
    title="VTW: withdraw every visual token from the LLM after layer K",
    papers=("vtw-2024",),
    family="pruning",
    training_free=True,
    arxiv="2405.05803",
    simplified=(
        "K is a config field; the offline KL search is a helper over every layer of one batch, "
        "with the threshold left to the caller"
    ),
)


@dataclass(frozen=True)
class Config:
    layer: int = 15  # K: withdraw before layer K (0-based); >= depth withdraws nothing

    def __post_init__(self) -> None:
        assert self.layer >= 0, "the withdrawal layer K must be >= 0"


def config_for(keep: float, model_config: object = None, depth: int = 32) -> Config:
    """Withdraw after the share `keep` of the layers, so that visual tokens take part in that
    share of the layers: `K = round(keep * depth)`; the identity (`K = depth`) at `keep >= 1`."""
    depth = depth_of(model_config, depth)  # a LlavaConfig: its language model's depth
    assert keep > 0.0, "keep must be > 0"
    return Config(layer=min(depth, round(keep * depth)))


def withdraw_visual(state: LlmState) -> tuple[Tensor, Tensor, int]:
    """The sequence without any visual token: `(hidden (B, P+S, C), positions (B, P+S), 0)`;
    text tokens keep their order, values and original positions."""
    B = state.hidden.shape[0]
    kept = state.positions.new_zeros(B, 0)  # (B, 0): no visual token stays
    return keep_visual(state, kept)


@contextmanager
def patch(model: Llava, config: Config = Config()) -> Iterator[Llava]:
    """VTW on `model` inside the block; nothing is attached when K >= the model's depth."""
    depth = model.config.llm.depth
    reducers = {config.layer: withdraw_visual} if config.layer < depth else {}
    with attach(model, llm=reducers) as patched:
        yield patched


@torch.no_grad()
def withdrawal_kl(model: Llava, prefix: Tensor, images: Tensor, suffix: Tensor) -> list[float]:
    """For K = 1 .. depth-1: KL(P_K || P) of the last prompt token's next-token distribution with
    withdrawal at K (`P_K`) from the one without (`P`), averaged over the batch (the official
    search's direction: `KLDivLoss(log P, P_K)`). Entry `i` is K = i + 1."""
    full = model.prefill(prefix, images, suffix)[:, -1].float().log_softmax(dim=-1)  # (B, V)
    out = []
    for layer in range(1, model.config.llm.depth):
        with patch(model, Config(layer=layer)):
            cut = model.prefill(prefix, images, suffix)[:, -1].float().log_softmax(dim=-1)
        kl = F.kl_div(full, cut, log_target=True, reduction="batchmean")
        out.append(float(kl))
    return out


def choose_layer(kl: list[float], threshold: float) -> int:
    """The earliest K (entry `i` of `withdrawal_kl` is K = i + 1) whose divergence is at most
    `threshold`; the depth (no withdrawal) when none is."""
    for index, value in enumerate(kl):
        if value <= threshold:
            return index + 1
    return len(kl) + 1
