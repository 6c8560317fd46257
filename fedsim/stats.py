"""Paired statistics over seeds: a method against a named baseline.

A study runs every method with the same seeds, so a seed's runs share the partition, the model's
initialisation and the client sample; the difference method - baseline is taken per seed
(paired), and its mean gets a Student-t confidence interval over the seeds. Pure functions: the
report and the studies call them, and tests check them against hand computations.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The confidence level of every interval fedsim reports.
CONFIDENCE = 0.95


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``dof`` degrees of freedom.

    Raises
    ------
    ValueError
        If ``dof < 1`` or ``p`` is not in (0, 1).
    """
    if dof < 1:
        raise ValueError(f"t quantile needs dof >= 1, got {dof}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"t quantile needs p in (0, 1), got {p}")
    from scipy.stats import t

    return float(t.ppf(p, dof))


@dataclass(frozen=True)
class MeanCI:
    """A mean over ``n`` values with a two-sided confidence interval (nan bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    std: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE) -> MeanCI:
    """The mean of ``values`` and its Student-t interval: ``mean ± t(1-a/2, n-1) · s / sqrt(n)``.

    Non-finite values are left out. With one value the interval is (nan, nan); with none the
    mean is nan too.
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, math.nan)
    mean = statistics.fmean(vals)
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, 0.0)
    std = statistics.stdev(vals)
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, std)


@dataclass(frozen=True)
class Paired:
    """Method - baseline over the seeds both have: the mean difference and its interval, and how
    many seeds the method won, tied and lost (by ``higher_is_better``)."""

    diff: MeanCI
    wins: int
    ties: int
    losses: int
    seeds: tuple[int, ...]

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        return self.diff.n >= 2 and (self.diff.low > 0 or self.diff.high < 0)


def paired_difference(
    method: Mapping[int, float],
    baseline: Mapping[int, float],
    *,
    higher_is_better: bool = True,
    confidence: float = CONFIDENCE,
) -> Paired:
    """The paired difference ``method[s] - baseline[s]`` over the seeds ``s`` both have (with a
    finite value).

    Parameters
    ----------
    method, baseline
        Seed -> the metric of the run with that seed.
    higher_is_better
        Whether a positive difference is a win (accuracy) or a loss (attack success rate).
    confidence
        The interval's level.
    """
    seeds = tuple(
        sorted(
            s for s in set(method) & set(baseline) if _finite(method[s]) and _finite(baseline[s])
        )
    )
    diffs = [float(method[s]) - float(baseline[s]) for s in seeds]
    sign = 1.0 if higher_is_better else -1.0
    wins = sum(1 for d in diffs if sign * d > 0)
    ties = sum(1 for d in diffs if d == 0)
    return Paired(
        diff=mean_ci(diffs, confidence=confidence),
        wins=wins,
        ties=ties,
        losses=len(diffs) - wins - ties,
        seeds=seeds,
    )


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def format_ci(ci: MeanCI, *, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    """``mean [low, high]`` (times ``scale``); just the mean when the interval is undefined."""
    if ci.n == 0:
        return "-"
    sign = "+" if signed else ""
    text = f"{scale * ci.mean:{sign}.{digits}f}"
    if ci.n >= 2:
        text += f" [{scale * ci.low:{sign}.{digits}f}, {scale * ci.high:{sign}.{digits}f}]"
    return text


def format_paired(p: Paired, *, scale: float = 1.0, digits: int = 1) -> str:
    """``+d [lo, hi] (w/n)``: the mean difference, its interval and the wins over the seeds."""
    if p.diff.n == 0:
        return "-"
    return f"{format_ci(p.diff, scale=scale, digits=digits, signed=True)} ({p.wins}/{p.diff.n})"
