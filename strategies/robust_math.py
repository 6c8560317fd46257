"""The math of fedsim's own robust aggregation rules, as pure functions of client updates.

Updates are client weights minus the current global weights, flattened to one row per client
(``U`` has shape ``[n, d]``); every function returns the aggregated update (a ``[d]`` vector) and,
where the rule scores clients, the per-client scores or acceptance. :func:`flatten` and
:func:`unflatten` convert between per-layer arrays and rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def flatten(updates: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Stack per-client lists of arrays into a ``[n, d]`` float64 matrix."""
    return np.stack(
        [np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in u]) for u in updates]
    )


def unflatten(vec: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Split a ``[d]`` vector into arrays shaped (and typed) like ``like``."""
    out, start = [], 0
    for a in like:
        n = int(np.prod(a.shape))
        out.append(vec[start : start + n].reshape(a.shape).astype(a.dtype))
        start += n
    if start != vec.size:
        raise ValueError(f"vector of size {vec.size} does not match arrays of total size {start}")
    return out


def weighted_mean(U: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of the rows (uniform when ``weights`` is None or sums to zero)."""
    w = np.ones(len(U)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        return np.zeros(U.shape[1])
    return (w[:, None] * U).sum(0) / w.sum()


def clip_rows(U: np.ndarray, max_norm: float) -> np.ndarray:
    """Scale each row to L2 norm at most ``max_norm``: ``u * min(1, M / ||u||)``."""
    norms = np.linalg.norm(U, axis=1)
    factor = np.minimum(1.0, max_norm / np.maximum(norms, 1e-12))
    return U * factor[:, None]


def norm_clipping(
    U: np.ndarray,
    weights: Sequence[float],
    *,
    clip_norm: float,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Norm clipping + weak DP (Sun et al., 2019): clip each update to ``clip_norm``, take the
    weighted mean, and add ``N(0, noise_std^2)`` to every coordinate."""
    agg = weighted_mean(clip_rows(U, clip_norm), weights)
    if noise_std > 0:
        agg = agg + (rng or np.random.default_rng(0)).normal(0.0, noise_std, size=agg.shape)
    return agg


def cosine_matrix(U: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities of the rows (a zero row has similarity 0)."""
    norms = np.linalg.norm(U, axis=1)
    unit = U / np.maximum(norms, 1e-12)[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)


def fltrust(U: np.ndarray, server_update: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLTrust (Cao et al., NDSS 2021).

    Trust score ``TS_i = ReLU(cos(u_i, g0))``; every update is rescaled to ``||g0||``; the result is
    ``sum_i TS_i * u_i_hat / sum_i TS_i`` (zero when every score is zero).

    Returns
    -------
    (aggregate, trust scores)
    """
    g0 = np.asarray(server_update, dtype=np.float64)
    g_norm = np.linalg.norm(g0)
    norms = np.linalg.norm(U, axis=1)
    cos = (U @ g0) / np.maximum(norms * g_norm, 1e-12)
    ts = np.maximum(cos, 0.0)
    if ts.sum() <= 0:
        return np.zeros(U.shape[1]), ts
    scaled = U * (g_norm / np.maximum(norms, 1e-12))[:, None]
    return (ts[:, None] * scaled).sum(0) / ts.sum(), ts


def flame_accept(U: np.ndarray) -> np.ndarray:
    """FLAME's filter: HDBSCAN on pairwise cosine distances with ``min_cluster_size = n//2 + 1``;
    the largest cluster is accepted (all clients when HDBSCAN labels everything as noise)."""
    from sklearn.cluster import HDBSCAN

    n = len(U)
    if n < 3:
        return np.ones(n, dtype=bool)
    dist = np.clip(1.0 - cosine_matrix(U), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    labels = HDBSCAN(
        min_cluster_size=n // 2 + 1,
        min_samples=1,
        metric="precomputed",
        allow_single_cluster=True,
        copy=True,
    ).fit_predict(dist)
    clusters = [c for c in np.unique(labels) if c >= 0]
    if not clusters:
        return np.ones(n, dtype=bool)
    biggest = max(clusters, key=lambda c: int((labels == c).sum()))
    return labels == biggest


def flame(
    U: np.ndarray, *, noise_lambda: float = 0.001, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """FLAME (Nguyen et al., USENIX Security 2022): keep the majority cosine cluster, clip the kept
    updates to ``S`` = the median norm of all updates, average, add ``N(0, (lambda * S)^2)`` noise.

    Returns
    -------
    (aggregate, accepted mask)
    """
    accepted = flame_accept(U)
    s = float(np.median(np.linalg.norm(U, axis=1)))
    agg = clip_rows(U[accepted], s).mean(0)
    if noise_lambda > 0:
        agg = agg + (rng or np.random.default_rng(0)).normal(0.0, noise_lambda * s, size=agg.shape)
    return agg, accepted


def foolsgold_weights(history: np.ndarray, kappa: float = 1.0) -> np.ndarray:
    """FoolsGold (Fung et al., RAID 2020) client weights from the clients' summed past updates.

    ``cs`` = pairwise cosine similarity of the histories (diagonal excluded); pardoning:
    ``cs_ij *= v_i / v_j`` when ``v_i < v_j`` (``v`` = each client's max similarity);
    ``alpha_i = 1 - max_j cs_ij``, clipped to [0, 1], divided by its max, then mapped through
    ``kappa * (ln(alpha / (1 - alpha)) + 0.5)`` and clipped to [0, 1] (the logit step of the
    original code). Sybils that push the same direction get weight near 0.
    """
    n = len(history)
    if n == 1:
        return np.ones(1)
    cs = cosine_matrix(history) - np.eye(n)
    v = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and v[i] < v[j] and v[j] > 0:
                cs[i, j] *= v[i] / v[j]
    alpha = np.clip(1.0 - cs.max(axis=1), 0.0, 1.0)
    if alpha.max() <= 0:
        return np.zeros(n)
    alpha = alpha / alpha.max()
    alpha[alpha == 1.0] = 0.99
    with np.errstate(divide="ignore"):
        logit = kappa * (np.log(alpha / (1.0 - alpha)) + 0.5)
    logit[np.isinf(logit) & (logit > 0)] = 1.0
    logit[np.isinf(logit) & (logit < 0)] = 0.0
    return np.clip(np.nan_to_num(logit, nan=0.0), 0.0, 1.0)


def rlr(
    U: np.ndarray, weights: Sequence[float], *, threshold: float, server_lr: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Robust learning rate (Ozdayi et al., AAAI 2021): per coordinate the server learning rate is
    ``+server_lr`` where ``|sum_i sign(u_ij)| >= threshold``, else ``-server_lr``; it multiplies the
    weighted mean update.

    Returns
    -------
    (aggregate, per-coordinate learning rates)
    """
    agreement = np.abs(np.sign(U).sum(0))
    lr = np.where(agreement >= threshold, server_lr, -server_lr)
    return lr * weighted_mean(U, weights), lr
