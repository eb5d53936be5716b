"""Visual-token reduction inside vision-language models, on a tiny LLaVA-style model.

Infrastructure modules are listed in `reference_impls.families.FAMILIES` (the vlm protocol):
`llava` (the model, its hook points, `attach` and the reducer helpers) and `select` (top-k with a
fixed tie rule, the IQR outlier count). Every other module is an algorithm with `IMPL`, a
`Config`, `config_for(keep, model_config)` (the share of visual tokens to keep, and the LLaVA
config, whose language-model depth matters to methods that act inside it) and
`patch(model, config)`, a context manager that attaches the method and restores the model on
exit.
"""
