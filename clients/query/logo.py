"""LoGo (Kim et al., CVPR 2023), spec section 8.3: macro step = k-means (K = budget) on the
local-only model's predicted-class gradient blocks; micro step = the most uncertain sample under
the global model in each cluster; top-up round-robin over clusters when clusters come out empty.
"""

from __future__ import annotations

import numpy as np

from clients.query import QUERY, QueryInputs, QueryStrategy
from clients.query.common import entropy

__all__ = ["LogoQuery", "logo_select", "predicted_class_embedding"]


def predicted_class_embedding(features: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``h(u) * (1 - p_yhat(u))``: the gradient block of the predicted class, ``[N, D]``."""
    p = np.asarray(probs, dtype=np.float64)
    return np.asarray(features, dtype=np.float64) * (1.0 - p.max(axis=1))[:, None]


def logo_select(
    clusters: np.ndarray, uncertainty: np.ndarray, budget: int, num_clusters: int
) -> np.ndarray:
    """Micro step and top-up on cluster assignments.

    Parameters
    ----------
    clusters
        Cluster id of each candidate.
    uncertainty
        Entropy under the global model of each candidate.
    budget
        Picks wanted.
    num_clusters
        K.

    Returns
    -------
    numpy.ndarray
        ``min(budget, N)`` distinct candidate positions: first the most uncertain of each
        non-empty cluster (cluster order), then round-robin over clusters with their next most
        uncertain members.
    """
    ranked = [
        members[np.argsort(-uncertainty[members], kind="stable")]
        for members in (np.flatnonzero(clusters == c) for c in range(num_clusters))
    ]
    picks: list[int] = []
    depth = 0
    want = min(int(budget), len(clusters))
    while len(picks) < want:
        for r in ranked:
            if depth < len(r) and len(picks) < want:
                picks.append(int(r[depth]))
        depth += 1
    return np.asarray(picks, dtype=np.int64)


@QUERY.register("logo")
class LogoQuery(QueryStrategy):
    """LoGo: local-only macro clustering, global micro uncertainty."""

    def __init__(self) -> None:
        pass

    def models(self) -> set[str]:
        return {"global", "local_only"}

    def select(self, inp: QueryInputs) -> np.ndarray:
        from sklearn.cluster import KMeans

        u = inp.unlabeled_idx
        k = min(inp.budget, len(u))
        loc = inp.outputs("local_only")
        emb = predicted_class_embedding(loc.features[u], loc.probs[u])
        seed = int(inp.rng.integers(2**31 - 1))
        km = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit(emb)
        unc = entropy(inp.outputs("global").probs[u])
        return u[logo_select(km.labels_, unc, k, k)]
