"""Token reduction for video models: merging and dropping tokens across frames.

The methods keep a different number of tokens per sample; they return `packing.Packed` (kept
tokens left-aligned and zero-padded, with a mask and each token's frame and position).
"""
