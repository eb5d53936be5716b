"""Visual-token reduction inside vision-language models, on a tiny LLaVA-style model.

Infrastructure modules are listed in tests/impls/test_registry.py (INFRASTRUCTURE["vlm"]);
every other module is an algorithm with `IMPL`.
"""
