"""Hand-computed cases for the pure functions of :mod:`server.fal_math` that the mutation run
(docs/mutation.md) showed were missing: the stage ratios' rounding, AULC with two stages or none,
tie order of the tail classes, and the degenerate class histograms."""

from __future__ import annotations

import math

import numpy as np

from server.fal_math import aulc, class_balance, fal_budgets, tail_classes


def test_fal_budgets_stage_ratios_round_to_two_decimals_for_the_stop() -> None:
    # 0.1 + 3 * 0.004 = 0.112 rounds to 0.11 <= end 0.11 (a stage); 0.116 rounds to 0.12 (stop)
    b0, b, ratios = fal_budgets(1000, 10, initial_ratio=0.1, query_ratio=0.004, end_ratio=0.11)
    assert (b0, b) == (10, 0) and ratios == [0.1, 0.104, 0.108, 0.112]
    # reported ratios keep four decimals: 0.10125 -> 0.1013 (half away from zero in binary)
    _, _, ratios = fal_budgets(1000, 10, initial_ratio=0.1, query_ratio=0.00125, end_ratio=0.1)
    assert ratios == [0.1, 0.1013, 0.1025, 0.1038]
    # the ratio grows by query_ratio per stage: 0.05, 0.10, 0.15, 0.20 (end included)
    b0, b, ratios = fal_budgets(1000, 10, initial_ratio=0.05, query_ratio=0.05, end_ratio=0.2)
    assert (b0, b) == (5, 5) and ratios == [0.05, 0.1, 0.15, 0.2]


def test_aulc_two_stages_and_none() -> None:
    # two stages: the trapezoid (0.2 + 0.6) / 2 over the span = 0.4, not the first accuracy
    assert math.isclose(aulc([0.1, 0.3], [0.2, 0.6]), 0.4)
    assert math.isnan(aulc([], []))


def test_tail_classes_break_ties_by_class_index() -> None:
    # 28 classes with counts 0, 1, 2; the tail is the 14 rarest: the nine 0-count classes and the
    # last five 1-count classes in index order (15, 16, 17, 23, 25; 0, 1, 9, 11, 12 stay)
    counts = [1, 1, 0, 0, 0, 0, 0, 0, 2, 1, 2, 1, 1, 2, 2, 1, 1, 1, 2, 0, 2, 2, 0, 1, 2, 1, 0, 2]
    tail = tail_classes(np.array(counts))
    assert tail.tolist() == [2, 3, 4, 5, 6, 7, 15, 16, 17, 19, 22, 23, 25, 26]


def test_class_balance_degenerate_histograms() -> None:
    empty = class_balance(np.array([0, 0, 0]), np.array([2]))
    assert sorted(empty) == ["entropy", "min_max", "missing", "tail_share"]
    assert math.isnan(empty["tail_share"]) and math.isnan(empty["entropy"])
    assert empty["missing"] == 3 and empty["min_max"] == 0.0
    # one sample in total is a histogram, not "empty"
    one = class_balance(np.array([1, 0]), np.array([1]))
    assert one == {"tail_share": 0.0, "entropy": 0.0, "missing": 1, "min_max": 1.0}
    # a single class: entropy 0 (log C = 0 is not divided by)
    single = class_balance(np.array([3]), np.array([], dtype=np.int64))
    assert single == {"tail_share": 0.0, "entropy": 0.0, "missing": 0, "min_max": 1.0}
    # two equal classes: normalised entropy 1
    two = class_balance(np.array([1, 1]), np.array([1]))
    assert math.isclose(two["entropy"], 1.0) and two["tail_share"] == 0.5
    # missing counts the empty classes (not the classes with one sample)
    assert class_balance(np.array([0, 0, 1, 2]), np.array([0, 1]))["missing"] == 2
