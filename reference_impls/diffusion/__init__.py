"""Token reduction in diffusion denoisers (merging with unmerge around attention)."""
