"""One torch thread in the implementation tests: on a small shared machine, intra-op threads
fight the other processes and make tiny-tensor tests tens of times slower, not faster.

Tests that load real pretrained weights (they request the `smollm2` fixture, directly or
through another fixture) carry the marker `weights`, so `pytest -m "not weights"` is the fast
lane (the marker is declared in pyproject.toml)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

WEIGHT_FIXTURES = frozenset({"smollm2"})  # fixtures that load real weights


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if WEIGHT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.weights)
