"""Shared pieces for the reference-implementation tests: a tiny ViT, inputs, devices."""

from __future__ import annotations

import pytest
import torch

from reference_impls.vision.vit import VisionTransformer, ViTConfig

# 8x8 patch grid + CLS = 65 tokens, 4 blocks: small enough for CPU tests in milliseconds.
TINY = ViTConfig(img_size=32, patch_size=4, width=48, depth=4, heads=3, num_classes=10)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_vit(seed: int = 0, device: str = "cpu", config: ViTConfig = TINY) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(config).to(device).eval()


def images(
    batch: int = 2, seed: int = 1, device: str = "cpu", config: ViTConfig = TINY
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, config.img_size, config.img_size, generator=generator).to(device)


device_param = pytest.mark.parametrize("device", DEVICES)
