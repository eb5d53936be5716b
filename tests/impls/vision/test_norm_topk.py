"""Top-k by token norm (baseline)."""

from __future__ import annotations

import torch

from reference_impls.vision import norm_topk

from ..common import images, tiny_vit


def test_exact_kept_counts_per_block() -> None:
    model = tiny_vit()
    with norm_topk.patch(model, norm_topk.Config(keep_rate=0.25, blocks=(0,))):
        model(images())
    assert model.token_counts() == [(65, 17), (17, 17), (17, 17), (17, 17)]


def test_keeps_the_largest_norms_and_cls() -> None:
    x = torch.zeros(1, 6, 2)
    x[0, :, 0] = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    out, _, kept = norm_topk.norm_topk(x, 2)
    assert kept.tolist() == [[0, 2]]  # patches 1 and 3 (norms 5 and 4), original order
    assert out[0, :, 0].tolist() == [0.0, 5.0, 4.0]


def test_identity_at_full_rate() -> None:
    model = tiny_vit()
    x = images()
    reference = model(x)
    with norm_topk.patch(model, norm_topk.Config(keep_rate=1.0, blocks=(1, 2))):
        torch.testing.assert_close(model(x), reference)


def test_matches_a_naive_loop() -> None:
    x = torch.randn(3, 10, 5, generator=torch.Generator().manual_seed(0))
    out, _, _ = norm_topk.norm_topk(x, 4)
    for b in range(3):
        norms = [float(x[b, i].norm()) for i in range(1, 10)]
        best = sorted(sorted(range(9), key=lambda i: -norms[i])[:4])
        torch.testing.assert_close(out[b], torch.stack([x[b, 0]] + [x[b, 1 + i] for i in best]))
