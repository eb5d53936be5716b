"""ATC: invariants, and equivalence with a naive agglomerative clustering loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from reference_impls.vision.atc import (
    LINKAGES,
    AgglomerativeTokenClustering,
    Config,
    agglomerative_labels,
    atc,
    config_for,
    patch,
)
from reference_impls.vision.vit import TokenState

from ..common import TINY, device_param, images, tiny_vit


def _inputs(batch: int = 3, n: int = 24, c: int = 5, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1 + n, c, generator=g, dtype=torch.float64)
    keys = torch.randn(batch, 1 + n, d, generator=g, dtype=torch.float64)
    size = torch.randint(1, 5, (batch, 1 + n, 1), generator=g).double()
    return x, keys, size


@device_param
def test_kept_count_per_block(device: str) -> None:
    """Each chosen block leaves exactly 1 + round(keep_rate * patches) tokens for its MLP."""
    model, x = tiny_vit(device=device), images(device=device)
    with torch.no_grad(), patch(model, Config(keep_rate=0.5, blocks=(1, 2))):
        out = model(x)
        counts = model.token_counts()
        assert model.track_size is True  # proportional attention, as in the paper
    assert out.shape == (2, TINY.num_classes) and torch.isfinite(out).all()
    assert counts == [(65, 65), (65, 33), (33, 17), (17, 17)]
    assert model.track_size is False


def test_config_checks_and_identity_rate() -> None:
    """Unknown linkages are refused; keep rate 1 patches no block."""
    with pytest.raises(AssertionError):
        Config(linkage="ward")
    assert config_for(1.0, 12).blocks == ()
    config = config_for(0.5, 12)
    assert config.blocks == (3, 6, 9) and math.isclose(config.keep_rate**3, 0.5)


def test_merging_conserves_size_weighted_sum() -> None:
    """sum(size * x) and the total size are the same before and after clustering."""
    x, keys, size = _inputs()
    for linkage in LINKAGES:
        out, new_size = atc(x, keys, 7, size, linkage)
        assert out.shape == (3, 8, 5) and new_size is not None
        torch.testing.assert_close((new_size * out).sum(dim=1), (size * x).sum(dim=1))
        torch.testing.assert_close(new_size.sum(dim=1), size.sum(dim=1))


def test_cls_row_unchanged() -> None:
    """CLS is never clustered: its token and size come out bit for bit."""
    x, keys, size = _inputs()
    out, new_size = atc(x, keys, 4, size)
    assert new_size is not None
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(new_size[:, 0], size[:, 0])


def test_k_equal_to_n_changes_nothing() -> None:
    """With as many clusters as tokens every token is its own cluster, in order."""
    x, keys, size = _inputs()
    labels = agglomerative_labels(keys[:, 1:], 24)
    assert torch.equal(labels, torch.arange(24).expand(3, 24))
    out, new_size = atc(x, keys, 24, size)
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(new_size, size)


def test_clusters_follow_keys_not_features() -> None:
    """Two tight groups of keys become the two clusters, whatever the token features are."""
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(2, 6, generator=g)
    group = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 0, 1])
    keys = centres[group] + 0.01 * torch.randn(10, 6, generator=g)
    for linkage in LINKAGES:
        labels = agglomerative_labels(keys[None], 2, linkage)[0]
        assert torch.equal(labels, group), linkage


def test_proportional_attention_can_be_switched_off() -> None:
    """Without proportional attention no size vector is carried."""
    model = tiny_vit()
    with (
        torch.no_grad(),
        patch(model, Config(keep_rate=0.5, blocks=(1,), proportional_attention=False)),
    ):
        assert model.track_size is False
        model(images())
    reducer = AgglomerativeTokenClustering(Config(keep_rate=0.5))
    x, keys, _ = _inputs(n=8)
    _, size = reducer(TokenState(x, None, 0, None, keys))
    assert size is None


# --- equivalence with a naive loop --------------------------------------------------------------


def naive_atc(x: torch.Tensor, keys: torch.Tensor, k: int, size: torch.Tensor, linkage: str):
    """Textbook agglomerative clustering, one image at a time, on explicit member lists."""
    reduce = {"single": min, "complete": max, "average": lambda d: sum(d) / len(d)}[linkage]
    outs, sizes, all_labels = [], [], []
    for b in range(x.shape[0]):
        n = x.shape[1] - 1
        unit = [keys[b, 1 + i] / keys[b, 1 + i].norm() for i in range(n)]
        dist = [[1 - float(torch.dot(unit[i], unit[j])) for j in range(n)] for i in range(n)]
        clusters = [[i] for i in range(n)]  # kept sorted by lowest member
        while len(clusters) > k:
            best, pair = math.inf, (0, 0)
            for a, c in itertools.combinations(range(len(clusters)), 2):
                d = reduce([dist[i][j] for i in clusters[a] for j in clusters[c]])
                if d < best:
                    best, pair = d, (a, c)
            a, c = pair
            clusters[a] = sorted(clusters[a] + clusters.pop(c))
        labels = [0] * n
        for label, members in enumerate(clusters):
            for i in members:
                labels[i] = label
        all_labels.append(labels)
        rows, counts = [x[b, 0]], [float(size[b, 0])]
        for members in clusters:
            total = sum(float(size[b, 1 + i]) for i in members)
            rows.append(sum(size[b, 1 + i] * x[b, 1 + i] for i in members) / total)
            counts.append(total)
        outs.append(torch.stack(rows))
        sizes.append(torch.tensor(counts, dtype=x.dtype))
    return torch.stack(outs), torch.stack(sizes).unsqueeze(-1), torch.tensor(all_labels)


@pytest.mark.parametrize("linkage", LINKAGES)
def test_matches_naive_loop(linkage: str) -> None:
    """Labels, merged tokens and sizes equal the naive clustering on random inputs."""
    x, keys, size = _inputs(batch=3, n=24, seed=11)
    for k in (1, 6, 17):
        out, new_size = atc(x, keys, k, size, linkage)
        ref, ref_size, ref_labels = naive_atc(x, keys, k, size, linkage)
        assert torch.equal(agglomerative_labels(keys[:, 1:], k, linkage), ref_labels)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(new_size, ref_size)


def test_linkages_give_different_clusterings() -> None:
    """The linkage option matters: the three criteria disagree on random keys."""
    _, keys, _ = _inputs(batch=1, n=24, seed=11)
    labels = [agglomerative_labels(keys[:, 1:], 6, linkage) for linkage in LINKAGES]
    assert not torch.equal(labels[0], labels[1]) and not torch.equal(labels[0], labels[2])
    assert not torch.equal(labels[1], labels[2])


def test_official_count_floors_a_power_of_the_patch_count() -> None:
    """64 patches, keep rate 0.7: stages keep int(44.8) = 44, int(31.36) = 31, int(21.95) = 21;
    never more than the tokens present, never fewer than one."""
    from reference_impls.vision.atc import official_count

    assert [official_count(64, 0.7, s, 64) for s in range(3)] == [44, 31, 21]
    assert official_count(64, 0.9, 0, 40) == 40
    assert official_count(64, 0.01, 2, 5) == 1


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        ("official", [(65, 65), (65, 45), (45, 32), (32, 22)]),
        ("per_stage", [(65, 65), (65, 46), (46, 32), (32, 23)]),
    ],
)
def test_count_rules_in_the_model(count: str, expected: list[tuple[int, int]]) -> None:
    """keep rate 0.7 at blocks 1, 2, 3 of 64 patches: official 44, 31, 21 clusters; per stage
    round(0.7 * 64) = 45, round(0.7 * 45) = 31 (0.7 * 45 is 31.4999... in floats),
    round(0.7 * 31) = 22."""
    model, x = tiny_vit(), images()
    with torch.no_grad(), patch(model, Config(keep_rate=0.7, blocks=(1, 2, 3), count=count)):
        model(x)
        assert model.token_counts() == expected
    with pytest.raises(AssertionError, match="count must be one of"):
        Config(count="floor")
