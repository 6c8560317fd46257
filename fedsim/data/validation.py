"""The validation split: a seeded, class-stratified share of the training split, held by the
server and never given to a client. Anything a run or a study chooses (a stopping round, a
tolerance, a hyperparameter) is chosen on it; the test split only reports."""

from __future__ import annotations

import numpy as np

from fedsim.errors import invalid

#: The seed stream of the validation split (``default_rng([seed, VAL_STREAM])``).
VAL_STREAM = 3


def check_val_fraction(value: object) -> float:
    """``dataset.val_fraction`` as a float in [0, 0.5]; one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 0.5:
        raise invalid("dataset.val_fraction", value, "a number in [0, 0.5]")
    return float(value)


def validation_split(
    labels: np.ndarray, pool: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(training pool, validation indices)``: ``round(fraction * n_c)`` samples of each class
    ``c`` of ``pool`` (indices into ``labels``), drawn with ``default_rng([seed, 3])``; both
    sorted. ``fraction == 0`` leaves the pool whole and the validation set empty.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if fraction <= 0:
        return pool, np.empty(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), VAL_STREAM])
    pool_labels = labels[pool]
    chosen = []
    for c in np.unique(pool_labels):
        members = pool[pool_labels == c]
        k = int(round(fraction * len(members)))
        chosen.append(rng.permutation(members)[:k])
    val = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
    return np.setdiff1d(pool, val), val
