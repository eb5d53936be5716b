"""Minimal, tested PyTorch implementations of token-reduction algorithms.

One module per algorithm, grouped by family (`vision/`, later `kv/`, `vlm/`, ...). Each module
holds a pure tensor function with a stated shape contract, a thin reversible adapter that patches
a model inside a context manager and restores it on exit, a `Config` dataclass with checked
ranges, and a module-level `IMPL` entry for the registry (`reference_impls.registry`). The same
code runs on CPU and CUDA. Nothing here downloads weights or data.
"""
