"""Token reduction for video models: merging and dropping tokens across frames."""
