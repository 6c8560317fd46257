"""The weak-supervision losses on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from clients.learners.losses import (
    calibrated_softmax,
    candidate_weights,
    cc_loss,
    corrected_probs,
    coteaching_loss,
    dpc_edl_loss,
    flexmatch_thresholds,
    forget_rate,
    gce_loss,
    minmax,
    negative_learning_loss,
    pseudo_label_loss,
    sce_loss,
    weighted_ce,
)
from clients.learners.upllrs import move_unreliable, pll_losses

T = torch.tensor


def test_gce_on_a_two_class_tie() -> None:
    # p_y = 0.5: (1 - 0.5^0.7) / 0.7 = (1 - 0.615572) / 0.7 = 0.549183
    assert float(gce_loss(T([[0.0, 0.0]]), T([0]), q=0.7)) == pytest.approx(0.549183, abs=1e-5)
    # q -> 1 is the MAE-like 1 - p_y; truncation drops p_y = 0.25 < 0.5 and keeps p_y = 0.75
    logits = T([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    assert float(gce_loss(logits, T([0, 0]), q=1.0)) == pytest.approx((0.75 + 0.25) / 2)
    assert float(gce_loss(logits, T([0, 0]), q=1.0, truncate_below=0.5)) == pytest.approx(0.125)


def test_sce_is_alpha_ce_plus_beta_rce_with_log_zero_minus_four() -> None:
    # p = (0.5, 0.5), y = 0: CE = ln 2; RCE = -(0.5 * 0 + 0.5 * -4) = 2
    loss = sce_loss(T([[0.0, 0.0]]), T([0]), alpha=0.1, beta=1.0)
    assert float(loss) == pytest.approx(0.1 * math.log(2) + 2.0, abs=1e-5)
    # a confident right answer: RCE -> 0, CE -> 0
    assert float(sce_loss(T([[30.0, 0.0]]), T([0]))) == pytest.approx(0.0, abs=1e-5)


def test_dpc_calibrated_softmax_and_edl_loss() -> None:
    assert torch.allclose(calibrated_softmax(torch.zeros(1, 10)), torch.full((1, 10), 0.1))
    # e^o = (3, 1): alpha = (3 + 5, 1 + 5) with gamma = 10/2 = 5 -> (8/14, 6/14)
    p = calibrated_softmax(T([[math.log(3.0), 0.0]]))
    assert torch.allclose(p, T([[8 / 14, 6 / 14]]))

    # C = 10, zero logits: alpha = 2 everywhere; NLL = log 20 - log 2 = log 10.
    # alpha~ = (1, 2, ..., 2), S = 19: KL = lnG(19) - lnG(10) + 9 (psi(2) - psi(19)),
    # psi(n) = H_{n-1} - euler_gamma; the loss adds 0.5 * KL / 10.
    def psi(n: int) -> float:
        return sum(1 / k for k in range(1, n)) - 0.5772156649

    kl = math.lgamma(19) - math.lgamma(10) + 9 * (psi(2) - psi(19))
    expected = math.log(10) + 0.5 * kl / 10
    loss = dpc_edl_loss(torch.zeros(1, 10), T([3]))
    assert float(loss) == pytest.approx(expected, abs=1e-4)
    paper = dpc_edl_loss(torch.zeros(1, 10), T([3]), kl_per_class=False)
    assert float(paper) == pytest.approx(math.log(10) + 0.5 * kl, abs=1e-4)


def test_partial_label_losses_and_weights() -> None:
    logits = T([[0.0, math.log(3.0), 0.0]])  # p = (0.2, 0.6, 0.2)
    cand = T([[True, True, False]])
    assert float(cc_loss(logits, cand)) == pytest.approx(-math.log(0.8), abs=1e-6)
    assert float(pll_losses(logits, cand)[0]) == pytest.approx(-math.log(0.8), abs=1e-6)
    w = candidate_weights(logits, cand)
    assert torch.allclose(w, T([[0.25, 0.75, 0.0]]))
    expected = -(0.5 * math.log(0.2) + 0.5 * math.log(0.6))
    assert float(weighted_ce(logits, T([[0.5, 0.5, 0.0]]))) == pytest.approx(expected, abs=1e-6)


def test_coteaching_schedule_and_cross_update() -> None:
    assert forget_rate(0, 0.4, 10) == 0.0
    assert forget_rate(3, 0.4, 10) == pytest.approx(0.4 * 3 / 9)
    assert forget_rate(9, 0.4, 10) == pytest.approx(0.4)
    assert forget_rate(50, 0.4, 10) == pytest.approx(0.4)
    # two classes, y = 0; a logit row (L, 0) has CE ln(1 + e^-L). Net a is sure of samples 0, 1
    # (CE ~ 0) and undecided on 2, 3 (CE ln 2); net b the other way round.
    big, tie = [20.0, 0.0], [0.0, 0.0]
    a = T([big, big, tie, tie])
    b = T([tie, tie, big, big])
    y = T([0, 0, 0, 0])
    # rate 0.5: a picks {0, 1}, b picks {2, 3}; a trains on b's picks, where a is undecided
    # (ln 2 each), and b on a's picks (ln 2 each): 2 ln 2 (training on its own picks would give
    # ~0). With rate 0 each trains on all: ln2/2 + ln2/2 = ln 2.
    assert float(coteaching_loss(a, b, y, 0.5)) == pytest.approx(2 * math.log(2), abs=1e-6)
    assert float(coteaching_loss(a, b, y, 0.0)) == pytest.approx(math.log(2), abs=1e-6)


def test_bldr_corrected_probs_and_negative_learning() -> None:
    logits = torch.zeros(1, 2)
    zero = torch.zeros(1, 2)
    assert torch.allclose(corrected_probs(logits, T([0]), zero, zero), T([[0.5, 0.5]]))
    # u^2 = 0.25 added to the label, v^2 = 0.25 taken from the other class
    p = corrected_probs(logits, T([0]), T([[0.5, 0.0]]), T([[0.0, 0.5]]))
    assert torch.allclose(p, T([[0.75, 0.25]]))
    # NL head p = (0.25, 0.5, 0.25): prediction 1, label 0 -> N = {2}: -log(1 - 0.25)
    nl = negative_learning_loss(T([[0.0, math.log(2.0), 0.0]]), T([0]))
    assert float(nl[0]) == pytest.approx(-math.log(0.75), abs=1e-6)
    # excluding the model's prediction (class 2) instead: N = {1}: -log(1 - 0.5)
    nl = negative_learning_loss(T([[0.0, math.log(2.0), 0.0]]), T([0]), T([2]))
    assert float(nl[0]) == pytest.approx(-math.log(0.5), abs=1e-6)
    # excluding the given label only: N = {1, 2}: mean of -log(0.5) and -log(0.75)
    nl = negative_learning_loss(T([[0.0, math.log(2.0), 0.0]]), T([0]), T([0]))
    assert float(nl[0]) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2, abs=1e-6)
    assert torch.allclose(minmax(T([2.0, 4.0, 3.0])), T([0.0, 1.0, 0.5]))
    assert torch.equal(minmax(T([1.0, 1.0])), T([1.0, 1.0]))


def test_fixmatch_pseudo_label_term() -> None:
    probs = T([[0.96, 0.04], [0.6, 0.4]])
    loss, mask = pseudo_label_loss(torch.zeros(2, 2), probs, 0.95)
    assert mask.tolist() == [1.0, 0.0]
    assert float(loss) == pytest.approx(math.log(2) / 2, abs=1e-6)
    # per-class thresholds: class 0 needs 0.99 (fails), class 1 needs 0.3 (passes)
    loss, mask = pseudo_label_loss(torch.zeros(2, 2), T([[0.96, 0.04], [0.4, 0.6]]), T([0.99, 0.3]))
    assert mask.tolist() == [0.0, 1.0]


def test_flexmatch_thresholds() -> None:
    # sigma = (3, 1, 0), unused 2 -> beta = sigma / 3 -> T = 0.95 * beta / (2 - beta)
    t = flexmatch_thresholds(T([-1, -1, 0, 0, 0, 1]), 3, 0.95)
    assert torch.allclose(t, T([0.95, 0.95 * (1 / 3) / (5 / 3), 0.0]))
    # warm-up: 5 unused dominate sigma = (1, 0, 0): beta_0 = 1/5, T_0 = 0.95 * 0.2 / 1.8
    t = flexmatch_thresholds(T([-1, -1, -1, -1, -1, 0]), 3, 0.95)
    assert float(t[0]) == pytest.approx(0.95 * 0.2 / 1.8)
    t = flexmatch_thresholds(T([-1, -1, -1, -1, -1, 0]), 3, 0.95, warmup=False)
    assert float(t[0]) == pytest.approx(0.95)
    assert torch.equal(flexmatch_thresholds(T([-1, -1]), 2), torch.zeros(2))


def test_upllrs_moves_the_largest_losses_up_to_the_cap() -> None:
    losses = T([5.0, 1.0, 3.0, 4.0])
    unrel = T([False, False, False, True])
    assert move_unreliable(losses, unrel, 0.25, 0.75).tolist() == [True, False, False, True]
    assert move_unreliable(losses, unrel, 0.5, 0.5).tolist() == [True, False, False, True]
    assert move_unreliable(losses, unrel, 0.5, 1.0).tolist() == [True, False, True, True]
    assert move_unreliable(losses, unrel, 0.25, 0.25).tolist() == unrel.tolist()
