"""Projector-side visual-token compressors: learned modules that map many vision-encoder
features to fewer language-model tokens (resamplers, abstractors, pixel shuffle).

Each maps patch tokens `(B, N, C_vis)` on a square grid (CLS dropped) to `(B, M, C_llm)` and
exposes `Config`, `config_for(keep, num_patches)` and `output_tokens(num_patches, config)`;
`grid` holds the shared reshapes and MLPs.
"""
