"""Pure functions of federated active learning on the server side: budgets, AULC, class-balance
statistics, per-class evaluation, and the check of the ``fal``/``query`` config groups."""

from __future__ import annotations

import math

import numpy as np
from omegaconf import DictConfig

from clients.query import QUERY, build_query
from fedsim.errors import ConfigError, invalid
from fedsim.osal import open_set_spec

RESETS = ("random", "continue")


def fal_budgets(
    num_samples: int,
    num_clients: int,
    *,
    initial_ratio: float,
    query_ratio: float,
    end_ratio: float,
) -> tuple[int, int, list[float]]:
    """Per-client initial pool ``b0``, per-cycle budget ``b`` and the stages' labeled ratios.

    ``N100`` is ``num_samples`` rounded to the nearest hundred; ``b0 = int(N100 * initial_ratio /
    K)``, ``b = int(N100 * query_ratio / K)``; ratios run ``initial_ratio, + query_ratio, ...`` while
    ``round(ratio, 2) <= end_ratio``.
    """
    n100 = int(round(num_samples / 100.0)) * 100
    b0 = int(n100 * initial_ratio / num_clients)
    b = int(n100 * query_ratio / num_clients)
    ratios, s = [], 0
    while round(initial_ratio + s * query_ratio, 2) <= end_ratio + 1e-12:
        ratios.append(round(initial_ratio + s * query_ratio, 4))
        s += 1
    return b0, b, ratios


def aulc(ratios: list[float], accuracies: list[float]) -> float:
    """Area under accuracy(labeled ratio) by the trapezoid rule, divided by the span (in [0, 1];
    a single stage gives its accuracy)."""
    x = np.asarray(ratios, dtype=np.float64)
    y = np.asarray(accuracies, dtype=np.float64)
    if len(x) < 2:
        return float(y[0]) if len(y) else float("nan")
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def tail_classes(train_counts: np.ndarray) -> np.ndarray:
    """The rarer half of the classes (``C // 2`` of them): classes ordered by training count,
    largest first (ties: lower index first), last half. Under the long-tail profile these are
    classes ``C - C//2 .. C - 1``."""
    counts = np.asarray(train_counts)
    order = np.argsort(-counts, kind="stable")
    return np.sort(order[len(counts) - len(counts) // 2 :])


def class_balance(hist: np.ndarray, tail: np.ndarray) -> dict[str, float]:
    """Balance statistics of a class histogram: tail share, normalised entropy, classes missing
    and the min/max ratio over the classes present."""
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    c = len(h)
    if total == 0:
        return {"tail_share": float("nan"), "entropy": float("nan"), "missing": c, "min_max": 0.0}
    p = h / total
    ent = -float(np.sum(p[p > 0] * np.log(p[p > 0]))) / math.log(c) if c > 1 else 0.0
    present = h[h > 0]
    return {
        "tail_share": float(h[tail].sum() / total),
        "entropy": ent,
        "missing": int((h == 0).sum()),
        "min_max": float(present.min() / present.max()),
    }


def validate_fal(cfg: DictConfig) -> None:
    """Check the ``fal`` and ``query`` groups (called by :func:`fedsim.config.validate` when a query
    strategy is configured)."""
    q = cfg.get("query")
    if q is None:
        return
    if "name" not in q:
        raise ConfigError(f"config group 'query' has no name: pick one of {QUERY.names()}")
    strategy = build_query(str(q.name), {k: v for k, v in q.items() if k != "name"})
    if strategy.open_set_only and open_set_spec(cfg) is None:
        raise ConfigError(
            f"query={q.name} is an open-set strategy (its detector learns an 'unknown' class): "
            "it needs open_set=class_split or open_set=cross_dataset"
        )
    fal = cfg.get("fal")
    if fal is None:
        raise ConfigError("a query strategy needs the 'fal' config group (fal=standard)")
    for key in ("initial_ratio", "query_ratio", "end_ratio"):
        v = fal.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            raise invalid(f"fal.{key}", v, "a number in (0, 1]")
    if fal.end_ratio < fal.initial_ratio:
        raise invalid("fal.end_ratio", fal.end_ratio, f">= fal.initial_ratio={fal.initial_ratio}")
    if fal.reset not in RESETS:
        raise invalid("fal.reset", fal.reset, ", ".join(RESETS))
    if not 0 < float(fal.lr_decay_at) <= 1 or not float(fal.lr_gamma) > 0:
        raise invalid("fal.lr_decay_at/lr_gamma", (fal.lr_decay_at, fal.lr_gamma), "(0, 1] and > 0")
    ts = fal.get("test_subset")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 1):
        raise invalid("fal.test_subset", ts, "an integer >= 1 or null (the whole test split)")
    if int(fal.infer_batch_size) < 1:
        raise invalid("fal.infer_batch_size", fal.infer_batch_size, "an integer >= 1")
    if fal.local_only.milestone_unit not in ("iteration", "epoch"):
        raise invalid(
            "fal.local_only.milestone_unit", fal.local_only.milestone_unit, "iteration, epoch"
        )
