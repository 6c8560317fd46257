"""FairFAL's statistics, model choice, quotas, pseudo-labels and two-stage selection by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clients.query.fairfal import (
    balanced_probe,
    class_quotas,
    divergence,
    imbalance_proxy,
    model_choice,
    prototype_pseudo_labels,
    two_stage_select,
)

PG = np.array([0.5, 0.3, 0.2, 0.0])
PL = np.array([0.25, 0.3, 0.45, 0.0])


def test_divergence_by_hand() -> None:
    # |.5-.25|/.75 = 1/3, 0, .25/.65, 0/0 -> 0
    terms = [1 / 3, 0.0, 0.25 / 0.65, 0.0]
    present = np.array([True, True, True, False])
    assert divergence(PG, PL, present) == pytest.approx(sum(terms) / 4)  # all classes (Q2)
    assert divergence(PG, PL, present, "present") == pytest.approx(sum(terms) / 3)
    assert divergence(PG, PG, present) == 0.0


def test_imbalance_proxy_by_hand() -> None:
    assert imbalance_proxy(PG, np.array([True, True, True, False])) == pytest.approx(0.4)
    assert imbalance_proxy(PG, np.array([True, False, False, True])) == 0.0
    assert imbalance_proxy(PG, np.array([False, True, False, False])) == 1.0


def test_model_choice_by_hand() -> None:
    # s = 1 - (d + rbar)/2 at t = 0.5
    assert model_choice(0.1, 0.3) == (True, True, pytest.approx(0.8))
    assert model_choice(0.3, 0.3) == (False, True, pytest.approx(0.7))
    use_u, use_g, s = model_choice(0.1, 0.6)
    assert (use_u, use_g) == (False, False) and s == pytest.approx(0.65)
    # general t: s = 1 - 0.75 * 0.6 + 0.5 * 0.08 = 0.59
    assert model_choice(0.2, 0.4, t=0.25)[2] == pytest.approx(0.59)
    assert model_choice(0.2, 0.4, t=0.25, s_threshold=0.5)[0] is True


def test_quotas_by_hand() -> None:
    # floor(12/5) = 2 each; +1 to the 2 largest buckets (0, 4); cap -> [3,0,2,1,3] (9);
    # 3 left, round-robin by bucket size 0, 4, 2 -> [4,0,3,1,4]
    np.testing.assert_array_equal(class_quotas(np.array([10, 0, 3, 1, 7]), 12), [4, 0, 3, 1, 4])
    # ties in bucket size go to the lower class index
    np.testing.assert_array_equal(class_quotas(np.array([5, 5, 5]), 4), [2, 1, 1])
    # fewer candidates than the budget: everything
    np.testing.assert_array_equal(class_quotas(np.array([1, 1]), 5), [1, 1])


def test_balanced_probe() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    probe = balanced_probe(labels, np.random.default_rng(42))
    assert np.bincount(labels[probe]).tolist() == [3, 3, 3]
    assert set(range(6)) <= set(probe.tolist())  # every item kept


def test_prototype_pseudo_labels() -> None:
    lab = np.array([[2.0, 0.0], [1.0, 0.1], [0.0, 3.0]])
    y = np.array([0, 0, 1])
    unl = np.array([[0.9, 0.1], [0.2, 0.8], [-1.0, -1.0]])
    # proto_0 = unit(mean(unit(2,0), unit(1,0.1))) = (0.99876, 0.04981), proto_1 = (0, 1).
    # class 2 has no labeled sample: excluded (Q7); for (-1,-1) cos is -0.7415 with proto_0 and
    # -0.7071 with proto_1, so class 1
    assert prototype_pseudo_labels(unl, lab, y, 3).tolist() == [0, 1, 1]
    # without the mask the absent class's zero prototype (similarity 0) wins for the last point
    assert prototype_pseudo_labels(unl, lab, y, 3, mask="none").tolist() == [0, 1, 2]


def test_two_stage_select_by_hand() -> None:
    pseudo = np.array([0, 0, 0, 0, 1])
    unc = np.array([0.9, 0.8, 0.1, 0.7, 0.5])
    feats = np.array([[0.0, 0.0], [5.0, 0.0], [1.0, 0.0], [3.0, 0.0], [9.0, 9.0]])

    def phi(pos: np.ndarray) -> np.ndarray:
        return feats[pos]

    # quotas [1, 1]; class 0 keeps min(4, 4) candidates; the anchor at the origin makes (5,0)
    # the farthest; class 1 has one candidate, taken as is
    picks, quotas = two_stage_select(pseudo, unc, phi, lambda c: np.array([[0.0, 0.0]]), 2, 2)
    assert quotas.tolist() == [1, 1] and picks.tolist() == [1, 4]
    # no anchors: start from the most uncertain candidate
    picks, _ = two_stage_select(pseudo, unc, phi, lambda c: np.zeros((0, 2)), 2, 2)
    assert picks.tolist() == [0, 4]
    # stage 1 keeps the top floor(oversample * q) by uncertainty: with oversample 2, candidates
    # are 0 (0.9) and 1 (0.8); anchor at (5,0) makes 0 the farthest
    picks, _ = two_stage_select(
        pseudo, unc, phi, lambda c: np.array([[5.0, 0.0]]), 2, 2, oversample=2.0
    )
    assert picks.tolist() == [0, 4]
