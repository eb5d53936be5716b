"""Vision token reduction on a small DeiT-style ViT: one module per algorithm.

Infrastructure: `vit` (the model and its hook points), `adapter` (reversible attachment),
`tokens` (gather / top-k / size-weighted merge), `macs` (analytic MAC counter). Every other
module is an algorithm with `IMPL`, `Config` and `patch(model, config)`.
"""
