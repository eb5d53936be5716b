"""The small language model that prompt compressors consult, and what they return.

Selective Context, LLMLingua and LongLLMLingua all score prompt tokens with a small causal LM
(GPT-2, LLaMA-7B in the papers). Here that LM is a `Scorer`: it tokenizes, detokenizes, and gives
the log-probability of every token given the tokens before it. Two scorers wrap our `Llama`:
`smollm2_scorer()` (the real SmolLM2-135M-Instruct and its tokenizer) and `tiny_scorer(model)`
(any small random `Llama`, with a one-character-one-token tokenizer, for fast tests).

A compressor returns a `Compressed`: the kept token ids (a subsequence of the prompt's ids, in
order), their positions in the prompt, the text they decode to, and the counts. `keep_highest`
and `apportion` are the two exact-budget helpers every method uses. Nothing here knows a method.

Shapes: ids `(1, T)`; log-probabilities `(1, T)`; per-token scores `(T,)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..llm.llama import Llama
from ..selection import top_in_order


class Scorer(Protocol):
    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def token_logprobs(self, ids: Tensor) -> Tensor:
        """`(1, T)` ids -> `(1, T)`: log p(token t | tokens before t); 0 at t = 0 unless the
        scorer conditions the first token on a start token of its own."""
        ...


class CharTokenizer:
    """One token per character: newline and printable ASCII (96 ids, fits the tiny vocabulary)."""

    alphabet = "\n" + "".join(chr(c) for c in range(32, 127))

    def __init__(self) -> None:
        self.index = {ch: i for i, ch in enumerate(self.alphabet)}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        unknown = set(text) - set(self.index)
        if unknown:
            raise ValueError(f"CharTokenizer: characters outside its alphabet: {sorted(unknown)}")
        return [self.index[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[int(i)] for i in ids)


class LlamaScorer:
    """A `Scorer` from our `Llama` and a tokenizer with `encode(text, add_special_tokens)` and
    `decode(ids)` (a transformers tokenizer or `CharTokenizer`). With `bos`, every text is scored
    after that start token, so the first token gets a real log-probability too."""

    def __init__(self, model: Llama, tokenizer: Any, bos: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.bos = bos

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))

    @torch.no_grad()
    def token_logprobs(self, ids: Tensor) -> Tensor:
        assert ids.dim() == 2 and ids.shape[0] == 1, "ids must be (1, T)"
        T = ids.shape[1]
        if T == 0:
            return torch.zeros(1, 0, device=ids.device)
        device = self.model.embed_tokens.weight.device
        x = ids.to(device)
        if self.bos is not None:
            x = torch.cat([torch.full((1, 1), self.bos, dtype=x.dtype, device=device), x], dim=1)
        log_probs = self.model(x).float().log_softmax(dim=-1)  # (1, T', V)
        picked = log_probs[:, :-1].gather(-1, x[:, 1:, None])[..., 0]  # (1, T' - 1)
        if self.bos is None:
            picked = torch.cat([torch.zeros(1, 1, device=device), picked], dim=1)  # (1, T)
        return picked.to(ids.device)


def tiny_scorer(model: Llama) -> LlamaScorer:
    """A scorer on a small `Llama` whose vocabulary holds the 96 characters of `CharTokenizer`."""
    assert model.config.vocab_size >= len(CharTokenizer.alphabet), "vocabulary too small"
    return LlamaScorer(model, CharTokenizer())


def smollm2_scorer() -> LlamaScorer:
    """SmolLM2-135M-Instruct with its tokenizer; texts are scored after `<|endoftext|>`, the
    document separator of its pretraining data (Selective Context does the same with GPT-2)."""
    from ..llm.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    return LlamaScorer(model, tokenizer, bos=int(tokenizer.convert_tokens_to_ids("<|endoftext|>")))


@dataclass(frozen=True)
class Compressed:
    """A compressed prompt: a subsequence of the prompt's tokens."""

    text: str  # what the kept ids decode to (the input itself when nothing was dropped)
    ids: tuple[int, ...]  # kept token ids, in prompt order
    positions: tuple[int, ...]  # their positions among the prompt's tokens
    original_tokens: int
    compressed_tokens: int
    ratio: float  # compressed_tokens / original_tokens: the share of tokens kept

    @classmethod
    def of(cls, prompt_ids: Sequence[int], positions: Sequence[int], text: str) -> Compressed:
        ids = tuple(int(prompt_ids[p]) for p in positions)
        n = len(prompt_ids)
        return cls(
            text, ids, tuple(int(p) for p in positions), n, len(ids), len(ids) / n if n else 1.0
        )


def budget_tokens(keep: float, length: int) -> int:
    """Tokens kept out of `length` at share `keep`: ceil(keep * length), at most `length`."""
    assert 0.0 < keep <= 1.0, "keep must be in (0, 1]"
    return min(length, math.ceil(keep * length - 1e-9))


def keep_highest(scores: Tensor, n: int) -> Tensor:
    """Positions of the `n` highest of `scores (T,)`, ascending; ties go to the earlier token."""
    return top_in_order(scores, n)


def apportion(wants: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integers `n_i <= caps_i` summing to `min(total, sum(caps))`, each close to `wants_i`.

    Start from floor(wants) clipped to [0, cap]; then hand out missing units to the largest
    fractional remainders (earlier items first on ties) or take surplus units back from the
    smallest remainders (later items first on ties)."""
    n = [min(c, max(0, math.floor(w + 1e-9))) for w, c in zip(wants, caps, strict=True)]
    target = min(total, sum(caps))
    while sum(n) < target:
        open_items = [i for i in range(len(n)) if n[i] < caps[i]]
        i = max(open_items, key=lambda j: (wants[j] - n[j], -j))
        n[i] += 1
    while sum(n) > target:
        held = [i for i in range(len(n)) if n[i] > 0]
        i = min(held, key=lambda j: (wants[j] - n[j], -j))
        n[i] -= 1
    return n
