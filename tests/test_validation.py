"""The validation split: stratified, seeded, disjoint from every client and the server's set;
the best-validation round and its test accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim import constants as C
from fedsim.config import compose, validate
from fedsim.data.validation import validation_split
from fedsim.errors import ConfigError
from fedsim.federation import build_federation
from server.components.validation import best_on_validation


def test_validation_split_by_hand() -> None:
    labels = np.array([0] * 10 + [1] * 20 + [2] * 5)
    pool = np.arange(35)
    train, val = validation_split(labels, pool, 0.2, seed=0)
    # round(0.2 * n_c) per class: 2 of class 0, 4 of class 1, 1 of class 2
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 4, 1]
    assert len(train) == 28 and not set(train) & set(val)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(35))
    again = validation_split(labels, pool, 0.2, seed=0)[1]
    other = validation_split(labels, pool, 0.2, seed=1)[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    train0, val0 = validation_split(labels, pool, 0.0, seed=0)
    assert np.array_equal(train0, pool) and len(val0) == 0


def test_the_federation_holds_the_validation_set_out_of_every_partition() -> None:
    cfg = compose(["ssfl=labels_at_server", "local=semifl", "dataset.val_fraction=0.2"])
    fed = build_federation(cfg)
    clients = np.concatenate(fed.partitions)
    n_train = len(fed.data.train_y)
    assert len(fed.val_indices) == pytest.approx(0.2 * n_train, abs=10)
    assert not set(fed.val_indices) & set(clients)
    assert not set(fed.val_indices) & set(fed.server_indices)
    off = build_federation(compose(["dataset.val_fraction=0"]))
    assert len(off.val_indices) == 0 and sum(map(len, off.partitions)) == n_train


@pytest.mark.parametrize("bad", ["0.6", "-0.1", "abc"])
def test_a_bad_val_fraction_is_refused_in_one_line(bad: str) -> None:
    with pytest.raises(
        ConfigError, match=r"invalid dataset.val_fraction=.*allowed a number in \[0, 0.5\]"
    ):
        validate(compose([f"dataset.val_fraction={bad}"]))


def test_best_on_validation_takes_the_earliest_best_round_and_its_test_accuracy() -> None:
    rounds = [
        {C.ROUND: 1, C.VAL_ACCURACY: 0.5, C.EVAL_ACCURACY: 0.50},
        {C.ROUND: 2, C.VAL_ACCURACY: 0.7, C.EVAL_ACCURACY: 0.60},
        {C.ROUND: 3},  # not evaluated
        {C.ROUND: 4, C.VAL_ACCURACY: 0.7, C.EVAL_ACCURACY: 0.90},  # a tie: the earlier wins
        {C.ROUND: 5, C.VAL_ACCURACY: 0.6, C.VAL_LOSS: 1.5, C.EVAL_ACCURACY: 0.95},
    ]
    out = best_on_validation(rounds)
    assert out[C.BEST_VAL_ROUND] == 2 and out[C.TEST_AT_BEST_VAL] == 0.60
    assert out["final_val_accuracy"] == 0.6 and out["final_val_loss"] == 1.5
    assert best_on_validation([{C.ROUND: 1}]) == {}


def test_in_a_staged_run_only_the_last_stage_counts() -> None:
    rounds = [
        {C.ROUND: 1, "stage": 0, C.VAL_ACCURACY: 0.9, C.EVAL_ACCURACY: 0.9},
        {C.ROUND: 1, "stage": 1, C.VAL_ACCURACY: 0.5, C.EVAL_ACCURACY: 0.4},
        {C.ROUND: 2, "stage": 1, C.VAL_ACCURACY: 0.6, C.EVAL_ACCURACY: 0.55},
    ]
    out = best_on_validation(rounds)
    assert out[C.BEST_VAL_ROUND] == 2 and out[C.TEST_AT_BEST_VAL] == 0.55
