"""Reversible adapters: attach reducers to a ViT's blocks inside a `with` block.

`attach(model, mid={block_index: reducer}, pre={...}, track_size=...)` sets the hook points and
restores exactly what was there before on exit, also when the body raises. No method swaps a
module's class or edits its forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

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
    saved = [(block.pre_reducer, block.mid_reducer) for block in blocks]
    saved_track = model.track_size
    # object.__setattr__: a reducer that is an nn.Module must not become a registered submodule
    # of the model (it would enter its state_dict and stay in `_modules` after exit).
    try:
        for index, reducer in (mid or {}).items():
            object.__setattr__(blocks[index], "mid_reducer", reducer)
        for index, reducer in (pre or {}).items():
            object.__setattr__(blocks[index], "pre_reducer", reducer)
        if track_size is not None:
            model.track_size = track_size
        yield model
    finally:
        for block, (pre_saved, mid_saved) in zip(blocks, saved, strict=True):
            object.__setattr__(block, "pre_reducer", pre_saved)
            object.__setattr__(block, "mid_reducer", mid_saved)
        model.track_size = saved_track
