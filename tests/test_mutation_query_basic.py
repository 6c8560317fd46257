"""Hand-computed cases for ``clients.query.basic`` (docs/mutation.md): random sampling is without
replacement, and margin / least-confidence pick the *smallest* scores."""

from __future__ import annotations

import numpy as np

from clients.query import ModelOutputs, QueryInputs
from clients.query.basic import LeastConfidenceQuery, MarginQuery, RandomQuery


def _inputs(probs: np.ndarray, labeled: list[bool], budget: int, seed: int = 0) -> QueryInputs:
    n = len(labeled)
    out = ModelOutputs(log_probs=np.log(probs), features=np.zeros((n, 2)))
    return QueryInputs(
        labeled=np.array(labeled),
        labels=np.full(n, -1),
        budget=budget,
        num_classes=probs.shape[1],
        rng=np.random.default_rng(seed),
        outputs=lambda _mode: out,
    )


def test_random_query_takes_the_whole_pool_without_repeats() -> None:
    # 20 unlabeled of 24 and a budget of 20: without replacement the pick is the whole pool
    # (with replacement, 20 draws from 20 repeat one with probability 1 - 20!/20^20 ~ 1).
    labeled = [i % 6 == 0 for i in range(24)]
    probs = np.full((24, 2), 0.5)
    for seed in range(3):
        picks = RandomQuery().select(_inputs(probs, labeled, budget=20, seed=seed))
        assert picks.tolist() == [i for i in range(24) if i % 6 != 0]


def test_margin_and_least_confidence_pick_the_smallest_scores() -> None:
    # rows: margins 0.8, 0.0, 0.4, 0.6 ; max-probabilities 0.9, 0.5, 0.7, 0.8
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.8, 0.2], [0.6, 0.4]])
    labeled = [False, False, False, False, True]
    assert MarginQuery().select(_inputs(probs, labeled, budget=2)).tolist() == [1, 2]
    assert LeastConfidenceQuery().select(_inputs(probs, labeled, budget=2)).tolist() == [1, 2]
