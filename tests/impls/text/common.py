"""Shared pieces for the text-encoder tests: a tiny encoder, padded batches, devices."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reference_impls.text.encoder import TINY_ENCODER, EncoderConfig, TextEncoder, batch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LENGTHS = [32, 20, 9]  # a padded batch: the longest sample sets N = 32


def tiny_encoder(
    seed: int = 0,
    device: str = "cpu",
    pre_norm: bool = False,
    config: EncoderConfig = TINY_ENCODER,
    sharpen: float = 8.0,
) -> TextEncoder:
    """A seeded tiny encoder. BERT's initialisation (std 0.02) gives near-uniform attention in a
    width-32 model, so every score ties; `sharpen` scales the query/key/value weights so that
    attention is peaked, as in a trained model, and the selection rules have something to rank."""
    torch.manual_seed(seed)
    model = TextEncoder(dataclasses.replace(config, pre_norm=pre_norm))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(sharpen)
    return model.to(device).eval()


def inputs(
    lengths: list[int] | None = None, seed: int = 1, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    return batch(lengths or LENGTHS, TINY_ENCODER, seed=seed, device=device)


def random_attention(
    batch_size: int, heads: int, mask: torch.Tensor, seed: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Attention probabilities `(B, H, N, N)` that, like the model's, put nothing on padding keys."""
    generator = torch.Generator().manual_seed(seed)
    n = mask.shape[1]
    scores = torch.randn(batch_size, heads, n, n, generator=generator, dtype=dtype) * 2
    return scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)


device_param = pytest.mark.parametrize("device", DEVICES)
