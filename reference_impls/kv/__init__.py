"""KV-cache methods: one module per algorithm, on the explicit cache of `reference_impls.llm`.

Infrastructure: `base` (budgets with protected tokens, score-based eviction, the `patch`
convention). Every other module is an algorithm with `IMPL`, `Config`, `make_press(config)` and
`config_for(budget)`. Shapes: keys and values `(B, H_kv, T, D)`.
"""
