"""Hand-computed cases for ``clients.learners.losses`` (docs/mutation.md): batches of two rows (per
row sums, then the batch mean), the default weights, the clamps, DPC's evidential loss in closed
form, BLDR's corrected probabilities past both clamps, min-max at the 1e-12 edge and FlexMatch's
zero denominators."""

from __future__ import annotations

import math

import pytest
import torch

from clients.learners.losses import (
    _kl_dirichlet_uniform,
    calibrated_softmax,
    candidate_weights,
    corrected_probs,
    dpc_edl_loss,
    flexmatch_thresholds,
    forget_rate,
    gce_loss,
    minmax,
    negative_learning_loss,
    pseudo_label_loss,
    sce_loss,
    small_loss_indices,
    weighted_ce,
)

LN2 = math.log(2.0)


def T(x: object) -> torch.Tensor:
    return torch.tensor(x)


def test_sce_defaults_on_two_rows() -> None:
    # row 0: p = (1/2, 1/2), y = 0: CE ln 2, RCE = 4 (1 - 1/2) = 2
    # row 1: p = (3/4, 1/4), y = 1: CE ln 4, RCE = 4 (1 - 1/4) = 3
    loss = sce_loss(T([[0.0, 0.0], [math.log(3.0), 0.0]]), T([0, 1]))
    assert float(loss) == pytest.approx(0.1 * 1.5 * LN2 + 1.0 * 2.5, abs=1e-6)


def test_sce_probabilities_are_clamped_below() -> None:
    # p_1 = e^-60 is clamped to 1e-7: RCE = 4e-7 (without the clamp about 1e-26)
    loss = sce_loss(T([[30.0, -30.0]]), T([0]), alpha=0.0)
    assert abs(float(loss) - 4e-7) < 1e-9


def test_calibrated_softmax_gamma_per_row() -> None:
    # gamma 1: row 0 alpha = (3, 2, 2) / 7, row 1 uniform
    p = calibrated_softmax(T([[LN2, 0.0, 0.0], [0.0, 0.0, 0.0]]), gamma=1.0)
    assert torch.allclose(p, T([[3 / 7, 2 / 7, 2 / 7], [1 / 3, 1 / 3, 1 / 3]]))


def test_dpc_edl_loss_closed_form_on_two_rows() -> None:
    # C = 2, logits 0, gamma 1: alpha = (2, 2), nll = ln 4 - ln 2 = ln 2; alpha~ = (1, 0.2 * 2)
    # KL(Dir(1, 0.4) || Dir(1)) = lgamma(1.4) - lgamma(0.4) - 0.6 (psi(0.4) - psi(1.4))
    #                           = ln 0.4 + 1.5 (Gamma(1.4) = 0.4 Gamma(0.4), psi(1.4) - psi(0.4) = 2.5)
    kl = math.log(0.4) + 1.5
    want = LN2 + 0.5 * kl / 2
    loss = dpc_edl_loss(torch.zeros(2, 2), T([0, 1]), gamma=1.0)
    assert float(loss) == pytest.approx(want, abs=1e-5)
    per_row = _kl_dirichlet_uniform(T([[1.0, 0.4], [0.4, 1.0]]))
    assert torch.allclose(per_row, T([kl, kl]), atol=1e-5)
    unscaled = dpc_edl_loss(torch.zeros(2, 2), T([0, 1]), gamma=1.0, kl_per_class=False)
    assert float(unscaled) == pytest.approx(LN2 + 0.5 * kl, abs=1e-5)


def test_dpc_edl_logits_are_clamped_both_ways() -> None:
    y = T([0, 1])
    # a tiny gamma, so that e^-10.5 vs e^-10 shows
    a = dpc_edl_loss(T([[10.5, -10.5], [-12.0, 11.0]]), y, gamma=1e-6)
    b = dpc_edl_loss(T([[10.0, -10.0], [-10.0, 10.0]]), y, gamma=1e-6)
    assert float(a) == pytest.approx(float(b), abs=1e-6)


def test_weighted_ce_and_candidate_weights_per_row() -> None:
    loss = weighted_ce(torch.zeros(2, 2), T([[1.0, 0.0], [0.5, 0.5]]))
    assert float(loss) == pytest.approx(LN2, abs=1e-6)
    w = candidate_weights(T([[0.0, LN2, 0.0], [0.0, 0.0, 0.0]]), T([[1, 1, 0], [1, 0, 1]]))
    assert torch.allclose(w, T([[1 / 3, 2 / 3, 0.0], [0.5, 0.0, 0.5]]))


def test_corrected_probs_past_both_clamps() -> None:
    # row 0: y = 0, u_0 = 1, v = 0.5: (4/3, 1/12, 1/12) -> clamp (1, 1/12, 1/12) -> / (7/6)
    # row 1: y = 1, v = 1 on classes 0, 2: (-2/3, 1/3, -2/3) -> clamp (1e-7, 1/3, 1e-7)
    u = T([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    v = T([[0.5, 0.5, 0.5], [1.0, 0.0, 1.0]])  # v at the label is not used
    p = corrected_probs(torch.zeros(2, 3), T([0, 1]), u, v)
    r1 = torch.tensor([1e-7, 1 / 3, 1e-7])
    want = torch.stack([T([6 / 7, 1 / 14, 1 / 14]), r1 / r1.sum()])
    assert torch.allclose(p, want, atol=1e-7)


def test_negative_learning_loss_per_row() -> None:
    # row 0: p = (1/4, 1/2, 1/4), label 0, prediction 1 -> N = {2}: -ln(3/4)
    # row 1: p = (1/2, 1/4, 1/4), label 1, prediction 0 -> N = {2}: -ln(3/4)
    nl = negative_learning_loss(T([[0.0, LN2, 0.0], [LN2, 0.0, 0.0]]), T([0, 1]))
    assert torch.allclose(nl, T([-math.log(0.75)] * 2), atol=1e-6)
    # exclude given: row 0 N = {1} (-ln 1/2), row 1 N = {0} (-ln 1/2)
    nl = negative_learning_loss(T([[0.0, LN2, 0.0], [LN2, 0.0, 0.0]]), T([0, 1]), T([2, 2]))
    assert torch.allclose(nl, T([LN2, LN2]), atol=1e-6)


def test_minmax_constant_threshold() -> None:
    assert torch.equal(
        minmax(torch.tensor([0.0, 1e-12], dtype=torch.float64)), torch.ones(2, dtype=torch.float64)
    )
    assert torch.allclose(minmax(T([0.0, 0.5, 0.25])), T([0.0, 1.0, 0.5]))


def test_flexmatch_default_tau_and_zero_denominator() -> None:
    # sigma (2, 1), one unused: denominator 2, beta (1, 1/2), T = 0.95 beta / (2 - beta)
    t = flexmatch_thresholds(T([0, 0, 1, -1]), 2)
    assert torch.allclose(t, T([0.95, 0.95 / 3]))
    assert torch.equal(flexmatch_thresholds(T([-1, -1]), 2, warmup=False), torch.zeros(2))
    assert torch.equal(flexmatch_thresholds(torch.zeros(0, dtype=torch.int64), 3), torch.zeros(3))


def test_gce_default_q_and_inclusive_truncation() -> None:
    # p_y = 1/2: (1 - 0.5^0.7) / 0.7; truncate_below = 1/2 keeps it (>=)
    want = (1 - 0.5**0.7) / 0.7
    assert float(gce_loss(torch.zeros(1, 2), T([0]))) == pytest.approx(want, abs=1e-6)
    kept = gce_loss(torch.zeros(1, 2), T([0]), truncate_below=0.5)
    assert float(kept) == pytest.approx(want, abs=1e-6)


def test_forget_rate_schedule_edges() -> None:
    assert forget_rate(3, 0.5) == pytest.approx(0.5 * 3 / 9)  # default T_k = 10
    assert forget_rate(0, 0.5, t_k=1, c=2.0) == pytest.approx(0.25)  # T_k <= 1: tau^c at once
    assert forget_rate(0, 0.5, t_k=2) == 0.0
    assert forget_rate(9, 0.5, t_k=2, c=2.0) == pytest.approx(0.25)


def test_small_loss_keeps_at_least_one() -> None:
    assert small_loss_indices(T([3.0, 1.0, 2.0]), 0.9).tolist() == [1]  # round(0.3) = 0 -> 1


def test_pseudo_label_loss_per_sample_mask() -> None:
    # pseudo-labels 0, 0 (the first of a tie) with confidences 0.75, 0.5; per-class thresholds (0.7, 0.1): the class-0
    # threshold applies to both -> mask (1, 0); loss = mean(CE_0 * 1, CE_1 * 0) = ln 2 / 2
    strong = T([[0.0, 0.0], [math.log(3.0), 0.0]])
    weak = T([[0.75, 0.25], [0.5, 0.5]])
    loss, mask = pseudo_label_loss(strong, weak, T([0.7, 0.1]))
    assert mask.dtype == strong.dtype and mask.tolist() == [1.0, 0.0]
    assert float(loss) == pytest.approx(LN2 / 2, abs=1e-6)
    # a plain number, reached with equality (>=)
    loss, mask = pseudo_label_loss(strong, weak, 0.5)
    assert mask.tolist() == [1.0, 1.0]
    assert float(loss) == pytest.approx((LN2 - math.log(0.75)) / 2, abs=1e-6)
