"""Shared pieces for the LLM tests: a tiny random LLaMA, prompts, the real SmolLM2 (once)."""

from __future__ import annotations

import pytest
import torch

from reference_impls.llm.llama import TINY_LLAMA, Llama


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(TINY_LLAMA).eval()
    for p in model.parameters():  # a larger init than nn.Linear's, so attention is not uniform
        torch.nn.init.normal_(p, std=0.3)
    return model


def prompt(length: int = 40, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_LLAMA.vocab_size, (1, length), generator=generator)


@pytest.fixture(scope="session")
def smollm2():  # type: ignore[no-untyped-def]
    """The real pretrained model and tokenizer, loaded once per test session."""
    from reference_impls.llm.smollm2 import load_smollm2

    return load_smollm2()
