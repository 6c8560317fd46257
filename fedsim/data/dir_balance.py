"""The balanced Dirichlet partition ``dir_balance`` of the FAL/FairFAL spec (section 2.2).

Label skew from Dirichlet(beta) proportions, but every client ends with the same number of samples
(``N // K``, the first ``N mod K`` clients one more):

1. one proportion vector per client from Dirichlet(beta * 1_C), stacked into a K x C matrix P;
2. P's rows, then its columns, are normalised alternately, 5 times (Sinkhorn-like);
3. class j's n_j samples are split over the clients by column j with largest-remainder rounding;
4. samples are moved class by class from over-full to under-full clients until the sizes match.

Step 4's move order is our own (the reference's exact order is not reproduced, so partitions are
not bit-identical to it): for each over-full client, in client order, its classes are visited from
the one it holds most of, and samples go to the most under-full client first. The partition RNG is
seeded by ``partition_seed`` (the reference hard-codes 0, quirk Q4, which is the config default);
``null`` uses the run seed.
"""

from __future__ import annotations

import numpy as np

from fedsim.data.partition import PARTITIONERS, _check_common, _finish, _positive_float
from fedsim.errors import invalid

__all__ = ["dir_balance", "largest_remainder", "sinkhorn_rows_cols"]


def sinkhorn_rows_cols(p: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Normalise the rows, then the columns, of ``p`` alternately ``iterations`` times."""
    p = np.asarray(p, dtype=np.float64).copy()
    for _ in range(iterations):
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        p /= np.maximum(p.sum(axis=0, keepdims=True), 1e-300)
    return p


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers summing to ``total`` proportional to ``weights``: floors, then the leftover units
    to the largest fractional parts (ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    s = w.sum()
    exact = w / s * total if s > 0 else np.full(w.shape, total / len(w))
    out = np.floor(exact).astype(np.int64)
    left = int(total - out.sum())
    if left > 0:
        out[np.argsort(-(exact - out), kind="stable")[:left]] += 1
    return out


@PARTITIONERS.register("dir_balance")
def dir_balance(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    beta: float = 0.1,
    partition_seed: int | None = None,
) -> list[np.ndarray]:
    """Dirichlet(beta) label skew with equal client sizes (FairFAL's ``dir_balance``).

    Parameters
    ----------
    beta
        Dirichlet concentration (0.1: extreme non-IID; 100: near IID).
    partition_seed
        Seed of the partition RNG; ``None`` (the default here) uses the run-seeded ``rng``. The
        config group ``partition=dir_balance`` sets 0, as the reference does (quirk Q4).
    """
    labels, k = _check_common(labels, num_clients)
    beta = _positive_float("partition.beta", beta)
    if partition_seed is not None:
        if isinstance(partition_seed, bool) or not isinstance(partition_seed, int):
            raise invalid("partition.partition_seed", partition_seed, "an integer >= 0 or null")
        rng = np.random.default_rng(int(partition_seed))
    n = labels.shape[0]
    classes = np.unique(labels)
    p = sinkhorn_rows_cols(rng.dirichlet(np.full(len(classes), beta), size=k))
    # counts[i, j]: samples of class j on client i
    counts = np.stack(
        [largest_remainder(int((labels == c).sum()), p[:, j]) for j, c in enumerate(classes)],
        axis=1,
    )
    target = np.full(k, n // k, dtype=np.int64)
    target[: n % k] += 1
    sizes = counts.sum(axis=1)
    for i in range(k):  # over-full clients give samples away, class by class
        for j in np.argsort(-counts[i], kind="stable"):
            while sizes[i] > target[i] and counts[i, j] > 0:
                r = int(np.argmin(sizes - target))  # the most under-full client
                move = int(min(sizes[i] - target[i], target[r] - sizes[r], counts[i, j]))
                counts[i, j] -= move
                counts[r, j] += move
                sizes[i] -= move
                sizes[r] += move
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for j, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for i, chunk in enumerate(np.split(idx, np.cumsum(counts[:, j])[:-1])):
            parts[i].append(chunk)
    return _finish([np.concatenate(p_) for p_ in parts])
