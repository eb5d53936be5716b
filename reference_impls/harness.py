"""Timing harness: warm-up, several runs, median; device-aware (synchronises CUDA)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    runs: int


def measure(
    fn: Callable[[], object], warmup: int = 2, runs: int = 5, device: str = "cpu"
) -> Timing:
    """Time `fn()` under inference mode: `warmup` untimed calls, then the median of `runs`."""
    assert warmup >= 0 and runs >= 1
    samples = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        for _ in range(runs):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), min(samples), runs)
