"""DynamicViT: invariants, training, a naive-loop equivalence and the DeiT-S MAC count."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from reference_impls.vision import dynamicvit
from reference_impls.vision.dynamicvit import Config, DynamicViT, make_pruner, patch
from reference_impls.vision.macs import vit_macs
from reference_impls.vision.vit import DEIT_S, Attention, TokenState, VisionTransformer

from ..common import TINY, device_param, images, tiny_vit

STAGES = Config(keep_ratio=0.7, blocks=(1, 2, 3))  # all three stages on the 4-block TINY


def toy_task(n: int = 16, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of noise images told apart by a brightness offset."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randn(n, 3, TINY.img_size, TINY.img_size, generator=g)
    return x + (labels.float() * 2 - 1)[:, None, None, None] * 0.5, labels


@device_param
def test_kept_counts_per_block(device: str) -> None:
    """Stage s keeps int(64 * 0.7**s) patches: 44, 31, 21 (plus CLS), output shape unchanged."""
    model, x = tiny_vit(device=device), images(device=device)
    with torch.no_grad(), patch(model, STAGES):
        out = model(x)
        assert model.token_counts() == [(65, 65), (45, 45), (32, 32), (22, 22)]
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()


def test_keep_ratio_one_changes_nothing() -> None:
    """rho = 1 with keep_order keeps every token in place: exactly the unpatched output.

    The official layout reorders them best first: the same output up to float summation order."""
    model, x = tiny_vit(), images()
    with torch.no_grad():
        reference = model(x)
        with patch(model, replace(STAGES, keep_ratio=1.0, keep_order=True)):
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
        with patch(model, replace(STAGES, keep_ratio=1.0)):
            torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-6)
    assert dynamicvit.config_for(1.0, 12).blocks == ()


def test_cls_kept_and_rows_are_copies() -> None:
    """Pruning keeps CLS unchanged at row 0; every kept row is an unchanged input row."""
    torch.manual_seed(0)
    x = torch.randn(3, 65, TINY.width)
    pruner = DynamicViT(TINY.width, 64, STAGES).eval()
    with torch.no_grad():
        out, size = pruner(TokenState(x, None, index=1))
    assert out.shape == (3, 45, TINY.width) and size is None
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    for b in range(3):
        for row in out[b, 1:]:
            assert (x[b] == row).all(dim=1).any()


def test_size_zero_is_an_exact_attention_mask() -> None:
    """vit.Attention gives a size-0 key exactly zero weight; a mask_eps key about 1e-6."""
    torch.manual_seed(0)
    attention = Attention(TINY.width, TINY.heads)
    x = torch.randn(2, 9, TINY.width)
    size = torch.ones(2, 9, 1)
    size[:, 3] = 0.0
    size[:, 5] = STAGES.mask_eps
    with torch.no_grad():
        _, attn, _ = attention(x, size)
    assert (attn[..., 3] == 0).all()
    assert (attn[..., 5] < 1e-5).all() and (attn[..., 5] > 0).all()


def test_training_masks_instead_of_removing() -> None:
    """Train mode keeps all tokens; decisions are 0/1, nested across stages, sizes eps or 1."""
    torch.manual_seed(0)
    model, x = tiny_vit(), images(batch=4)
    pruner = make_pruner(model, STAGES).train()
    model.train()
    with patch(model, STAGES, pruner):
        model(x)
        assert model.token_counts() == [(65, 65)] * 4
    first, second, third = pruner.decisions
    for d in pruner.decisions:
        assert d.shape == (4, 64) and set(d.unique().tolist()) <= {0.0, 1.0}
    assert (second <= first).all() and (third <= second).all()
    size = dynamicvit.mask_size(first, None, STAGES.mask_eps)
    assert size[:, 0].eq(1).all()
    expected = torch.where(first > 0, 1.0, STAGES.mask_eps)
    torch.testing.assert_close(size[:, 1:, 0], expected)


def test_classification_gradient_reaches_every_predictor() -> None:
    """Through the attention mask alone (no ratio loss), every predictor gets a finite gradient."""
    torch.manual_seed(0)
    model, x = tiny_vit(), images(batch=4)
    pruner = make_pruner(model, STAGES).train()
    model.train()
    with patch(model, STAGES, pruner):
        loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for predictor in pruner.predictors:
        grad = predictor.embed[1].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_reduces_the_loss() -> None:
    """25 Adam steps on a seeded 2-class toy task: the loss falls by more than half."""
    torch.manual_seed(0)
    model = tiny_vit(config=replace(TINY, num_classes=2)).train()
    pruner = make_pruner(model, STAGES).train()
    optimizer = torch.optim.Adam([*model.parameters(), *pruner.parameters()], lr=1e-3)
    x, labels = toy_task(8)
    losses = [dynamicvit.train_step(model, pruner, optimizer, x, labels) for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_ratio_loss_pulls_the_kept_share_to_rho() -> None:
    """Trained on the ratio loss alone, stage s keeps about rho**s of the tokens of new images."""
    torch.manual_seed(0)
    model = tiny_vit().train().requires_grad_(False)
    pruner = make_pruner(model, STAGES).train()
    optimizer = torch.optim.Adam(pruner.parameters(), lr=1e-2)
    x = images(batch=4)
    for _ in range(30):
        optimizer.zero_grad()
        with patch(model, STAGES, pruner):
            model(x)
        pruner.ratio_loss().backward()
        optimizer.step()
    with torch.no_grad(), patch(model, STAGES, pruner):
        model(images(batch=8, seed=10))
    shares = [d.mean().item() for d in pruner.decisions]
    targets = [0.7, 0.49, 0.343]
    assert all(abs(s - t) < 0.05 for s, t in zip(shares, targets, strict=True)), shares


def test_patch_leaves_no_trace() -> None:
    """The model's modules and parameters are the same before, during and after patching."""
    model = tiny_vit()
    names = [name for name, _ in model.named_modules()]
    params = len(list(model.parameters()))
    with patch(model, STAGES):
        assert [name for name, _ in model.named_modules()] == names
        assert len(list(model.parameters())) == params
    assert [name for name, _ in model.named_modules()] == names
    assert all(b.pre_reducer is None for b in model.blocks)


def test_config_ranges_are_checked() -> None:
    with pytest.raises(AssertionError):
        Config(keep_ratio=0.0)
    with pytest.raises(AssertionError):
        Config(blocks=(6, 3))
    assert dynamicvit.config_for(0.343, 12).blocks == (3, 6, 9)
    assert dynamicvit.kept_count(196, 0.5 ** (1 / 3), 3) == 98  # not 97 from float noise


# --- equivalence with a naive loop ------------------------------------------------------------


def naive_predict_and_prune(
    predictor: dynamicvit.Predictor, x: torch.Tensor, keep: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's prediction module and top-k selection, one image and one token at a time."""
    B, N, C = x.shape
    log_probs = torch.zeros(B, N - 1, 2)
    pruned = []
    for b in range(B):
        feats = [predictor.embed(x[b, 1 + i]) for i in range(N - 1)]
        half = C // 2
        total, weight = torch.zeros(C - half), 0.0
        for i in range(N - 1):
            total = total + keep[b, i] * feats[i][half:]
            weight += keep[b, i].item()
        glob = total / weight
        for i in range(N - 1):
            z = torch.cat([feats[i][:half], glob])
            log_probs[b, i] = predictor.head(z).log_softmax(dim=-1)
        scores = [(log_probs[b, i, 0].item(), i) for i in range(N - 1)]
        best = [i for _, i in sorted(scores, reverse=True)[:k]]  # best first, as officially
        pruned.append(torch.stack([x[b, 0]] + [x[b, 1 + i] for i in best]))
    return log_probs, torch.stack(pruned)


def test_matches_naive_loop() -> None:
    """Vectorised predictor + top-k equals the naive loop on random tokens and keep weights."""
    torch.manual_seed(0)
    predictor = dynamicvit.Predictor(TINY.width).eval()
    x = torch.randn(3, 17, TINY.width)
    keep = (torch.rand(3, 16) > 0.3).float()
    keep[:, 0] = 1.0
    with torch.no_grad():
        log_probs = predictor(x[:, 1:], keep)
        pruned, _, _ = dynamicvit.prune(x, log_probs, 7)
        naive_log_probs, naive_pruned = naive_predict_and_prune(predictor, x, keep, 7)
    torch.testing.assert_close(log_probs, naive_log_probs)
    torch.testing.assert_close(pruned, naive_pruned)


def test_prune_lays_out_best_first_like_the_official_argsort() -> None:
    """Scores 0.1, 0.9, 0.5, 0.7 keep patches 1, 3 (best first) at k=2; per image in a batch."""
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)  # row r of image b: 10b+2r
    keep = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.8, 0.2, 0.6, 0.4]])
    log_probs = torch.stack([keep, 1 - keep], dim=-1)  # (B, P, 2); only index 0 is read
    out, _, kept = dynamicvit.prune(x, log_probs, 2)
    assert kept.tolist() == [[1, 3], [0, 2]]
    assert out[:, :, 0].tolist() == [[0.0, 4.0, 8.0], [10.0, 12.0, 16.0]]  # CLS, then best first
    ordered, _, _ = dynamicvit.prune(x, log_probs, 2, keep_order=True)
    assert ordered[:, :, 0].tolist() == [[0.0, 4.0, 8.0], [10.0, 12.0, 16.0]]
    out, _, kept = dynamicvit.prune(x, log_probs, 3)
    assert kept.tolist() == [[1, 3, 2], [0, 2, 3]]
    ordered, _, _ = dynamicvit.prune(x, log_probs, 3, keep_order=True)
    assert ordered[:, :, 0].tolist() == [[0.0, 4.0, 6.0, 8.0], [10.0, 12.0, 16.0, 18.0]]


def test_prune_edge_cases_all_none_and_fp16() -> None:
    """k = P keeps every patch reordered best first; k = 0 keeps CLS alone; fp16 works alike."""
    x = torch.arange(4 * 3, dtype=torch.float16).reshape(1, 4, 3)
    log_probs = torch.tensor([[[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]]], dtype=torch.float16).log()
    size = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]], dtype=torch.float16)
    out, out_size, kept = dynamicvit.prune(x, log_probs, 3, size)
    assert out.dtype == torch.float16 and kept.tolist() == [[1, 2, 0]]
    assert out[0, :, 0].tolist() == [0.0, 6.0, 9.0, 3.0]
    assert out_size is not None and out_size[0, :, 0].tolist() == [1.0, 3.0, 4.0, 2.0]
    out, _, kept = dynamicvit.prune(x, log_probs, 0)
    assert out.shape == (1, 1, 3) and kept.shape == (1, 0)


def test_keep_order_does_not_change_the_logits() -> None:
    """Best-first (official) and spatial order give the same logits: attention ignores order."""
    model, x = tiny_vit(), images()
    with torch.no_grad():
        with patch(model, STAGES):
            official = model(x)
        with patch(model, replace(STAGES, keep_order=True)):
            spatial = model(x)
    torch.testing.assert_close(official, spatial, rtol=1e-5, atol=1e-5)


# --- the paper's cost ------------------------------------------------------------------------


def test_deit_s_at_rho_07_costs_29_gmacs() -> None:
    """DeiT-S with rho 0.7 keeps 137, 96, 67 patches: ~2.9 GMACs (paper: 2.9 GFLOPs).

    Backbone only (macs.vit_macs); the predictors add predictor_macs, about 0.1 GMACs."""
    torch.manual_seed(0)
    model = VisionTransformer(DEIT_S).eval()
    with torch.no_grad(), patch(model, Config(keep_ratio=0.7)):
        model(torch.randn(1, 3, 224, 224))
        counts = model.token_counts()
    assert [n for n, _ in counts] == [197] * 3 + [138] * 3 + [97] * 3 + [68] * 3
    assert abs(vit_macs(DEIT_S, counts) / 1e9 - 2.9) <= 0.05
    assert abs(dynamicvit.predictor_macs(384, [196, 137, 96]) / 1e9 - 0.1) < 0.01
