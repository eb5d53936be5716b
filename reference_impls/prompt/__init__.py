"""Prompt compression: one module per algorithm; shorter prompts before the model reads them.

Infrastructure: `scorer` (the small language model that scores tokens, the `Compressed` result,
exact top-n selection). Every other module is an algorithm with `IMPL`, `Config`,
`compress(text or segments, question, scorer, config) -> Compressed` and `config_for(keep)`.
Shapes: token ids `(1, T)`; per-token log-probabilities `(1, T)`; per-token scores `(T,)`.
"""
