"""Token pruning and token skipping in text encoders, on a small BERT-style model of our own.

Infrastructure: `encoder` (the model, its hook points, the reversible `attach` adapter and the
token-selection helpers). Every other module is an algorithm with `IMPL`, `Config`,
`config_for(keep, model_config)` and `patch(model, config)`. Shapes: tokens `(B, N, C)` with
[CLS] at index 0, padding masks `(B, N)` True for real tokens, attention `(B, H, N, N)`.
"""
