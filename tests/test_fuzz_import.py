"""A short, seeded fuzz run of `kb import`'s readers and planner (benchmarks/fuzz_import.py runs
the same loop for minutes): mutated lists never crash the import, never plan an invalid file,
and no input takes seconds."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("fuzz_import", ROOT / "benchmarks" / "fuzz_import.py")
assert spec is not None and spec.loader is not None
fuzz_import = importlib.util.module_from_spec(spec)
sys.modules["fuzz_import"] = fuzz_import
spec.loader.exec_module(fuzz_import)


def test_mutated_lists_never_crash_the_import() -> None:
    # A fixed number of inputs (not a time budget), so every run tries the same inputs.
    result = fuzz_import.fuzz(seconds=120, seed=12, extra=[], max_inputs=800)
    assert result["inputs"] == 800
    assert result["crashes"] == 0, result["crash_examples"]
    assert result["slow_inputs"] == []
