"""A short, seeded fuzz run of the record reader (benchmarks/fuzz_yaml.py runs it for minutes).

Random bytes, mutated real records and grammar-built YAML documents: `store.parse_record` and
`validate.check_file` return or raise RecordError with one-line problems at lines >= 1, nothing
else, within a second; both YAML parsers agree on what is a valid record. A fixed number of
inputs (not a time budget) and a fixed seed, so every run tries the same inputs.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("fuzz_yaml", ROOT / "benchmarks" / "fuzz_yaml.py")
assert spec is not None and spec.loader is not None
fuzz_yaml = importlib.util.module_from_spec(spec)
sys.modules["fuzz_yaml"] = fuzz_yaml
spec.loader.exec_module(fuzz_yaml)

HAS_LIBYAML = getattr(yaml, "__with_libyaml__", False)


@pytest.mark.skipif(not HAS_LIBYAML, reason="PyYAML without libyaml")
def test_reader_survives_fuzzing_with_libyaml() -> None:
    """The parser `kb` uses wherever libyaml is installed: many inputs, quickly."""
    result = fuzz_yaml.fuzz(seconds=120, seed=20, max_inputs=3000, parsers=("libyaml",))
    assert result["inputs"] == 3000
    assert result["crashes"] == 0, result["crash_examples"]
    assert result["slow_inputs"] == []
    assert result["valid_records"] > 0  # some inputs get as far as the round trip


def test_both_parsers_survive_fuzzing_and_agree() -> None:
    """PyYAML's pure-Python parser is the fallback: same property, fewer inputs (it is slower),
    and on each input the two parsers must agree on whether it is a valid record."""
    result = fuzz_yaml.fuzz(seconds=120, seed=21, max_inputs=450)
    assert result["inputs"] == 450
    assert result["crashes"] == 0, result["crash_examples"]
    assert result["slow_inputs"] == []
    assert result["disagreements"] == 0, result["disagreement_examples"]
