"""Query strategies: budget, never a labeled index, seeding; the selection primitives by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clients.query import QUERY, ModelOutputs, QueryInputs, build_query
from clients.query.common import (
    badge_embedding,
    entropy,
    kcenter_greedy,
    kmeans_pp_seeding,
    least_confidence,
    margin,
    top_k,
)
from clients.query.kafal import ksas_scores
from clients.query.logo import logo_select
from fedsim.errors import ConfigError


def _inputs(seed: int, n: int = 120, c: int = 5, d: int = 6, budget: int = 13) -> QueryInputs:
    data = np.random.default_rng(1234)
    labeled = np.zeros(n, dtype=bool)
    labeled[data.choice(n, size=30, replace=False)] = True
    labels = np.where(labeled, data.integers(0, c, size=n), -1)
    labels[np.flatnonzero(labeled)[:c]] = np.arange(c)  # every class present
    outs = {}
    for kind in ("global", "local_only", "last_local"):
        logits = data.normal(size=(n, c)) * 2
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        outs[kind] = ModelOutputs(logp, data.normal(size=(n, d)))
    return QueryInputs(
        labeled=labeled,
        labels=labels,
        budget=budget,
        num_classes=c,
        rng=np.random.default_rng(seed),
        outputs=outs.__getitem__,
        rbar=0.3,
        divergence=0.1,
    )


#: closed-set strategies (the open-set ones need a detector and labels K: tests/test_osal_*.py)
CLOSED = [n for n in QUERY.names() if not QUERY.get(n).open_set_only]


@pytest.mark.parametrize("name", CLOSED)
def test_strategy_returns_exactly_the_budget_of_unlabeled_samples(name: str) -> None:
    inp = _inputs(0)
    picks = np.asarray(build_query(name, {}).select(inp))
    assert len(picks) == inp.budget == len(np.unique(picks))
    assert not inp.labeled[picks].any()
    assert picks.min() >= 0 and picks.max() < len(inp.labeled)


@pytest.mark.parametrize("name", CLOSED)
def test_strategy_is_seeded(name: str) -> None:
    a = build_query(name, {}).select(_inputs(7))
    b = build_query(name, {}).select(_inputs(7))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["random", "badge"])
def test_random_strategies_depend_on_the_seed(name: str) -> None:
    a = build_query(name, {}).select(_inputs(1))
    b = build_query(name, {}).select(_inputs(2))
    assert set(a.tolist()) != set(b.tolist())


def test_model_mode_picks_the_query_model() -> None:
    inp = _inputs(0)
    g = build_query("entropy", {"model_mode": "global"}).select(inp)
    loc = build_query("entropy", {"model_mode": "local_only"}).select(inp)
    u = inp.unlabeled_idx
    expect = u[np.argsort(-entropy(inp.outputs("local_only").probs[u]), kind="stable")[:13]]
    np.testing.assert_array_equal(loc, expect)
    assert set(g.tolist()) != set(loc.tolist())


def test_unknown_parameters_and_modes_are_one_line() -> None:
    with pytest.raises(ConfigError, match="invalid query parameter 'modelmode'.*model_mode"):
        build_query("entropy", {"modelmode": "global"})
    with pytest.raises(ConfigError, match="invalid query.model_mode='server'"):
        build_query("margin", {"model_mode": "server"})
    with pytest.raises(ConfigError, match="unknown query 'fair'.*fairfal"):
        build_query("fair", {})


def test_uncertainty_scores_by_hand() -> None:
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(
        entropy(p), [0.0, np.log(2), -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1))]
    )
    np.testing.assert_allclose(margin(p), [1.0, 0.0, 0.3])
    np.testing.assert_allclose(least_confidence(p), [1.0, 0.5, 0.6])
    np.testing.assert_array_equal(top_k([0.2, 0.9, 0.9, 0.1], 2), [1, 2])
    np.testing.assert_array_equal(top_k([0.2, 0.9, 0.9, 0.1], 2, largest=False), [3, 0])


def test_kcenter_picks_the_farthest_point() -> None:
    pts = np.array([[1.0, 0.0], [5.0, 0.0], [2.0, 2.0], [0.5, 0.5]])
    centers = np.array([[0.0, 0.0]])
    # distances to (0,0): 1, 25, 8, 0.5 -> (5,0); then to {(0,0),(5,0)}: 1, -, min(8, 13)=8 -> (2,2)
    np.testing.assert_array_equal(kcenter_greedy(pts, centers, 1), [1])
    np.testing.assert_array_equal(kcenter_greedy(pts, centers, 2), [1, 2])
    # without centers: start at `first`, then the farthest from it
    np.testing.assert_array_equal(kcenter_greedy(pts, np.zeros((0, 2)), 2, first=3), [3, 1])


def test_coreset_uses_labeled_samples_as_centers() -> None:
    feats = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [2.0, 2.0], [10.0, 0.0]])
    logp = np.log(np.full((5, 2), 0.5))
    labeled = np.array([False, False, False, False, True])  # the center is (10, 0)
    inp = QueryInputs(
        labeled=labeled,
        labels=np.array([-1, -1, -1, -1, 0]),
        budget=2,
        num_classes=2,
        rng=np.random.default_rng(0),
        outputs=lambda kind: ModelOutputs(logp, feats),
    )
    # farthest from (10,0): (0,0) [100]; then from {(10,0),(0,0)}: (1,0):1 (5,0):25 (2,2):8 -> (5,0)
    np.testing.assert_array_equal(build_query("coreset", {}).select(inp), [0, 2])


def test_badge_embedding_and_kmeanspp_by_hand() -> None:
    h = np.array([[1.0, 2.0]])
    p = np.array([[0.25, 0.75]])
    np.testing.assert_allclose(badge_embedding(h, p, np.array([1])), [[-0.25, -0.5, 0.25, 0.5]])
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    picks = kmeans_pp_seeding(pts, 3, np.random.default_rng(0))
    assert picks[0] == 1  # the largest norm first
    # the origin is a data point, not a permanent center: it can be picked
    assert sorted(picks.tolist()) == [0, 1, 2]


def test_logo_micro_step_and_round_robin_top_up() -> None:
    clusters = np.array([0, 0, 1, 1, 1])  # cluster 2 is empty
    unc = np.array([0.1, 0.9, 0.5, 0.7, 0.2])
    # most uncertain of cluster 0 (1), of cluster 1 (3), then the next of cluster 0 (0)
    np.testing.assert_array_equal(logo_select(clusters, unc, 3, 3), [1, 3, 0])


def test_ksas_scores_by_hand() -> None:
    logp_a = np.log(np.array([[0.5, 0.5, 0.0 + 1e-300], [0.2, 0.8, 1e-300]]))
    same = ksas_scores(logp_a, logp_a, np.array([1, 1, 0]))
    np.testing.assert_allclose(same, [0.0, 0.0], atol=1e-12)
    a = np.log(np.array([[0.5, 0.5]]))
    b = np.log(np.array([[0.2, 0.8]]))
    counts = np.array([1, 3])  # shift: a -> [1,3]/4, b -> [0.2,2.4]/2.6
    pa = np.array([0.25, 0.75])
    pb = np.array([0.2, 2.4]) / 2.6
    expect = 0.5 * (np.sum(pa * np.log(pa / pb)) + np.sum(pb * np.log(pb / pa)))
    np.testing.assert_allclose(ksas_scores(a, b, counts), [expect])
