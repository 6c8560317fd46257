"""FAL data and bookkeeping: long-tail profile, budgets, the balanced Dirichlet partition, AULC and
class-balance statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data import longtail_counts, longtail_indices, partition_dataset
from fedsim.data.dir_balance import largest_remainder, sinkhorn_rows_cols
from fedsim.errors import ConfigError
from server.fal_math import aulc, class_balance, fal_budgets, tail_classes


@pytest.mark.parametrize(
    ("n_orig", "classes", "n_lt"),
    [(60000, 10, 20428), (50000, 10, 17023), (50000, 100, 15907)],
)
def test_longtail_sizes_of_the_spec_table(n_orig: int, classes: int, n_lt: int) -> None:
    counts = longtail_counts(n_orig, classes, 20)
    assert sum(counts) == n_lt
    assert counts[0] == n_orig // classes and counts[0] / counts[-1] == pytest.approx(20, rel=0.01)
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


@pytest.mark.parametrize(
    ("n", "per_cycle", "b", "labeled_45"),
    [
        (20428, 1020, 102, 9180),
        (17023, 850, 85, 7650),
        (15907, 795, 79, 7155),
        (97477, 4875, 487, None),
        (7007, 350, 35, None),
    ],
)
def test_budgets_of_the_spec_table(n: int, per_cycle: int, b: int, labeled_45: int | None) -> None:
    b0, bq, ratios = fal_budgets(n, 10, initial_ratio=0.05, query_ratio=0.05, end_ratio=0.45)
    assert int(round(n / 100) * 100 * 0.05) == per_cycle
    assert (b0, bq) == (b, b)
    assert ratios == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45])
    if labeled_45 is not None:  # the table's column is 0.45 * N100; per-client int() may lose a few
        n100 = round(n / 100) * 100
        assert round(0.45 * n100) == labeled_45
        got = 10 * (b0 + (len(ratios) - 1) * bq)
        assert got == labeled_45 if n100 * 0.05 % 10 == 0 else labeled_45 - 90 < got < labeled_45


def test_longtail_subset_is_seeded_and_has_the_profile() -> None:
    labels = np.repeat(np.arange(10), 6000)
    a = longtail_indices(labels, 20, np.random.default_rng(1))
    b = longtail_indices(labels, 20, np.random.default_rng(1))
    c = longtail_indices(labels, 20, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == longtail_counts(60000, 10, 20)


def _lt_labels() -> np.ndarray:
    labels = np.repeat(np.arange(10), 6000)
    return labels[longtail_indices(labels, 20, np.random.default_rng(0))]


@pytest.mark.parametrize("beta", [0.1, 100.0])
def test_dir_balance_gives_equal_client_sizes(beta: float) -> None:
    labels = _lt_labels()  # 20,428 samples
    parts = partition_dataset("dir_balance", labels, 10, 5, {"beta": beta})
    assert [len(p) for p in parts] == [2043] * 8 + [2042] * 2
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    if beta == 0.1:
        assert np.mean(shares) > 0.5  # a few dominant classes per client
    else:  # close to the global profile (class 0 holds 29% of FMNIST-LT)
        assert max(shares) < 0.4


def test_dir_balance_seeding() -> None:
    labels = _lt_labels()
    fixed = {"beta": 0.1, "partition_seed": 0}  # Q4: the config default, as in the reference
    same_a = partition_dataset("dir_balance", labels, 10, 1, fixed)
    same_b = partition_dataset("dir_balance", labels, 10, 2, fixed)
    for x, y in zip(same_a, same_b, strict=True):
        np.testing.assert_array_equal(x, y)
    run_a = partition_dataset("dir_balance", labels, 10, 1, {"beta": 0.1, "partition_seed": None})
    run_b = partition_dataset("dir_balance", labels, 10, 2, {"beta": 0.1, "partition_seed": None})
    assert not all(np.array_equal(x, y) for x, y in zip(run_a, run_b, strict=True))
    with pytest.raises(ConfigError, match="invalid partition.beta=0"):
        partition_dataset("dir_balance", labels, 10, 1, {"beta": 0})


def test_dir_balance_helpers_by_hand() -> None:
    assert largest_remainder(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert largest_remainder(7, np.array([0.5, 0.3, 0.2])).tolist() == [4, 2, 1]  # 3.5 2.1 1.4
    p = sinkhorn_rows_cols(np.array([[1.0, 3.0], [2.0, 2.0]]), iterations=50)
    np.testing.assert_allclose(p.sum(axis=0), [1.0, 1.0])
    np.testing.assert_allclose(p.sum(axis=1), [1.0, 1.0], atol=1e-6)


def test_aulc_and_class_balance_by_hand() -> None:
    # (0.55 * 0.05 + 0.75 * 0.05) / 0.10 = 0.65
    assert aulc([0.05, 0.1, 0.15], [0.5, 0.6, 0.9]) == pytest.approx(0.65)
    assert aulc([0.05], [0.4]) == pytest.approx(0.4)
    assert tail_classes(np.array([100, 50, 20, 10])).tolist() == [2, 3]
    assert tail_classes(np.array([5, 50, 5, 10, 7])).tolist() == [0, 2]  # ties: later index rarer
    stats = class_balance(np.array([4, 3, 2, 1, 0]), np.array([3, 4]))
    assert stats["tail_share"] == pytest.approx(0.1)
    assert stats["missing"] == 1 and stats["min_max"] == pytest.approx(0.25)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    assert stats["entropy"] == pytest.approx(-(p * np.log(p)).sum() / np.log(5))
