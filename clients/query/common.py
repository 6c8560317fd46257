"""Pure selection primitives shared by the query strategies (numpy in, indices out).

Every function works on arrays that the client computed with batched inference; none touches a
model, a Grid or Ray, so tests call them on hand-made inputs.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "badge_embedding",
    "entropy",
    "kcenter_greedy",
    "kmeans_pp_seeding",
    "least_confidence",
    "margin",
    "top_k",
]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy ``-sum p log p`` of each row (natural log; ``0 log 0 = 0``)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """``p(1) - p(2)``, the gap between the two largest probabilities of each row."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return p[:, -1] - p[:, -2] if p.shape[1] > 1 else p[:, -1]


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``max_c p_c`` of each row (the least confident rows have the smallest value)."""
    return np.asarray(probs, dtype=np.float64).max(axis=1)


def top_k(scores: np.ndarray, k: int, *, largest: bool = True) -> np.ndarray:
    """Positions of the ``k`` largest (or smallest) scores; ties go to the lower position."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s if largest else s, kind="stable")
    return order[: max(0, int(k))]


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``x`` and the rows of ``y``."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0)


def kcenter_greedy(
    points: np.ndarray,
    centers: np.ndarray,
    k: int,
    *,
    first: int | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """Greedy k-center (farthest-first): ``k`` positions of ``points``.

    Each step adds the point farthest (Euclidean) from its nearest center; the picks become
    centers. The order of the squared and plain distance is the same, so this serves both the
    Coreset baseline (Euclidean) and FairFAL's anchored k-center (squared Euclidean).

    Parameters
    ----------
    points
        Candidate rows ``[N, D]``.
    centers
        Initial centers ``[M, D]`` (labeled samples / anchors); may be empty.
    k
        Picks wanted (at most ``N``).
    first
        With no centers, the position to pick first (default: position 0).
    """
    x = np.asarray(points, dtype=np.float64)
    n = x.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    c = np.asarray(centers, dtype=np.float64).reshape(-1, x.shape[1]) if len(centers) else None
    picks: list[int] = []
    if c is None:
        p0 = 0 if first is None else int(first)
        picks.append(p0)
        dist = _sqdist(x, x[p0 : p0 + 1])[:, 0]
    else:
        dist = np.full(n, np.inf)
        for s in range(0, c.shape[0], chunk):
            dist = np.minimum(dist, _sqdist(x, c[s : s + chunk]).min(axis=1))
    dist[picks] = -1.0
    while len(picks) < k:
        j = int(np.argmax(dist))  # ties: the lowest position
        picks.append(j)
        dist = np.minimum(dist, _sqdist(x, x[j : j + 1])[:, 0])
        dist[picks] = -1.0
    return np.asarray(picks, dtype=np.int64)


def badge_embedding(features: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """BADGE's gradient embedding: block ``c`` of row ``i`` is ``h_i * (1[c = y_i] - p_ic)``.

    Parameters
    ----------
    features
        Penultimate embeddings ``[N, D]``.
    probs
        Softmax outputs ``[N, C]``.
    targets
        The class ``y_i`` of each row (the predicted class for unlabeled rows).

    Returns
    -------
    numpy.ndarray
        ``[N, D * C]``, the gradient of the cross-entropy w.r.t. the last layer's weights (up to
        sign), class blocks in order.
    """
    h = np.asarray(features, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    scale = -p.copy()
    scale[np.arange(len(p)), np.asarray(targets, dtype=np.int64)] += 1.0
    return (scale[:, :, None] * h[:, None, :]).reshape(len(h), -1)


def kmeans_pp_seeding(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """BADGE's k-means++ seeding: ``k`` distinct positions of ``points``.

    The first pick is the row with the largest norm; each later pick is drawn with probability
    proportional to ``D(x)^2``, the squared distance to the nearest pick so far (picks only: the
    origin is never a center). When every remaining distance is 0 the remaining picks are drawn
    uniformly from the unpicked rows.
    """
    x = np.asarray(points, dtype=np.float64)
    n = x.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    first = int(np.argmax((x * x).sum(1)))
    picks = [first]
    dist = _sqdist(x, x[first : first + 1])[:, 0]
    dist[first] = 0.0
    while len(picks) < k:
        total = dist.sum()
        if total > 0:
            j = int(rng.choice(n, p=dist / total))
        else:
            rest = np.setdiff1d(np.arange(n), picks)
            j = int(rng.choice(rest))
        picks.append(j)
        dist = np.minimum(dist, _sqdist(x, x[j : j + 1])[:, 0])
        dist[picks] = 0.0
    return np.asarray(picks, dtype=np.int64)
