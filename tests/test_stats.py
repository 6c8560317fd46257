"""Paired statistics against hand computations."""

from __future__ import annotations

import math

import pytest

from fedsim.stats import format_ci, format_paired, mean_ci, paired_difference, t_quantile


def test_t_quantiles_match_the_tables() -> None:
    # two-sided 95 %: t(0.975, dof) from any statistics table
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, dof) == pytest.approx(value, abs=1e-3)
    with pytest.raises(ValueError, match="dof >= 1"):
        t_quantile(0.975, 0)


def test_mean_ci_by_hand() -> None:
    # values 1, 2, 3, 4, 5: mean 3, s = sqrt(2.5) = 1.5811, s/sqrt(5) = 0.7071,
    # half width = 2.7764 * 0.7071 = 1.9632
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == 3.0 and ci.n == 5
    assert ci.std == pytest.approx(math.sqrt(2.5))
    assert ci.low == pytest.approx(3 - 1.9632, abs=1e-4)
    assert ci.high == pytest.approx(3 + 1.9632, abs=1e-4)
    # two values 0 and 1: s = 0.7071, s/sqrt(2) = 0.5, half = 12.706 * 0.5 = 6.353
    assert mean_ci([0.0, 1.0]).half_width == pytest.approx(6.3531, abs=1e-3)


def test_mean_ci_edge_cases() -> None:
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and one.n == 1
    none = mean_ci([float("nan")])
    assert none.n == 0 and math.isnan(none.mean)
    assert format_ci(one) == "0.7" and format_ci(none) == "-"


def test_paired_difference_pairs_by_seed_and_counts_wins() -> None:
    method = {0: 0.80, 1: 0.75, 2: 0.90, 3: 0.60, 7: 0.99}  # seed 7 has no baseline
    base = {0: 0.70, 1: 0.75, 2: 0.85, 3: 0.65, 4: 0.50}  # seed 4 has no method run
    p = paired_difference(method, base)
    # diffs 0.10, 0.00, 0.05, -0.05: mean 0.025, s = sqrt(0.00416667) = 0.06455,
    # s/2 = 0.032275, half = 3.1824 * 0.032275 = 0.10271
    assert p.seeds == (0, 1, 2, 3)
    assert p.diff.mean == pytest.approx(0.025)
    assert p.diff.half_width == pytest.approx(0.10271, abs=1e-4)
    assert (p.wins, p.ties, p.losses) == (2, 1, 1)
    assert not p.significant
    # lower is better (an attack success rate): the wins flip
    q = paired_difference(method, base, higher_is_better=False)
    assert (q.wins, q.ties, q.losses) == (1, 1, 2)


def test_a_consistent_gain_is_significant_and_formatted() -> None:
    p = paired_difference({s: 0.5 + 0.1 + 0.01 * s for s in range(5)}, {s: 0.5 for s in range(5)})
    # diffs 0.10..0.14: mean 0.12, s = 0.01581, half = 2.7764 * 0.007071 = 0.01963
    assert p.significant and p.wins == 5
    assert format_paired(p, scale=100) == "+12.0 [+10.0, +14.0] (5/5)"
