"""Pure primitives of open-set federated active learning (spec ``open_set_fal.md`` sections 3, 7).

Numpy in, numpy out: min-max normalisation, the seeded 1-D Gaussian-mixture posterior that LfOSA,
EAOA and E2OAL fit on their scores, and the query precision and recall of section 7. Tests call
them on hand-made arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gmm_posterior", "minmax", "precision_recall"]


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
