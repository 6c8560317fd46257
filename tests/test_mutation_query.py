"""Hand-computed cases for ``clients.query.common.top_k`` (docs/mutation.md): ties go to the lower
position also past numpy's small-array insertion sort, boolean scores, and k <= 0."""

from __future__ import annotations

import numpy as np

from clients.query.common import top_k


def test_top_k_ties_keep_the_lower_positions_on_long_inputs() -> None:
    scores = np.array([0.0, 1.0] * 20)  # 40 scores: quicksort would reorder the ties
    assert top_k(scores, 10).tolist() == list(range(1, 20, 2))
    assert top_k(scores, 10, largest=False).tolist() == list(range(0, 20, 2))


def test_top_k_boolean_scores_and_empty_k() -> None:
    assert top_k(np.array([True, False, True]), 2).tolist() == [0, 2]
    assert top_k(np.array([3.0, 1.0]), 0).tolist() == []
    assert top_k(np.array([3.0, 1.0]), -2).tolist() == []
