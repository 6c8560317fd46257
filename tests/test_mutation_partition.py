"""Hand-computed cases for ``fedsim.data.partition`` (docs/mutation.md): the exact one-line
messages of the validators, the accepted and rejected parameter types, num_clients equal to the
sample count, and the cover check on broken partitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.data.partition import (
    PARTITIONERS,
    _check_common,
    _int_at_least,
    _positive_float,
    _verify,
    partition_dataset,
)
from fedsim.errors import ConfigError

LABELS = np.repeat(np.arange(4), 5)  # 20 samples, 4 classes


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, True, False, "0.5", None])
def test_positive_float_rejects_non_numbers_and_non_finite(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        _positive_float("partition.alpha", value)
    assert str(info.value) == f"invalid partition.alpha={value!r}: allowed a finite number > 0"


def test_positive_float_accepts_ints_and_floats() -> None:
    assert _positive_float("a", 2) == 2.0 and isinstance(_positive_float("a", 2), float)
    assert _positive_float("a", 0.25) == 0.25


@pytest.mark.parametrize("value", [2.5, True, "3", None, 1])
def test_int_at_least_rejects_fractions_bools_strings_and_small(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        _int_at_least("partition.max_tries", value, 2)
    assert str(info.value) == f"invalid partition.max_tries={value!r}: allowed an integer >= 2"


def test_int_at_least_accepts_integral_floats() -> None:
    assert _int_at_least("k", 3.0, 2) == 3 and isinstance(_int_at_least("k", 3.0, 2), int)
    assert _int_at_least("k", np.int64(2), 2) == 2


def test_check_common_messages_and_one_sample_per_client() -> None:
    with pytest.raises(ConfigError) as info:
        _check_common(np.zeros((2, 3)), 1)
    assert str(info.value) == "labels must be a 1-D array, got shape (2, 3)"
    with pytest.raises(ConfigError) as info:
        _check_common(LABELS, 0)
    assert str(info.value) == "invalid num_clients=0: allowed an integer >= 1"
    with pytest.raises(ConfigError) as info:
        _check_common(LABELS, 21)
    assert str(info.value) == (
        "invalid num_clients=21: allowed at most the 20 samples (more clients than samples)"
    )
    labels, k = _check_common(LABELS, 20)  # as many clients as samples is allowed
    assert k == 20 and labels.shape == (20,)
    parts = partition_dataset("iid", LABELS, 20, 0)
    assert sorted(int(p[0]) for p in parts) == list(range(20))
    assert all(p.shape == (1,) for p in parts)


def test_unknown_parameter_message_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError) as info:
        partition_dataset("iid", LABELS, 2, 0, {"alpha": 1.0})
    assert str(info.value) == (
        "unknown parameter partition.alpha for partition 'iid': allowed parameters are none"
    )
    with pytest.raises(ConfigError) as info:
        partition_dataset("shards", LABELS, 2, 0, {"alpha": 1.0})
    assert str(info.value).endswith("allowed parameters are classes_per_client")
    with pytest.raises(ConfigError) as info:
        partition_dataset("quantity_skew", LABELS, 2, 0, {"beta": 1.0})
    assert str(info.value).endswith("allowed parameters are alpha, min_partition_size")


def test_verify_rejects_missing_repeated_and_miscounted_parts() -> None:
    msg = "partitioner 'p' returned partitions that are not a cover"
    cases = [
        ([], 3, 1),  # no parts at all
        ([np.array([0, 0, 1, 2])], 3, 1),  # a repeat, every index present
        ([np.array([0, 1, 2])], 3, 2),  # a cover, but one part for two clients
        ([np.array([0, 1])], 3, 1),  # index 2 missing
    ]
    for parts, n, k in cases:
        with pytest.raises(RuntimeError) as info:
            _verify(parts, n, k, "p")
        assert str(info.value) == msg
    _verify([np.array([2]), np.array([0, 1])], 3, 2, "p")  # a cover passes


def test_partition_dataset_names_a_broken_partitioner() -> None:
    @PARTITIONERS.register("_mutation_broken")
    def _broken(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list:
        return [np.arange(labels.shape[0] - 1)]

    try:
        with pytest.raises(RuntimeError) as info:
            partition_dataset("_mutation_broken", LABELS, 1, 0)
        assert "'_mutation_broken'" in str(info.value)
    finally:
        PARTITIONERS._entries.pop("_mutation_broken", None)
        PARTITIONERS._meta.pop("_mutation_broken", None)
