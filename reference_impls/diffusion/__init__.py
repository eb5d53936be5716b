"""Token reduction in diffusion denoisers (merging with unmerge around attention).

`dit` is the small diffusion transformer the methods are applied to, through the hook point
around its self-attention.
"""
