"""Pure primitives of open-set federated active learning (spec ``open_set_fal.md`` sections 3, 7).

Numpy in, numpy out: min-max normalisation, the seeded 1-D Gaussian-mixture posterior that LfOSA,
EAOA and E2OAL fit on their scores, and the query precision and recall of section 7. Tests call
them on hand-made arrays.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["bucket_pick", "gmm_posterior", "minmax", "precision_recall"]


def minmax(values: np.ndarray) -> np.ndarray:
    """``(v - min) / (max - min)``; a constant (or empty) vector maps to zeros (spec section 3)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.copy()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 0 or not np.isfinite(hi - lo):
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


def gmm_posterior(
    values: np.ndarray,
    *,
    components: int = 2,
    pick: str = "max",
    seed: int = 0,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> np.ndarray:
    """Posterior of one component of a 1-D Gaussian mixture fitted on ``values``.

    The mixture is scikit-learn's ``GaussianMixture`` with the references' settings
    (``max_iter=10, tol=1e-2, reg_covar=5e-4``), seeded with ``seed`` (quirk Q10: the references
    are unseeded).

    Parameters
    ----------
    values
        Scores ``[N]``.
    components
        Mixture components (2 for LfOSA and EAOA, 3 for E2OAL).
    pick
        ``"max"``: the posterior of the component of largest mean; ``"min"``: of the smallest.
    seed
        ``random_state`` of the fit.

    Returns
    -------
    numpy.ndarray
        ``[N]`` posteriors in [0, 1]. Fewer than ``components`` distinct values cannot be fitted:
        every sample then gets 1 if it equals the picked extreme value, else 0.
    """
    if pick not in ("max", "min"):
        raise ValueError(f"gmm_posterior: pick={pick!r}; allowed: max, min")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return v.copy()
    if np.unique(v).size < components:
        target = v.max() if pick == "max" else v.min()
        return (v == target).astype(np.float64)
    from sklearn.mixture import GaussianMixture  # imported on use: only open-set queries need it

    gmm = GaussianMixture(
        n_components=components,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        random_state=int(seed) % (2**32),
    )
    import warnings

    with warnings.catch_warnings():  # max_iter=10 often stops before tol: the references' setting
        warnings.simplefilter("ignore")
        gmm.fit(v[:, None])
    means = gmm.means_.reshape(-1)
    j = int(np.argmax(means) if pick == "max" else np.argmin(means))
    return gmm.predict_proba(v[:, None])[:, j]


def precision_recall(
    picked_known: int, picked: int, labeled_known: int, known_total: int
) -> tuple[float, float]:
    """Query precision ``picked_known / picked`` and cumulative recall ``labeled_known /
    known_total`` (spec section 7; NaN where a denominator is 0)."""
    prec = picked_known / picked if picked else float("nan")
    rec = labeled_known / known_total if known_total else float("nan")
    return float(prec), float(rec)


def bucket_pick(
    candidate: np.ndarray,
    info: np.ndarray,
    pred: np.ndarray,
    num_known: int,
    budget: int,
    n_cand: int,
    rng: np.random.Generator,
    topup: np.ndarray,
) -> tuple[np.ndarray, int]:
    """The per-class two-stage pick of EAOA and E2OAL (spec sections 4.3 step 5, 4.4 step 5).

    For each known class ``i`` (``pred == i``): the top ``n_cand`` by ``candidate``, then the top
    ``ceil(budget / K)`` of those by ``info``. The union is shuffled with ``rng`` and cut to
    ``budget``; a short union is topped up with the unpicked rows of highest ``topup`` (quirk Q8).

    Returns
    -------
    picks, shortfall
        ``min(budget, N)`` distinct row positions, and how many the union lacked.
    """
    from clients.query.common import top_k

    b = min(int(budget), len(candidate))
    if b <= 0:
        return np.zeros(0, dtype=np.int64), 0
    n_pc = math.ceil(b / num_known)
    chosen = [np.zeros(0, dtype=np.int64)]
    for i in range(num_known):
        bucket = np.flatnonzero(pred == i)
        cand = bucket[top_k(candidate[bucket], n_cand)]
        chosen.append(cand[top_k(info[cand], n_pc)])
    union = rng.permutation(np.concatenate(chosen).astype(np.int64))[:b]
    shortfall = b - len(union)
    if shortfall > 0:
        rest = np.setdiff1d(np.arange(len(candidate)), union)
        union = np.concatenate([union, rest[top_k(topup[rest], shortfall)]])
    return union.astype(np.int64), int(shortfall)
