"""Hand-computed cases for :mod:`server.flain` that the mutation run (docs/mutation.md) showed were
missing: the one-line errors, bounds at equality, rollback at the first grid point, the guard's
counts, and dormant pruning's step, range and tie order."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.errors import ConfigError
from server import flain as fl


def test_threshold_grid_bounds_and_messages() -> None:
    with pytest.raises(ConfigError, match=r"^invalid defense\.k_step=0\.0: allowed a number > 0$"):
        fl.threshold_grid(0.1, 0.0, 1.0)
    with pytest.raises(
        ConfigError, match=r"^invalid defense\.k_init=2\.0: allowed a number <= k_cap=1\.0$"
    ):
        fl.threshold_grid(2.0, 0.1, 1.0)
    assert fl.threshold_grid(1.0, 0.1, 1.0).tolist() == [1.0]  # k_init == k_cap: one point
    g = fl.threshold_grid(0, 1, 3)  # integer bounds still give a float grid
    assert g.dtype == np.float64 and g.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_activation_stat_mean_mean_abs_and_message() -> None:
    x = np.array([[-1.0, 2.0], [3.0, -4.0]])
    assert fl.activation_stat(x).tolist() == [1.0, -1.0]  # default: mean
    assert fl.activation_stat(x, "mean").tolist() == [1.0, -1.0]
    assert fl.activation_stat(x, "mean_abs").tolist() == [2.0, 3.0]
    with pytest.raises(
        ConfigError, match=r"^invalid defense\.activation_stat='max': allowed mean or mean_abs$"
    ):
        fl.activation_stat(x, "max")


def test_rescale_zero_and_unit_norm() -> None:
    z = fl.rescale(np.zeros((2, 2)), 3.0)
    assert z.tolist() == [[0.0, 0.0], [0.0, 0.0]]  # not 0/0
    w = np.array([[0.6, 0.8]])  # norm exactly 1
    assert np.allclose(fl.rescale(w, 2.0), [[1.2, 1.6]])


def _search(**kw):
    a = np.array([0.0, 0.3])
    return fl.flain_search(
        a, np.eye(2), np.zeros((2, 2)), grid=np.array([0.1, 0.5]), rescale_norm=False, **kw
    )


def test_flain_search_messages() -> None:
    with pytest.raises(
        ConfigError, match=r"^invalid defense\.mode='other': allowed reference or rollback$"
    ):
        _search(aux_accuracy=lambda w: 1.0, tolerance=0.1, mode="other")
    with pytest.raises(
        ConfigError, match=r"^invalid defense\.on_no_stop='x': allowed last or identity$"
    ):
        _search(aux_accuracy=lambda w: 1.0, tolerance=0.1, on_no_stop="x")


def test_rollback_at_the_first_grid_point_keeps_the_final_weight() -> None:
    # any flip drops the accuracy from 1.0 to 0.5: the first k crosses; rollback has nothing to
    # roll back to and keeps W_T (k* None, no flips), and that is a stop, not the guard
    def acc(w: np.ndarray) -> float:
        return 1.0 if (np.diag(w) > 0).all() else 0.5

    res = _search(aux_accuracy=acc, tolerance=0.25, mode="rollback")
    assert np.array_equal(res.weight, np.eye(2))
    assert res.k_star is None and res.flip_count == 0 and res.acc_after == 1.0
    assert res.acc_before == 1.0 and res.grid_steps == 1 and not res.terminated_without_stop


def test_rollback_at_a_later_grid_point_is_a_stop() -> None:
    # one flip (k = 0.1) keeps 1.0; two flips (k = 0.5) drop to 0.5: rollback keeps k = 0.1
    def acc(w: np.ndarray) -> float:
        return 0.5 if (np.diag(w) < 0).all() else 1.0

    res = _search(aux_accuracy=acc, tolerance=0.25, mode="rollback")
    assert res.k_star == 0.1 and res.flip_count == 1 and res.acc_after == 1.0
    assert res.grid_steps == 2 and res.evaluations == 2 and not res.terminated_without_stop


def test_guard_identity_reports_no_flips() -> None:
    res = _search(aux_accuracy=lambda w: 1.0, tolerance=0.5, on_no_stop="identity")
    assert res.terminated_without_stop and res.k_star is None and res.flip_count == 0
    assert np.array_equal(res.weight, np.eye(2)) and res.acc_after == 1.0


def test_dormant_prune_step_fraction_bounds_and_message() -> None:
    a, w = np.array([0.1, 0.2]), np.ones((1, 2))
    for bad in (0.0, 1.5):
        with pytest.raises(
            ConfigError,
            match=rf"^invalid defense\.step_fraction={bad!r}: allowed a fraction in \(0, 1\]$",
        ):
            fl.dormant_prune(a, w, lambda m: 1.0, step_fraction=bad)
    # 1: everything at once
    res = fl.dormant_prune(a, w, lambda m: 1.0, step_fraction=1.0)
    assert res.pruned == 2 and res.weight.tolist() == [[0.0, 0.0]]


def test_dormant_prune_defaults() -> None:
    # 100 inputs, default step 1% = 1 input; accuracy 1 - 0.004 * pruned: the default tolerance
    # 0.01 allows 2 pruned (0.008), not 3 (0.012)
    a = np.arange(100, dtype=np.float64)

    def acc(w: np.ndarray) -> float:
        return 1.0 - 0.004 * int((w[0] == 0).sum())

    res = fl.dormant_prune(a, np.ones((1, 100)), acc)
    assert res.pruned == 2 and res.acc_before == 1.0 and res.acc_after == pytest.approx(0.992)
    assert res.weight[0, :3].tolist() == [0.0, 0.0, 1.0]


def test_dormant_prune_step_is_a_fraction_of_the_inputs() -> None:
    # 4 inputs, step 0.5 -> 2 at a time; pruning any 2 drops too far: nothing is pruned
    def acc(w: np.ndarray) -> float:
        return 1.0 if int((w[0] == 0).sum()) < 2 else 0.0

    res = fl.dormant_prune(np.arange(4.0), np.ones((1, 4)), acc, step_fraction=0.5)
    assert res.pruned == 0 and res.weight.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert res.acc_after == 1.0


def test_dormant_prune_range_ends_at_the_input_count() -> None:
    # 5 inputs, step ceil(0.4 * 5) = 2: tries 2 and 4 (never more than 5), accuracy never drops
    res = fl.dormant_prune(np.arange(5.0), np.ones((1, 5)), lambda m: 1.0, step_fraction=0.4)
    assert res.pruned == 4 and res.weight.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]
    # 3 inputs, step 1: the last try prunes all 3
    res = fl.dormant_prune(np.arange(3.0), np.ones((1, 3)), lambda m: 1.0, step_fraction=0.3)
    assert res.pruned == 3


def test_dormant_prune_tolerance_is_inclusive() -> None:
    # a drop of exactly the tolerance (0.5 -> 0.25, tolerance 0.25) is still acceptable
    def acc(w: np.ndarray) -> float:
        return 0.5 if (w != 0).all() else 0.25

    res = fl.dormant_prune(np.arange(2.0), np.ones((1, 2)), acc, tolerance=0.25, step_fraction=0.5)
    assert res.pruned == 2 and res.acc_after == 0.25


def test_dormant_prune_ties_keep_input_order() -> None:
    # 20 inputs tie at activation 0 (the even positions); 10 are pruned: the lowest positions
    a = np.array([0.0, 1.0] * 20)

    def acc(w: np.ndarray) -> float:
        return 1.0 if int((w[0] == 0).sum()) <= 10 else 0.0

    res = fl.dormant_prune(a, np.ones((1, 40)), acc, step_fraction=0.25)
    assert res.pruned == 10
    assert np.flatnonzero(res.weight[0] == 0).tolist() == list(range(0, 20, 2))
