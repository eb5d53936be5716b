"""PoWER-BERT: Accelerating BERT Inference via Progressive Word-vector Elimination
(arXiv 2001.08950).

Record `power-bert-2020`; official repository github.com/IBM/PoWER-BERT (Keras). After the
attention sublayer of each block `j` the sequence is cut to `l_j` word vectors: [CLS] and the
`l_j - 1` others with the largest *significance*, the total attention a word vector receives,
summed over the heads and over every query row, its attention to itself left out (as the
official `Hard_Extract`). The kept vectors stay in their original order; `l_1 >= l_2 >= ...` is the
retention configuration. The block's MLP then runs on the kept vectors only.

Simplified: the paper *learns* the retention configuration with soft-extract layers (a
learnable per-position mask with an l1 length penalty) and then fine-tunes the model with the
configuration fixed; here the configuration is given (`Config.retention`, shares of the input
length) and nothing is trained: this is the inference-time elimination only. It runs on any
model, but PoWER-BERT's accuracy needs the fine-tuning.

Checked against the official code at commit 6b0e40649c8c71bf5b8e408d5056c03c2ac850df, run in
memory outside the project with TensorFlow in a scratch environment: `Hard_Extract.call`
(model/model.py, with its `calc_avg_atten` and `atten_col`; 12 heads, as it hard-codes) on
seeded random attention with padding keys masked, against our reducer: the kept rows are
bit-identical in all 120 cases (batch 1-3, N 9-32, padded samples, l_j = 2, N/2, N-1, N). Fixed
by that check: the defaults now follow the official code (`exclude_self=True`: a token's
attention to itself does not count; `padding_queries=True`: padding query rows count too, as the
official sums every row); with the former defaults (both False) 45 of the 120 differed. The
official code averages over heads (the same ranking as our sum) and takes integer `l_j`; ours are
shares of the input length (`retained`). Padding tokens rank below every real token (officially
they score 0 against positive real scores), so a sample shorter than `l_j` keeps all its real
tokens and some padding (still masked); ties go to the earlier position, as TensorFlow's `top_k`.

Shapes: tokens `(B, N, C)` with [CLS] at index 0; mask `(B, N)`; attention `(B, H, N, N)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..families import depth_of
from ..registry import ImplInfo
from .encoder import TextEncoder, TextTokenState, attach, attention_received, gather

IMPL = ImplInfo(
    name="power_bert",
    title="PoWER-BERT: keep the word vectors that receive the most attention, on a schedule",
    papers=("power-bert-2020",),
    family="pruning",
    training_free=False,
    arxiv="2001.08950",
    simplified=(
        "inference-time elimination with a given retention configuration: the paper learns it "
        "with soft-extract layers and a length penalty, then fine-tunes; neither is reproduced"
    ),
)


@dataclass(frozen=True)
class Config:
    # Per block from the first: share of the input length N kept after that block's attention.
    # Blocks past the end of the tuple eliminate nothing more; () keeps everything.
    retention: tuple[float, ...] = ()
    # Official `Hard_Extract`: a token's attention to itself does not count (False: it counts)
    exclude_self: bool = True
    # Official: every query row counts, padding ones too (False: only the real query rows)
    padding_queries: bool = True

    def __post_init__(self) -> None:
        assert all(0.0 < r <= 1.0 for r in self.retention), "retention shares must be in (0, 1]"
        assert list(self.retention) == sorted(self.retention, reverse=True), (
            "the retention configuration must not grow from block to block"
        )


def config_for(keep: float, model_config: object = None, depth: int = 4) -> Config:
    """A geometric schedule over all blocks ending at `keep` of the input after the last
    block's attention; identity (empty schedule) at keep >= 1."""
    depth = depth_of(model_config, depth)
    assert keep > 0.0, "keep must be positive"
    if keep >= 1.0:
        return Config()
    return Config(retention=tuple(keep ** ((j + 1) / depth) for j in range(depth)))


def retained(input_len: int, share: float) -> int:
    """Word vectors `l_j` kept out of an input of `input_len` tokens: rounded, at least [CLS]."""
    return max(1, int(share * input_len + 0.5))


def significance(
    attn: Tensor, mask: Tensor, exclude_self: bool = True, padding_queries: bool = True
) -> Tensor:
    """PoWER-BERT's significance `(B, N)`: attention received, summed over heads and query rows
    (all of them, or only the real ones without `padding_queries`), from `attn (B, H, N, N)`;
    -inf for padding tokens."""
    rows = torch.ones_like(mask) if padding_queries else mask  # (B, N) query rows that count
    score = attention_received(attn, rows, exclude_self)  # (B, N)
    return score.masked_fill(~mask, float("-inf"))


def eliminate(x: Tensor, mask: Tensor, score: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """Keep [CLS] and the `keep - 1` highest-`score (B, N)` others of `x (B, N, C)`, in their
    original order. Returns `(x (B, keep, C), mask (B, keep))`."""
    assert 1 <= keep <= x.shape[1], f"cannot keep {keep} of {x.shape[1]} tokens"
    score = score.clone()
    score[:, 0] = float("inf")  # [CLS] always kept
    # A stable sort, not topk: ties (padding, all at -inf) are broken by position, reproducibly.
    ranked = score.sort(dim=1, descending=True, stable=True).indices  # (B, N)
    kept = ranked[:, :keep].sort(dim=1).values  # (B, keep) in sequence order
    return gather(x, kept), gather(mask, kept)


class PowerBertReducer:
    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, state: TextTokenState) -> tuple[Tensor, Tensor]:
        keep = retained(state.input_len, self.config.retention[state.index])
        if keep >= state.x.shape[1]:
            return state.x, state.mask
        c = self.config
        score = significance(state.attn, state.mask, c.exclude_self, c.padding_queries)
        return eliminate(state.x, state.mask, score, keep)


@contextmanager
def patch(model: TextEncoder, config: Config = Config()) -> Iterator[TextEncoder]:
    """Eliminate word vectors after the attention of the first `len(config.retention)` blocks."""
    if len(config.retention) > len(model.blocks):
        raise ValueError(
            f"retention has {len(config.retention)} entries, the model {len(model.blocks)} blocks"
        )
    reducer = PowerBertReducer(config)
    with attach(model, mid=dict.fromkeys(range(len(config.retention)), reducer)) as patched:
        yield patched
