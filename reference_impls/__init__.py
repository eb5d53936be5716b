"""Minimal, tested PyTorch implementations of token-reduction algorithms.

One module per algorithm, grouped by family (`vision/`, `kv/`, `vlm/`, `text/`, `diffusion/`,
`prompt/`, `video/`, `projector/`). Each module holds a pure tensor function with a stated shape
contract, a thin reversible adapter, a `Config` dataclass with checked ranges and
`config_for(keep, model_config)`, and a module-level `IMPL` entry for the registry
(`reference_impls.registry`); what each family exposes is declared in
`reference_impls.families`. The same code runs on CPU and CUDA. Nothing here downloads weights or
data.

The one way to use a method, by name (`reference_impls.methods`):

    with reference_impls.apply(model, "tome", keep=0.5):   # or the method's Config fields
        logits = model(images)                              # the model is restored on exit

and one verb per input family: `compress_prompt`, `pack_video`, `make_projector`. These load
lazily, so `import reference_impls.registry` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["apply", "compress_prompt", "make_config", "make_projector", "names", "pack_video"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("reference_impls.methods"), name)
    raise AttributeError(f"module 'reference_impls' has no attribute {name!r}")
