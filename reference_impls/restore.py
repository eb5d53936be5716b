"""Save, set and restore attributes: the one reversible step under every adapter.

`setting((obj, "name", value), ...)` sets each attribute inside a `with` block and puts back
exactly what was there before on exit, also when the body raises. It writes with
`object.__setattr__`, so a hook that is an `nn.Module` never becomes a registered submodule of
the model (it would enter its state_dict and stay in `_modules` after exit). This module knows no
model and no method.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def setting(*changes: tuple[object, str, object]) -> Iterator[None]:
    """Set `obj.name = value` for every `(obj, name, value)` inside the block; restore on exit.

    Every attribute must exist beforehand (adapters only replace hook points their models
    declare); the same attribute may appear twice, the last value wins and the original comes
    back."""
    for obj, name, _ in changes:
        if not hasattr(obj, name):
            raise AttributeError(f"{type(obj).__name__} has no hook point {name!r} to set")
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            object.__setattr__(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            object.__setattr__(obj, name, value)
