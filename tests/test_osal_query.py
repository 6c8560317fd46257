"""LfOSA and EAOA query strategies and their detector learners (spec ``open_set_fal.md`` 4.1,
4.3) on hand-made arrays with hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import clients.learners.osal  # noqa: F401  (registers det_ce_t, det_energy)
import clients.query.eaoa  # noqa: F401  (registers eaoa)
import clients.query.lfosa  # noqa: F401  (registers lfosa)
from clients.learners.base import build_learner
from clients.learners.osal import DetCET, DetEnergy, energy_margin_loss, tempered_ce
from clients.query import ModelOutputs, QueryInputs, build_query
from clients.query.eaoa import (
    EAOAQuery,
    aleatoric_energy,
    eaoa_select,
    known_energy,
    rknn_energy,
    rknn_votes,
    update_k,
)
from clients.query.lfosa import LfOSAQuery, lfosa_order, lfosa_scores, mav_known_score
from fedsim.data.client_data import ClientData
from fedsim.errors import ConfigError
from tests.osal_fakes import model_outputs, three_groups


def _outputs(logits: np.ndarray, features: np.ndarray | None = None) -> ModelOutputs:
    return model_outputs(logits, features)


# ---- LfOSA ------------------------------------------------------------------------------------

# K = 2 known classes, unknown label 2. Rows 0-5: D predicts class 0, three with a high max
# activation (~10) and three with a low one (~1); row 6: the only row predicted class 1; rows 7-8:
# predicted unknown.
LFOSA_Z = np.array(
    [
        [10.0, -5, -5],
        [1.0, -5, -5],
        [10.2, -5, -5],
        [0.9, -5, -5],
        [9.8, -5, -5],
        [1.1, -5, -5],
        [-5, 8.0, -5],
        [-5, -5, 20.0],
        [-5, -5, 19.0],
    ]
)


def test_lfosa_scores_per_class_gmm_unknown_and_singleton():
    w, scored = lfosa_scores(LFOSA_Z, 2, seed=0)
    assert np.all(w[[0, 2, 4]] > 0.99) and np.all(w[[1, 3, 5]] < 0.01)
    assert w[7] == 0 and w[8] == 0 and scored[7] and scored[8]  # predicted unknown: w = 0
    assert w[6] == 0 and not scored[6]  # a group of one is not scored (Q3)
    assert scored[:6].all()
    order = lfosa_order(w, scored)
    assert set(order[:3]) == {0, 2, 4}  # the high activations of the class-0 group first
    assert order[-1] == 6  # the singleton is chosen last, after the w = 0 unknowns


def test_lfosa_order_ties_are_stable():
    order = lfosa_order(np.array([0.5, 0.0, 0.5, 0.0, 0.0]), np.array([1, 0, 1, 1, 1], bool))
    assert order.tolist() == [0, 2, 3, 4, 1]


def test_mav_known_score():
    s = mav_known_score(np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 5.0], [0.0, 2.5, 1.0]]), 2)
    assert s[0] == 3.0 and s[1] == -np.inf and s[2] == 2.5


def test_lfosa_select_picks_high_activations_of_unlabeled():
    z = np.vstack([[-5, -5, 20.0], [30.0, -5, -5], LFOSA_Z])  # rows 0-1 labeled
    labeled = np.zeros(len(z), bool)
    labeled[:2] = True
    labels = np.full(len(z), -1)
    labels[:2] = [2, 0]
    inp = QueryInputs(
        labeled=labeled,
        labels=labels,
        budget=3,
        num_classes=2,
        rng=np.random.default_rng(0),
        outputs=lambda kind: {"detector": _outputs(z)}[kind],
        unknown_label=2,
    )
    q = build_query("lfosa", {})
    assert isinstance(q, LfOSAQuery) and q.detector == "det_ce_t" and q.open_set_only
    assert q.detector_params() == {"known_T": 0.5, "unknown_T": 0.5}
    picks = q.select(inp)
    assert sorted(picks.tolist()) == [2, 4, 6]  # LFOSA_Z rows 0, 2, 4 shifted by 2
    assert inp.diagnostics["predicted_unknown"] == 2 and inp.diagnostics["unscored"] == 1


# ---- EAOA scores ------------------------------------------------------------------------------


def test_known_energy_hand_values():
    z = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0], [0.0, 0.0, math.log(3.0)]])
    # -log 2 + log 2 = 0; -(2 + log(1+e^-1)) + log(1+e^-1) = -2; -log 2 + log 4 = log 2
    np.testing.assert_allclose(known_energy(z, 2), [0.0, -2.0, math.log(2.0)], atol=1e-12)
    # a K-column model: no softplus term
    np.testing.assert_allclose(
        known_energy(np.array([[1.0, 2.0]]), 2), [-(2 + math.log(1 + math.exp(-1)))]
    )
    big = np.array([[1000.0, 1000.0, -1000.0]])  # stable at large offsets
    np.testing.assert_allclose(known_energy(big, 2), [-(1000 + math.log(2.0))])


def test_aleatoric_energy_is_log_one_minus_max_prob():
    z = np.array([[0.0, math.log(3.0)], [0.0, 0.0], [1000.0, 1000.0 + math.log(3.0)]])
    z3 = np.array([[0.0, 0.0, 0.0]])
    want = [math.log(0.25), math.log(0.5), math.log(0.25)]  # p_max = 3/4, 1/2, 3/4
    np.testing.assert_allclose(aleatoric_energy(z), want)
    np.testing.assert_allclose(aleatoric_energy(z3), [math.log(2 / 3)])
    out = _outputs(z)  # log-probs give the same values
    np.testing.assert_allclose(aleatoric_energy(out.log_probs), aleatoric_energy(z))


def test_rknn_votes_on_a_2d_toy():
    unl = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, 5.0]])
    lab = np.array([[2.0, 0.1], [0.1, 3.0], [-1.0, -0.2]])
    votes = rknn_votes(lab, np.array([0, 1, 2]), unl, k=2, num_labels=3)
    # l0 -> u0, u3; l1 -> u1, u3; l2 (unknown) -> u2, u1
    assert votes.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]
    every = rknn_votes(lab, np.array([0, 0, 2]), unl, k=10, num_labels=3)  # k capped at U
    assert every.tolist() == [[2, 0, 1]] * 4


def test_rknn_energy_weights_cycle0_and_missing_class():
    lse20 = 2 + math.log(1 + math.exp(-2))  # logsumexp(2, 0)
    votes = np.array([[2, 0, 0], [0, 2, 1]])
    # unknowns labeled: w = [2, 2, 1] / 2 = [1, 1, 0.5]
    e = rknn_energy(votes, np.array([2, 2, 1]))
    np.testing.assert_allclose(e, [-lse20 + math.log(2), -lse20 + math.log(1 + math.exp(2))])
    # cycle 0: no softplus; the reference's mean over K + 1 counts: w = [2, 2] / (4/3) = 1.5
    ref = rknn_energy(np.array([[2, 0, 0]]), np.array([2, 2, 0]))
    lse = math.log(math.exp(4 / 3) + 1)
    np.testing.assert_allclose(ref, [-lse])
    fixed = rknn_energy(np.array([[2, 0, 0]]), np.array([2, 2, 0]), cycle0_weight_fix=True)
    np.testing.assert_allclose(fixed, [-lse20])
    # class 1 has no labeled sample: left out; w0 = 2 / mean(2, 0) = 2, w_K = 1
    miss = rknn_energy(np.array([[2, 0, 0]]), np.array([2, 0, 1]))
    np.testing.assert_allclose(miss, [-1.0 + math.log(2)])
    assert np.all(rknn_energy(votes, np.array([0, 0, 3])) == 0)  # no labeled known


# ---- EAOA selection and k_t --------------------------------------------------------------------

PRED = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P_CLEAN = np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.6, 0.7, 0.05])
P_INFO = np.array([0.1, 0.9, 0.9, 0.5, 0.3, 0.2, 0.9, 0.99])


def test_eaoa_select_buckets():
    rng = np.random.default_rng(0)
    picks, short = eaoa_select(P_CLEAN, P_INFO, PRED, 2, 4, 1, rng)
    assert sorted(picks.tolist()) == [0, 1, 5, 6] and short == 0  # k=1: top-2 by p_clean
    picks, short = eaoa_select(P_CLEAN, P_INFO, PRED, 2, 4, 2, rng)
    # k=2: class 0 candidates 0,1,3,2 -> by p_info 1, 2; class 1: 6,5,4,7 -> 7, 6
    assert sorted(picks.tolist()) == [1, 2, 6, 7] and short == 0
    picks, _ = eaoa_select(P_CLEAN, P_INFO, PRED, 2, 3, 1, rng)  # union of 4 cut to 3
    assert len(set(picks.tolist())) == 3 and set(picks.tolist()) <= {0, 1, 5, 6}


def test_eaoa_select_cap_and_top_up():
    pred = np.array([0, 0, 0, 0, 0, 1])  # class 1's bucket has one member
    p_clean = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    p_info = np.array([0.1, 0.2, 0.9, 0.8, 0.9, 0.5])
    picks, short = eaoa_select(p_clean, p_info, pred, 2, 5, 10, np.random.default_rng(1))
    # n_pc = 3; class 0: all 5 candidates (cap) -> by p_info 2, 4, 3; class 1: 5 (cap).
    # Union {2, 3, 4, 5}, one short: the top-up is the best p_clean * p_info of {0, 1}: 1 (0.16)
    assert short == 1 and sorted(picks.tolist()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("seed", range(20))
def test_eaoa_select_returns_budget_distinct(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5, 40)), int(rng.integers(2, 6))
    budget = int(rng.integers(1, n + 3))
    pred = rng.integers(0, k, size=n) if seed % 2 else np.zeros(n, int)
    picks, short = eaoa_select(rng.random(n), rng.random(n), pred, k, budget, 2, rng)
    assert len(picks) == min(budget, n) == len(set(picks.tolist()))
    assert picks.min() >= 0 and picks.max() < n and short >= 0


@pytest.mark.parametrize(
    ("k", "prec", "step", "want"),
    [(5, 0.8, 1, 6), (5, 0.3, 1, 4), (5, 0.62, 1, 5), (5, 0.65, 1, 5), (1, 0.1, 1, 1),
     (2, 0.1, 3, 1), (5, 0.9, 2, 7), (5, float("nan"), 1, 5)],
)  # fmt: skip
def test_update_k(k, prec, step, want):
    assert update_k(k, prec, 0.6, 0.05, step) == want


# ---- strategies' select on a fake client -------------------------------------------------------


def _eaoa_inputs(state: dict, budget: int = 4) -> QueryInputs:
    """The shared three-group client with detector embeddings (see :mod:`tests.osal_fakes`)."""
    return three_groups(state, budget=budget, embedding=True, target_margin=3.0, target_noise=0.3)


def test_eaoa_select_avoids_unknown_like_samples():
    q = build_query("eaoa", {})
    assert isinstance(q, EAOAQuery) and q.detector == "det_energy" and q.open_set_only
    assert q.models() == {"global", "detector"}
    inp = _eaoa_inputs({})
    picks = q.select(inp)
    assert len(picks) == 4 == len(set(picks.tolist()))
    assert np.all((picks >= 6) & (picks < 26))  # only groups A and B
    assert {int((picks < 16).sum()), int((picks >= 16).sum())} == {2}  # 2 per class bucket
    assert inp.state["eaoa_k"] == 5 and inp.diagnostics["k"] == 5
    assert inp.diagnostics["shortfall"] == 0 and inp.diagnostics["knn_k"] == 5


def test_eaoa_select_updates_k_from_last_precision():
    q = build_query("eaoa", {"k0": 3, "knn_k": 4})
    inp = _eaoa_inputs({"eaoa_k": 3, "last_precision": 0.2}, budget=30)
    picks = q.select(inp)
    assert inp.state["eaoa_k"] == 2 and inp.diagnostics["k"] == 2
    assert sorted(picks.tolist()) == list(range(6, 36))  # the whole unlabeled pool
    inp = _eaoa_inputs({"eaoa_k": 3, "last_precision": 0.9})
    q.select(inp)
    assert inp.state["eaoa_k"] == 4 and inp.state["last_precision"] == 0.9


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("lfosa", {"known_T": -1}),
        ("lfosa", {"unknown_T": 0}),
        ("eaoa", {"knn_k": "big"}),
        ("eaoa", {"knn_k": 0}),
        ("eaoa", {"k0": 0}),
        ("eaoa", {"k_step": 0}),
        ("eaoa", {"tol": -0.1}),
        ("eaoa", {"target_precision": 1.5}),
        ("eaoa", {"energy_weight": -1}),
    ],
)
def test_bad_parameters(name, params):
    with pytest.raises(ConfigError, match=f"query.{next(iter(params))}"):
        build_query(name, params)


# ---- detector losses ----------------------------------------------------------------------------


def test_tempered_ce_hand_value():
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    got = tempered_ce(z, y, known_T=0.5, unknown_T=2.0)
    row0 = -2 + math.log(math.exp(2) + 2)  # z / 0.5 = [2, 0, 0], label 0
    row1 = -0.5 + math.log(2 + math.exp(0.5))  # z / 2 = [0, 0, 0.5], label 2
    assert got.item() == pytest.approx((row0 + row1) / 2)


def test_energy_margin_loss_hand_values_and_empty_group():
    e_hi = -(10 + math.log(2))  # E of [10, 10, *]
    z = torch.tensor([[10.0, 10.0, 0.0], [-20.0, -20.0, 0.0], [10.0, 10.0, 0.0]])
    y = torch.tensor([0, 1, 2])
    # known: (E + 25)^2 for row 0, and E = 20 - log 2 for row 1; unknown: (-7 - E)^2 for row 2
    e_lo = 20 - math.log(2)
    want = ((e_hi + 25) ** 2 + (e_lo + 25) ** 2) / 2 + (-7 - e_hi) ** 2
    assert energy_margin_loss(z, y, -25.0, -7.0).item() == pytest.approx(want, rel=1e-5)
    only_known = energy_margin_loss(z[:2], y[:2], -25.0, -7.0)  # Q6: no NaN, term 0
    assert only_known.item() == pytest.approx(((e_hi + 25) ** 2 + (e_lo + 25) ** 2) / 2, rel=1e-5)
    only_unknown = energy_margin_loss(z[2:], y[2:], -25.0, -7.0)
    assert only_unknown.item() == pytest.approx((-7 - e_hi) ** 2, rel=1e-5)
    # energies inside the margins cost nothing
    inside = torch.tensor([[30.0, 30.0, 0.0], [0.0, 0.0, 0.0]])
    assert energy_margin_loss(inside, torch.tensor([0, 2]), -25.0, -7.0).item() == 0.0


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _data(y: list[int]) -> ClientData:
    return ClientData(
        x=torch.zeros(len(y), 1), y=torch.tensor(y), mean=[0.0], std=[1.0], num_classes=3
    )


def test_detector_learners_loss():
    z = torch.tensor([[10.0, 10.0, 0.0], [1.0, 0.0, 0.0], [10.0, 10.0, 0.0]])
    y = torch.tensor([0, 1, 2])
    idx = torch.arange(3)
    ce = torch.nn.functional.cross_entropy(z, y)
    det = build_learner("det_energy", {"energy_weight": 0.5})
    assert isinstance(det, DetEnergy)
    det.on_train_start(_Identity(), _data([0, 1, 2, -1]), {})
    loss, logits = det.loss(_Identity(), z, y, idx)
    want = ce + 0.5 * energy_margin_loss(z, y, -25.0, -7.0)
    assert loss.item() == pytest.approx(want.item()) and torch.equal(logits, z)
    # cycle 0 (no unknown labeled on this client): plain CE, as the reference
    det.on_train_start(_Identity(), _data([0, 1, -1]), {})
    loss, _ = det.loss(_Identity(), z[:2], y[:2], idx[:2])
    ce2 = torch.nn.functional.cross_entropy(z[:2], y[:2])
    assert loss.item() == pytest.approx(ce2.item())
    cet = build_learner("det_ce_t", {"known_T": 0.5, "unknown_T": 2.0})
    assert isinstance(cet, DetCET) and {"clean", "noisy"} <= cet.label_kinds
    loss, _ = cet.loss(_Identity(), z, y, idx)
    assert loss.item() == pytest.approx(tempered_ce(z, y, 0.5, 2.0).item())
    assert loss.item() != pytest.approx(ce.item())
    with pytest.raises(ConfigError):
        build_learner("det_ce_t", {"known_T": 0})
