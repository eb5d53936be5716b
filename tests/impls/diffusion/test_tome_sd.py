"""ToMe for Stable Diffusion on the small DiT: partition, matching against a naive loop, exact
merged counts, unmerge, identity at r = 0, and the reversible adapter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.diffusion import tome_sd
from reference_impls.diffusion.dit import DiT, DiTConfig
from reference_impls.diffusion.tome_sd import Config, destination_mask, random_2d_bipartite

from ..common import device_param

TINY = DiTConfig(in_channels=4, image_size=16, patch_size=2, width=24, depth=2, heads=2)


def _model(config: DiTConfig = TINY, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT(config).eval()


def _latent(B: int = 2, side: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, side, side, generator=generator), torch.tensor([10.0, 500.0])[:B]


def _tokens(B: int = 2, N: int = 64, C: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed))


def test_one_destination_per_full_cell() -> None:
    """A 7 x 5 grid has 3 x 2 full 2x2 cells: one destination each, none in the ragged edges."""
    for seed in range(5):
        mask = destination_mask((7, 5), 2, 2, generator=torch.Generator().manual_seed(seed))
        grid = mask.reshape(7, 5)
        assert int(mask.sum()) == 6
        assert not grid[6].any() and not grid[:, 4].any()
        for cy in range(3):
            for cx in range(2):
                assert int(grid[2 * cy : 2 * cy + 2, 2 * cx : 2 * cx + 2].sum()) == 1
    fixed = destination_mask((4, 4), 2, 2, use_rand=False).reshape(4, 4)
    assert fixed.nonzero().tolist() == [[0, 0], [0, 2], [2, 0], [2, 2]]  # top-left corners
    draws = {
        tuple(destination_mask((8, 8), 2, 2, generator=torch.Generator().manual_seed(s)).tolist())
        for s in range(4)
    }
    assert len(draws) > 1  # random


def _naive(metric: torch.Tensor, x: torch.Tensor, is_dst: torch.Tensor, r: int) -> torch.Tensor:
    """ToMe-SD's merge written with loops for one sample: `[unmerged sources, destinations]`."""
    dst = [n for n in range(len(is_dst)) if is_dst[n]]
    src = [n for n in range(len(is_dst)) if not is_dst[n]]
    best = {}
    for s in src:
        sims = [float(F.cosine_similarity(metric[s], metric[d], dim=0)) for d in dst]
        best[s] = (max(sims), dst[sims.index(max(sims))])
    merged = sorted(src, key=lambda s: -best[s][0])[:r]
    rows = [x[s] for s in src if s not in merged]
    for d in dst:
        group = [x[d]] + [x[s] for s in merged if best[s][1] == d]
        rows.append(torch.stack(group).mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize(("grid", "r"), [((8, 8), 20), ((8, 8), 48), ((7, 5), 11)])
def test_merge_matches_a_naive_loop(grid: tuple[int, int], r: int) -> None:
    N = grid[0] * grid[1]
    metric, x = _tokens(N=N), _tokens(N=N, C=3, seed=1)
    merge, _ = random_2d_bipartite(metric, grid, r, generator=torch.Generator().manual_seed(7))
    is_dst = destination_mask(grid, 2, 2, generator=torch.Generator().manual_seed(7))
    merged = merge(x)
    assert merged.shape == (2, N - r, 3)
    for b in range(2):
        torch.testing.assert_close(merged[b], _naive(metric[b], x[b], is_dst, r))


def test_unmerge_copies_destination_outputs_back() -> None:
    metric, x = _tokens(), _tokens(C=3, seed=1)
    merge, unmerge = random_2d_bipartite(
        metric, (8, 8), 30, generator=torch.Generator().manual_seed(3)
    )
    y = merge(x) * 2 + 1  # any per-token function of the merged tokens
    out = unmerge(y)
    assert out.shape == (2, 64, 3)
    for b in range(2):
        # every output row is one of the merged rows, and exactly 64 - 30 distinct rows remain
        assert len({tuple(row.tolist()) for row in out[b]}) == 34
    is_dst = destination_mask((8, 8), 2, 2, generator=torch.Generator().manual_seed(3))
    # destinations: their own merged row; unmerged sources: their own row, untouched
    unmerged_src = (out[0] - (2 * x[0] + 1)).abs().sum(-1) == 0
    assert int(unmerged_src[~is_dst].sum()) == 48 - 30


def test_merge_then_unmerge_restores_constant_cells() -> None:
    """Tokens equal within each 2x2 cell (and different across cells) merge into their own cell's
    destination, so unmerging the merged tokens gives the input back, even at r = all sources."""
    cells = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    x = cells.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).reshape(2, 64, 6)
    for r in (10, 48):
        merge, unmerge = random_2d_bipartite(
            x, (8, 8), r, generator=torch.Generator().manual_seed(r)
        )
        merged = merge(x)
        assert merged.shape == (2, 64 - r, 6)
        torch.testing.assert_close(unmerge(merged), x)


def test_r_is_capped_at_the_number_of_sources() -> None:
    merge, unmerge = random_2d_bipartite(_tokens(), (8, 8), 60)
    assert merge(_tokens()).shape == (2, 16, 5)
    assert unmerge(merge(_tokens())).shape == (2, 64, 5)


def test_degenerate_grids() -> None:
    """A grid with no full cell merges nothing; a grid that does not match N is an error."""
    x = _tokens(N=3)
    merge, unmerge = random_2d_bipartite(x, (1, 3), 2)
    assert merge(x) is x and unmerge(x) is x
    with pytest.raises(ValueError, match="do not fill"):
        random_2d_bipartite(_tokens(), (8, 7), 10)


@device_param
@pytest.mark.parametrize(("side", "ratio"), [(16, 0.5), (16, 0.75), (14, 0.5), (16, 0.3)])
def test_exact_merged_counts_in_the_model(side: int, ratio: float, device: str) -> None:
    """Each block's attention sees N - int(N * ratio) tokens; the output keeps its shape."""
    config = DiTConfig(in_channels=4, image_size=side, patch_size=2, width=24, depth=2, heads=2)
    model = _model(config).to(device)
    x, t = _latent(side=side)
    N = (side // 2) ** 2
    with torch.no_grad(), tome_sd.patch(model, Config(ratio=ratio)):
        out = model(x.to(device), t.to(device))
        seen = [block.attn.tokens_seen for block in model.dit_blocks()]
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert seen == [N - int(N * ratio)] * 2


def test_zero_ratio_is_the_identity() -> None:
    model, (x, t) = _model(), _latent()
    with torch.no_grad():
        reference = model(x, t)
        with tome_sd.patch(model, Config(ratio=0.0)):
            same = model(x, t)
    torch.testing.assert_close(same, reference, rtol=0, atol=0)


def test_merging_changes_the_output_a_little() -> None:
    """At ratio 0.5 the prediction moves, but stays correlated with the full model's."""
    model, (x, t) = _model(), _latent()
    with torch.no_grad():
        reference = model(x, t)
        with tome_sd.patch(model, Config(ratio=0.5)):
            merged = model(x, t)
    assert not torch.allclose(merged, reference)
    assert F.cosine_similarity(merged.flatten(), reference.flatten(), dim=0) > 0.9


def test_seeded_runs_repeat_and_the_adapter_restores_the_model() -> None:
    model, (x, t) = _model(), _latent()
    with torch.no_grad():
        reference = model(x, t)
        with tome_sd.patch(model, Config(ratio=0.5, seed=3)):
            first = model(x, t)
        with tome_sd.patch(model, Config(ratio=0.5, seed=3)):
            second = model(x, t)
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        torch.testing.assert_close(model(x, t), reference, rtol=0, atol=0)
    assert all(block.attn_hook is None for block in model.dit_blocks())
    with pytest.raises(RuntimeError, match="boom"), tome_sd.patch(model, Config()):
        raise RuntimeError("boom")
    assert all(block.attn_hook is None for block in model.dit_blocks())


def test_config_for() -> None:
    assert tome_sd.config_for(1.0).ratio == 0.0
    assert tome_sd.config_for(0.5).ratio == 0.5
    assert tome_sd.config_for(0.1).ratio == 0.75  # tomesd's maximum for 2x2 cells
    with pytest.raises(AssertionError):
        Config(ratio=1.0)
