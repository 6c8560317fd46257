"""Classic query strategies (spec section 8.2): random, entropy, margin, least confidence,
Coreset (greedy k-center) and BADGE, each with a ``model_mode`` (global / local_only / last_local).
"""

from __future__ import annotations

import numpy as np

from clients.query import QUERY, ModelModeStrategy, QueryInputs, QueryStrategy
from clients.query.common import (
    badge_embedding,
    entropy,
    kcenter_greedy,
    kmeans_pp_seeding,
    least_confidence,
    margin,
    top_k,
)


@QUERY.register("random")
class RandomQuery(QueryStrategy):
    """``budget`` samples drawn uniformly from the unlabeled pool (run-seeded RNG)."""

    def __init__(self) -> None:
        pass

    def models(self) -> set[str]:
        return set()

    def select(self, inp: QueryInputs) -> np.ndarray:
        u = inp.unlabeled_idx
        return np.sort(inp.rng.choice(u, size=min(inp.budget, len(u)), replace=False))


@QUERY.register("entropy")
class EntropyQuery(ModelModeStrategy):
    """The ``budget`` unlabeled samples of largest predictive entropy."""

    def select(self, inp: QueryInputs) -> np.ndarray:
        u = inp.unlabeled_idx
        return u[top_k(entropy(inp.outputs(self.model_mode).probs[u]), inp.budget)]


@QUERY.register("margin")
class MarginQuery(ModelModeStrategy):
    """The ``budget`` unlabeled samples of smallest top-2 probability margin."""

    def select(self, inp: QueryInputs) -> np.ndarray:
        u = inp.unlabeled_idx
        scores = margin(inp.outputs(self.model_mode).probs[u])
        return u[top_k(scores, inp.budget, largest=False)]


@QUERY.register("least_confidence")
class LeastConfidenceQuery(ModelModeStrategy):
    """The ``budget`` unlabeled samples of lowest maximum probability."""

    def select(self, inp: QueryInputs) -> np.ndarray:
        u = inp.unlabeled_idx
        scores = least_confidence(inp.outputs(self.model_mode).probs[u])
        return u[top_k(scores, inp.budget, largest=False)]


@QUERY.register("coreset")
class CoresetQuery(ModelModeStrategy):
    """Greedy k-center (Sener & Savarese) on the penultimate embedding; the labeled samples are
    the initial centers (no MIP step)."""

    def select(self, inp: QueryInputs) -> np.ndarray:
        h = inp.outputs(self.model_mode).features
        u = inp.unlabeled_idx
        return u[kcenter_greedy(h[u], h[inp.labeled_idx], inp.budget)]


@QUERY.register("badge")
class BadgeQuery(ModelModeStrategy):
    """BADGE (Ash et al.): k-means++ seeding on gradient embeddings with the predicted class."""

    def select(self, inp: QueryInputs) -> np.ndarray:
        out = inp.outputs(self.model_mode)
        u = inp.unlabeled_idx
        p = out.probs[u]
        g = badge_embedding(out.features[u], p, p.argmax(axis=1))
        return u[kmeans_pp_seeding(g, inp.budget, inp.rng)]
