"""Reversible adapters: attach reducers to a ViT's blocks inside a `with` block.

`attach(model, mid={block_index: reducer}, pre={...}, track_size=...)` sets the hook points and
restores exactly what was there before on exit, also when the body raises. No method swaps a
module's class or edits its forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ..restore import setting
from .vit import Reducer, VisionTransformer


@contextmanager
def attach(
    model: VisionTransformer,
    mid: Mapping[int, Reducer] | None = None,
    pre: Mapping[int, Reducer] | None = None,
    track_size: bool | None = None,
) -> Iterator[VisionTransformer]:
    """Attach reducers to blocks by index; everything is restored on exit."""
    blocks = list(model.blocks)
    for index in [*(mid or {}), *(pre or {})]:
        if not 0 <= index < len(blocks):
            raise ValueError(f"block index {index} out of range for depth {len(blocks)}")
    changes: list[tuple[object, str, object]] = [
        *((blocks[i], "mid_reducer", reducer) for i, reducer in (mid or {}).items()),
        *((blocks[i], "pre_reducer", reducer) for i, reducer in (pre or {}).items()),
    ]
    if track_size is not None:
        changes.append((model, "track_size", track_size))
    with setting(*changes):
        yield model
