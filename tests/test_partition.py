"""Tests of fedsim.data.partition, fedsim.data.longtail and fedsim.data.report."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fedsim.constants import PARTITION_CSV, PARTITION_PNG
from fedsim.data import (
    PARTITIONERS,
    label_histogram,
    load_dataset,
    longtail_counts,
    longtail_indices,
    partition_dataset,
    partition_params,
    write_partition_heatmap,
    write_partition_report,
)
from fedsim.errors import ConfigError

# 10 classes x 100 samples, interleaved (label of index i is i % 10)
BALANCED = np.arange(1000) % 10


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_dataset("digits").train_y.numpy()


def _check_cover(parts: list[np.ndarray], n: int, k: int) -> None:
    assert len(parts) == k
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates
    allidx = np.concatenate(parts)
    assert allidx.shape[0] == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


def test_registered_partitioners() -> None:
    assert set(PARTITIONERS.names()) >= {"iid", "dirichlet", "shards", "quantity_skew"}


@pytest.mark.parametrize("name", PARTITIONERS.names())
@pytest.mark.parametrize("k", [1, 7, 10])
def test_every_partitioner_is_a_cover(name: str, k: int, digits_labels: np.ndarray) -> None:
    for labels in (BALANCED, digits_labels):
        parts = partition_dataset(name, labels, k, seed=3, params={})
        _check_cover(parts, labels.shape[0], k)


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_seeded(name: str) -> None:
    a = partition_dataset(name, BALANCED, 10, seed=1, params={})
    b = partition_dataset(name, BALANCED, 10, seed=1, params={})
    c = partition_dataset(name, BALANCED, 10, seed=2, params={})
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_even() -> None:
    parts = partition_dataset("iid", np.zeros(103, dtype=np.int64), 10, seed=0, params={})
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def _mean_tv(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance of client label distributions from the global one."""
    hist = label_histogram(labels, parts, 10).astype(float)
    glob = np.bincount(labels, minlength=10) / len(labels)
    local = hist / hist.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(local - glob).sum(axis=1).mean())


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = np.arange(5000) % 10
    tv = {}
    for alpha in (0.1, 1.0, 100.0):
        vals = []
        for seed in range(3):
            parts = partition_dataset(
                "dirichlet", labels, 10, seed, {"alpha": alpha, "min_partition_size": 5}
            )
            _check_cover(parts, len(labels), 10)
            vals.append(_mean_tv(labels, parts))
        tv[alpha] = np.mean(vals)
    assert tv[0.1] > tv[1.0] > tv[100.0]
    assert tv[0.1] > 0.5  # strongly skewed
    assert tv[100.0] < 0.1  # close to IID


def test_dirichlet_min_partition_size_respected() -> None:
    parts = partition_dataset(
        "dirichlet", BALANCED, 10, 0, {"alpha": 0.5, "min_partition_size": 40}
    )
    assert min(len(p) for p in parts) >= 40


def test_shards_classes_per_client() -> None:
    # 20 shards of 50 on 10 classes x 100: every shard is a single class
    for cpc in (1, 2, 5):
        parts = partition_dataset("shards", BALANCED, 10, 0, {"classes_per_client": cpc})
        _check_cover(parts, 1000, 10)
        for p in parts:
            assert len(np.unique(BALANCED[p])) <= cpc
            assert len(p) == 100
    # one class per client with 10 clients: each class goes to exactly one client
    parts = partition_dataset("shards", BALANCED, 10, 0, {"classes_per_client": 1})
    assert sorted(int(BALANCED[p][0]) for p in parts) == list(range(10))


def test_shards_uneven_covers() -> None:
    labels = np.arange(1003) % 10
    parts = partition_dataset("shards", labels, 7, 0, {"classes_per_client": 3})
    _check_cover(parts, 1003, 7)


def test_quantity_skew_sizes_vary_labels_iid() -> None:
    labels = np.arange(20000) % 10
    parts = partition_dataset(
        "quantity_skew", labels, 10, 0, {"alpha": 0.5, "min_partition_size": 50}
    )
    _check_cover(parts, len(labels), 10)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 50
    assert sizes.max() > 3 * sizes.min()
    # label mix of the big clients is close to the global (uniform) one
    for p in parts:
        if len(p) >= 1000:
            share = np.bincount(labels[p], minlength=10) / len(p)
            assert np.abs(share - 0.1).max() < 0.05


def test_partition_params() -> None:
    assert partition_params("dirichlet") == {
        "alpha": 0.5,
        "min_partition_size": 10,
        "max_tries": 100,
    }
    assert partition_params("iid") == {}


@pytest.mark.parametrize(
    ("name", "k", "params", "fragment"),
    [
        ("dirichlet", 10, {"alpha": 0}, "partition.alpha"),
        ("dirichlet", 10, {"alpha": -1.0}, "partition.alpha"),
        ("quantity_skew", 10, {"alpha": 0.0}, "partition.alpha"),
        ("iid", 1001, {}, "more clients than samples"),
        ("iid", 0, {}, "num_clients"),
        ("dirichlet", 10, {"min_partition_size": 101}, "partition.min_partition_size"),
        ("quantity_skew", 10, {"min_partition_size": 101}, "partition.min_partition_size"),
        ("shards", 10, {"classes_per_client": 0}, "partition.classes_per_client"),
        ("shards", 10, {"classes_per_client": 101}, "partition.classes_per_client"),
        ("dirichlet", 10, {"bogus": 1}, "partition.bogus"),
    ],
)
def test_bad_input(name: str, k: int, params: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        partition_dataset(name, BALANCED, k, 0, params)
    assert "\n" not in str(info.value)


def test_unknown_param_lists_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        partition_dataset("dirichlet", BALANCED, 10, 0, {"beta": 1})
    msg = str(info.value)
    assert "beta" in msg and "alpha" in msg and "min_partition_size" in msg


def test_unknown_partitioner_lists_names() -> None:
    with pytest.raises(ConfigError, match="dirichlet"):
        partition_dataset("nope", BALANCED, 10, 0, {})


def test_dirichlet_impossible_min_size() -> None:
    # feasible by count (100 * 10 <= 1000) but never met by a random draw at tiny alpha
    with pytest.raises(ConfigError, match="min_partition_size") as info:
        partition_dataset(
            "dirichlet", BALANCED, 10, 0, {"alpha": 0.01, "min_partition_size": 100, "max_tries": 5}
        )
    assert "lower" in str(info.value)


# --- long tail ----------------------------------------------------------------------------------


def test_longtail_fmnist_size() -> None:
    labels = np.repeat(np.arange(10), 6000)
    rng = np.random.default_rng(0)
    kept = longtail_indices(labels, 20, rng)
    counts = np.bincount(labels[kept], minlength=10)
    expected = [int(6000 * 0.05 ** (c / 9)) for c in range(10)]
    assert counts.tolist() == expected
    assert counts[0] == 6000 and counts[9] == 300
    assert counts.argmax() == 0 and np.all(np.diff(counts) < 0)
    assert len(kept) == 20428  # spec table, FMNIST-LT rho=20
    assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0)


def test_longtail_counts_match_spec_table() -> None:
    assert sum(longtail_counts(60000, 10, 20)) == 20428  # FMNIST-LT
    assert sum(longtail_counts(50000, 10, 20)) == 17023  # CIFAR-10-LT
    assert sum(longtail_counts(50000, 100, 20)) == 15907  # CIFAR-100-LT


def test_longtail_rho_one_keeps_all() -> None:
    labels = np.arange(500) % 7
    assert np.array_equal(longtail_indices(labels, 1, np.random.default_rng(0)), np.arange(500))


def test_longtail_seeded() -> None:
    labels = np.arange(5000) % 10
    a = longtail_indices(labels, 10, np.random.default_rng(1))
    b = longtail_indices(labels, 10, np.random.default_rng(1))
    c = longtail_indices(labels, 10, np.random.default_rng(2))
    assert np.array_equal(a, b)
    assert len(a) == len(c) and not np.array_equal(a, c)


def test_longtail_small_class_kept_whole() -> None:
    labels = np.array([0] * 100 + [1] * 3 + [2] * 100)  # n_max = 67.67; n_1 = int(67.67 * 0.5)
    kept = longtail_indices(labels, 4, np.random.default_rng(0))
    assert np.bincount(labels[kept]).tolist() == [67, 3, 16]


@pytest.mark.parametrize("rho", [0.5, 0, -3, float("nan")])
def test_longtail_bad_rho(rho: float) -> None:
    with pytest.raises(ConfigError, match="longtail.rho"):
        longtail_indices(BALANCED, rho, np.random.default_rng(0))


# --- report -------------------------------------------------------------------------------------


def test_label_histogram_hand_computed() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histogram(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])], 4)
    assert hist.tolist() == [[1, 0, 1, 0], [0, 2, 2, 0]]


@pytest.mark.parametrize("k", [10, 300])
def test_write_partition_report(tmp_path, k: int) -> None:
    labels = np.arange(3000) % 10
    parts = partition_dataset("dirichlet", labels, k, 0, {"alpha": 0.5, "min_partition_size": 1})
    write_partition_report(tmp_path, labels, parts, 10)
    hist = label_histogram(labels, parts, 10)
    with open(tmp_path / PARTITION_CSV, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["client", *[str(c) for c in range(10)], "total"]
    assert len(rows) == k + 1
    for i, row in enumerate(rows[1:]):
        assert int(row[0]) == i
        assert [int(v) for v in row[1:-1]] == hist[i].tolist()
        assert int(row[-1]) == len(parts[i])
    png = tmp_path / PARTITION_PNG
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_partition_report_can_leave_the_heatmap_for_later(tmp_path: Path) -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 3]), np.array([1, 2, 4, 5])]
    hist = write_partition_report(tmp_path, labels, parts, 3, heatmap=False)
    assert hist.tolist() == [[1, 0, 1], [0, 2, 2]]
    assert (tmp_path / PARTITION_CSV).is_file()
    assert not (tmp_path / PARTITION_PNG).exists()
    write_partition_heatmap(tmp_path, hist)
    assert (tmp_path / PARTITION_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
