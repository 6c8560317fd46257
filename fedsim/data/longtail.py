"""Long-tailed subsampling of a training set (FAL/FairFAL spec, section 2.1).

Class ``c`` keeps ``n_c = int(n_max * r ** (c / (C - 1)))`` samples, with ``r = 1 / rho`` and
``n_max = N_orig / C``; class 0 is the head class. With Fashion-MNIST (6000 per class) and
``rho = 20`` this keeps 20,428 samples, the size in the spec's table. Which samples of a class are
kept is decided by a seeded shuffle. Only training sets are made long-tailed.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from fedsim.errors import invalid

__all__ = ["longtail_counts", "longtail_indices"]


def _check_rho(rho: float) -> float:
    if isinstance(rho, bool) or not isinstance(rho, Real) or math.isnan(rho) or rho < 1:
        raise invalid("longtail.rho", rho, "a number >= 1")
    return float(rho)


def longtail_counts(num_samples: int, num_classes: int, rho: float) -> list[int]:
    """Target number of samples per class of the exponential profile.

    Parameters
    ----------
    num_samples
        Size ``N_orig`` of the original (balanced) training set.
    num_classes
        Number of classes ``C``.
    rho
        Imbalance ratio ``n_0 / n_{C-1}`` (>= 1).

    Returns
    -------
    list[int]
        ``n_c`` for ``c = 0 .. C - 1`` (class 0 largest).

    Examples
    --------
    >>> sum(longtail_counts(60000, 10, 20))
    20428
    """
    r = 1.0 / _check_rho(rho)
    n_max = num_samples / num_classes
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * r ** (c / (num_classes - 1))) for c in range(num_classes)]


def longtail_indices(labels: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a long-tailed subset of ``labels``.

    Parameters
    ----------
    labels
        Integer class labels ``0 .. C - 1`` of the full training set; ``C = labels.max() + 1``.
    rho
        Imbalance ratio (>= 1); ``rho == 1`` keeps every sample.
    rng
        Generator for choosing which samples of each class are kept.

    Returns
    -------
    numpy.ndarray
        Sorted ``int64`` indices of the kept samples. A class with fewer samples than its
        target ``n_c`` is kept whole.

    Raises
    ------
    ConfigError
        If ``rho < 1`` (or not a number).
    """
    rho = _check_rho(rho)
    labels = np.asarray(labels).reshape(-1)
    n = labels.shape[0]
    if rho == 1.0 or n == 0:
        return np.arange(n, dtype=np.int64)
    num_classes = int(labels.max()) + 1
    counts = longtail_counts(n, num_classes, rho)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        kept.append(rng.permutation(idx)[:n_c])
    return np.sort(np.concatenate(kept)).astype(np.int64)
