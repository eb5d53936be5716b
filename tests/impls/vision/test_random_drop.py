"""Random token drop (baseline)."""

from __future__ import annotations

import torch

from reference_impls.vision import random_drop
from reference_impls.vision.tokens import three_stages

from ..common import TINY, images, tiny_vit


def test_exact_kept_counts_per_block() -> None:
    """At rate 0.5 over blocks 1 and 2 the MLPs see 1+32 then 1+16 tokens."""
    model = tiny_vit()
    with random_drop.patch(model, random_drop.Config(keep_rate=0.5, blocks=(1, 2))):
        model(images())
    assert model.token_counts() == [(65, 65), (65, 33), (33, 17), (17, 17)]


def test_cls_always_kept_and_rows_are_originals() -> None:
    """The output holds CLS first and then unmodified rows of the input, in order."""
    x = torch.randn(3, 11, 4)
    out, size, kept = random_drop.random_drop(x, 4, generator=torch.Generator().manual_seed(0))
    assert size is None and out.shape == (3, 5, 4)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    for b in range(3):
        assert kept[b].tolist() == sorted(kept[b].tolist())
        torch.testing.assert_close(out[b, 1:], x[b, 1 + kept[b]])


def test_identity_at_full_rate() -> None:
    model = tiny_vit()
    x = images()
    reference = model(x)
    with random_drop.patch(model, random_drop.Config(keep_rate=1.0, blocks=(1, 2))):
        torch.testing.assert_close(model(x), reference)


def test_seeded_and_reproducible() -> None:
    model = tiny_vit()
    x = images()
    outputs = []
    for _ in range(2):
        with random_drop.patch(model, random_drop.Config(keep_rate=0.5, blocks=(1,), seed=3)):
            outputs.append(model(x))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_matches_a_naive_loop() -> None:
    """Same generator draws, kept tokens chosen by a plain loop: identical output."""
    x = torch.randn(2, 9, 3)
    out, _, _ = random_drop.random_drop(x, 3, generator=torch.Generator().manual_seed(7))
    scores = torch.rand(2, 8, generator=torch.Generator().manual_seed(7))
    for b in range(2):
        ranked = sorted(range(8), key=lambda i: -float(scores[b, i]))[:3]
        rows = [x[b, 0]] + [x[b, 1 + i] for i in sorted(ranked)]
        torch.testing.assert_close(out[b], torch.stack(rows))


def test_config_for_three_stages() -> None:
    config = random_drop.config_for(0.343, 12)
    assert config.blocks == (3, 6, 9) and abs(config.keep_rate - 0.7) < 1e-9
    assert three_stages(TINY.depth) == (1, 2, 3)
