"""Hand-computed cases for ``clients.query.logo`` (docs/mutation.md): the predicted-class
embedding, the micro step's order, ties and round-robin depth, and the strategy's wiring (seeded
k-means on the local-only embedding, entropy under the global model), with k-means replaced by a
recording stand-in so no clustering runs."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.cluster

from clients.query import ModelOutputs, QueryInputs
from clients.query.logo import LogoQuery, logo_select, predicted_class_embedding


def test_logo_models() -> None:
    assert LogoQuery().models() == {"global", "local_only"}


def test_predicted_class_embedding_by_hand() -> None:
    h = np.array([[2.0, -1.0], [4.0, 8.0]])
    p = np.array([[0.75, 0.25], [0.5, 0.5]])
    assert predicted_class_embedding(h, p).tolist() == [[0.5, -0.25], [2.0, 4.0]]
    # float32 probabilities: 1 - max p is taken in float64 (in float32 it would round)
    p32 = np.array([[0.1234567] + [0.0974] * 9], dtype=np.float32)
    x = float(p32.max())
    e = predicted_class_embedding(np.array([[1.0]]), p32)
    assert e.dtype == np.float64 and e[0, 0] == 1.0 - x


def test_logo_select_round_robin_depth() -> None:
    # one cluster of three: by uncertainty 0.3, 0.2, 0.1 -> positions 1, 2, 0, no repeats
    assert logo_select(np.array([0, 0, 0]), np.array([0.1, 0.3, 0.2]), 3, 1).tolist() == [1, 2, 0]
    # clusters 0: {0, 2}, 1: {1}, 2: {3, 4}; depth 0 -> 2, 1, 4; depth 1 -> 0, 3
    got = logo_select(np.array([0, 1, 0, 2, 2]), np.array([0.1, 0.5, 0.9, 0.2, 0.4]), 5, 3)
    assert got.tolist() == [2, 1, 4, 0, 3]


def test_logo_select_ties_keep_the_lower_positions_on_long_clusters() -> None:
    unc = np.array([0.0, 1.0] * 20)  # 40 members in one cluster
    assert logo_select(np.zeros(40, dtype=int), unc, 10, 1).tolist() == list(range(1, 20, 2))


class _FakeKMeans:
    calls: list[dict] = []

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs

    def fit(self, emb: np.ndarray) -> _FakeKMeans:
        _FakeKMeans.calls.append({**self.kwargs, "emb": emb})
        self.labels_ = np.array([1, 0, 1])  # candidates 0, 2 in cluster 1, candidate 1 in 0
        return self


def test_logo_query_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sklearn.cluster, "KMeans", _FakeKMeans)
    _FakeKMeans.calls = []
    n = 5
    labeled = np.array([True, False, False, True, False])  # candidates: pool 1, 2, 4
    loc = ModelOutputs(
        log_probs=np.log(np.array([[0.5, 0.5], [0.75, 0.25], [0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])),
        features=np.array([[1.0], [2.0], [3.0], [4.0], [10.0]]),
    )
    # global entropies of the candidates: pool 1 high (uniform), 2 low, 4 middle
    glob = ModelOutputs(
        log_probs=np.log(np.array([[0.5, 0.5], [0.5, 0.5], [0.99, 0.01], [0.5, 0.5], [0.8, 0.2]])),
        features=np.zeros((n, 1)),
    )
    inp = QueryInputs(
        labeled=labeled,
        labels=np.full(n, -1),
        budget=2,
        num_classes=2,
        rng=np.random.default_rng(7),
        outputs=lambda mode: {"local_only": loc, "global": glob}[mode],
    )
    picks = LogoQuery().select(inp)
    (call,) = _FakeKMeans.calls
    assert call["n_clusters"] == 2 and call["n_init"] == "auto"
    assert call["random_state"] == int(np.random.default_rng(7).integers(2**31 - 1))
    assert np.allclose(call["emb"], [[0.5], [1.5], [1.0]])  # h * (1 - max p), local-only model
    # cluster 0 = {pool 2}, cluster 1 = {pool 1, pool 4}: most uncertain of each, cluster order
    assert picks.tolist() == [2, 1]
