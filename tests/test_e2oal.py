"""E2OAL query strategy and its EDL detector learner (spec ``open_set_fal.md`` 4.4) on hand-made
arrays with hand-computed or closed-form expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import clients.learners.edl  # noqa: F401  (registers det_edl)
import clients.query.e2oal  # noqa: F401  (registers e2oal)
from clients.learners.base import build_learner
from clients.learners.edl import (
    EDL_EPOCHS_KEY,
    DetEDL,
    anneal_coef,
    dirichlet_kl_uniform,
    edl_loss,
)
from clients.query import build_query
from clients.query.e2oal import (
    TAU_KEY,
    E2OALQuery,
    e2oal_length,
    e2oal_select,
    js_divergence,
    js_informativeness,
    purity_margin,
    update_tau,
)
from fedsim.data.client_data import ClientData
from fedsim.errors import ConfigError
from tests.osal_fakes import model_outputs, three_groups

LN2 = math.log(2.0)

# ---- EDL loss ---------------------------------------------------------------------------------


def test_dirichlet_kl_uniform_closed_forms():
    a = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [2.0, 2.0, 1.0]], dtype=torch.float64)
    kl = dirichlet_kl_uniform(a[:, :2])
    assert kl[0].item() == pytest.approx(0.0, abs=1e-12)  # Dir(1) vs Dir(1)
    # Dir(2, 1): lnG(3) - lnG(2) - lnG(2) - lnG(1) + (psi(2) - psi(3)) = ln 2 - 1/2
    assert kl[1].item() == pytest.approx(LN2 - 0.5, rel=1e-10)
    # Dir(2, 2): ln 6 + 2 (psi(2) - psi(4)) = ln 6 - 2 (1/2 + 1/3)
    assert kl[2].item() == pytest.approx(math.log(6.0) - 5.0 / 3.0, rel=1e-10)
    kl3 = dirichlet_kl_uniform(a)
    assert kl3[0].item() == pytest.approx(0.0, abs=1e-12)
    # Dir(2, 1, 1): lnG(4) - lnG(3) - lnG(2) + (psi(2) - psi(4)) = ln 3 - 5/6
    assert kl3[1].item() == pytest.approx(math.log(3.0) - 5.0 / 6.0, rel=1e-10)


def test_dirichlet_kl_uniform_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 4, generator=g, dtype=torch.float64) * 20 + 0.5
    want = torch.distributions.kl_divergence(
        torch.distributions.Dirichlet(a), torch.distributions.Dirichlet(torch.ones_like(a))
    )
    assert torch.allclose(dirichlet_kl_uniform(a), want, rtol=1e-9)


def test_edl_loss_hand_values():
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    # alpha = (2, 2), S = 4: nll = log 4 - log 2; alpha~ = (1, 2): KL = ln 2 - 1/2, / 2 outputs
    assert edl_loss(z, y, 0.0).item() == pytest.approx(LN2, rel=1e-7)
    assert edl_loss(z, y, 1.0).item() == pytest.approx(LN2 + (LN2 - 0.5) / 2, rel=1e-7)
    assert edl_loss(z, y, 0.3).item() == pytest.approx(LN2 + 0.3 * (LN2 - 0.5) / 2, rel=1e-7)
    # a batch is a mean; a confident correct row costs little, the wrong one a lot
    z2 = torch.tensor([[5.0, -5.0, -5.0], [5.0, -5.0, -5.0]], dtype=torch.float64)
    y2 = torch.tensor([0, 2])
    rows = [edl_loss(z2[i : i + 1], y2[i : i + 1], 0.0).item() for i in range(2)]
    assert edl_loss(z2, y2, 0.0).item() == pytest.approx(sum(rows) / 2)
    s = math.exp(5) + 1 + 2 * (math.exp(-5) + 1)
    assert rows[0] == pytest.approx(math.log(s) - math.log(math.exp(5) + 1), rel=1e-7)
    assert rows[1] == pytest.approx(math.log(s) - math.log(math.exp(-5) + 1), rel=1e-7)


def test_edl_loss_clamps_logits_at_10():
    y = torch.tensor([2])
    big = torch.tensor([[20.0, -20.0, 0.0]], dtype=torch.float64)
    clamped = torch.tensor([[10.0, -10.0, 0.0]], dtype=torch.float64)
    assert edl_loss(big, y, 1.0).item() == pytest.approx(edl_loss(clamped, y, 1.0).item())
    alpha = torch.tensor([math.exp(10) + 1, math.exp(-10) + 1, 2.0], dtype=torch.float64)
    nll = math.log(alpha.sum().item()) - math.log(2.0)
    kl = dirichlet_kl_uniform(torch.cat([alpha[:2], alpha.new_ones(1)])[None]).item() / 3
    assert edl_loss(big, y, 1.0).item() == pytest.approx(nll + kl, rel=1e-7)


def test_anneal_coef():
    assert [anneal_coef(e) for e in (0, 1, 5, 10, 25)] == [0.0, 0.1, 0.5, 1.0, 1.0]


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _data(y: list[int]) -> ClientData:
    return ClientData(
        x=torch.zeros(len(y), 1), y=torch.tensor(y), mean=[0.0], std=[1.0], num_classes=3
    )


def test_det_edl_learner_anneals_over_cumulative_epochs():
    det = build_learner("det_edl", {"epochs": 2})
    assert isinstance(det, DetEDL) and det.helper_only and det.keeps_client_state
    assert {"clean", "noisy"} == set(det.label_kinds)
    z = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, -1.0]], dtype=torch.float64)
    y, idx = torch.tensor([0, 2]), torch.arange(2)
    state: dict = {EDL_EPOCHS_KEY: 3}
    det.on_train_start(_Identity(), _data([0, 2]), state)
    det.on_epoch_start(_Identity(), _data([0, 2]), 2)  # cumulative epoch 3 + 2 = 5
    loss, logits = det.loss(_Identity(), z, y, idx)
    assert loss.item() == pytest.approx(edl_loss(z, y, 0.5).item()) and torch.equal(logits, z)
    assert loss.item() != pytest.approx(edl_loss(z, y, 1.0).item())
    det.on_train_end(_Identity(), _data([0, 2]), state)
    assert state[EDL_EPOCHS_KEY] == 5


def test_det_edl_train_keeps_its_epoch_count_in_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randint(0, 255, (8, 1, 2, 2), dtype=torch.uint8)
    data = ClientData(
        x=x, y=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), mean=[0.5], std=[0.5], num_classes=3
    )
    det = build_learner("det_edl", {"epochs": 3, "batch_size": 4, "lr": 0.1})
    state: dict = {"epochs_done": 7}  # the target learner's count is left alone
    result = det.train(
        model, data, device=torch.device("cpu"), generator=torch.Generator(), state=state
    )
    assert result.num_examples == 8 and math.isfinite(result.metrics["train_loss"])
    det.train(model, data, device=torch.device("cpu"), generator=torch.Generator(), state=state)
    assert state == {"epochs_done": 7, EDL_EPOCHS_KEY: 6}


# ---- scores -----------------------------------------------------------------------------------


def test_js_divergence_standard_and_reference_forms():
    e0, e1 = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert js_divergence(e0, e1)[0] == pytest.approx(LN2)  # disjoint supports: the maximum
    assert js_divergence(e0, e0)[0] == 0.0
    p, u = np.array([[0.75, 0.25]]), np.array([[0.5, 0.5]])
    # m = (5/8, 3/8): (KL(p||m) + KL(u||m)) / 2
    std = 0.5 * (
        0.75 * math.log(6 / 5)
        + 0.25 * math.log(2 / 3)
        + 0.5 * math.log(4 / 5)
        + 0.5 * math.log(4 / 3)
    )
    assert js_divergence(p, u)[0] == pytest.approx(std, rel=1e-12)
    assert js_divergence(u, p)[0] == pytest.approx(std, rel=1e-12)
    # the reference's (KL(m||p) + KL(m||u)) / 2
    ref = 0.5 * (
        0.625 * math.log(5 / 6)
        + 0.375 * math.log(3 / 2)
        + 0.625 * math.log(5 / 4)
        + 0.375 * math.log(3 / 4)
    )
    assert js_divergence(p, u, form="reference")[0] == pytest.approx(ref, rel=1e-6)
    assert ref != pytest.approx(std, rel=1e-3)
    with pytest.raises(ValueError, match="form"):
        js_divergence(p, u, form="other")


def test_js_informativeness_hand_values():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])
    assert np.array_equal(js_informativeness(probs), np.zeros(3))  # one-hot and uniform: 0
    assert np.array_equal(js_informativeness(probs, form="reference"), np.zeros(3))
    p = np.array([[0.75, 0.25], [0.25, 0.75]])
    # JS(p, onehot): m = (7/8, 1/8); JS(p, uniform): m = (5/8, 3/8)
    js_onehot = 0.5 * (0.75 * math.log(6 / 7) + 0.25 * math.log(2) + math.log(8 / 7))
    js_uniform = 0.5 * (
        0.75 * math.log(6 / 5)
        + 0.25 * math.log(2 / 3)
        + 0.5 * math.log(4 / 5)
        + 0.5 * math.log(4 / 3)
    )
    got = js_informativeness(p)
    assert got == pytest.approx([js_onehot * js_uniform] * 2, rel=1e-12)
    mid = js_informativeness(np.array([[0.6, 0.4], [0.9, 0.1], [0.99, 0.01]]))
    assert mid[0] > 0 and mid[1] > 0 and mid[2] > 0


def test_purity_margin():
    z = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    assert purity_margin(z, 2, cycle0=False).tolist() == [3.0, -3.0]
    assert purity_margin(z, 2, cycle0=True).tolist() == [3.0, 2.0]  # the max known logit
    assert purity_margin(np.array([[1.0, 0.0, 4.0, 2.0]]), 2, cycle0=False).tolist() == [-3.0]
    assert purity_margin(z[:, :2], 2, cycle0=False).tolist() == [3.0, 2.0]  # K outputs only


# ---- adaptive length ----------------------------------------------------------------------------


def _length_naive(pi: np.ndarray, info: np.ndarray, b: int, tau: float) -> int:
    n, target = len(pi), tau * b
    if target <= 0 or n < b:
        return n
    order = np.argsort(-pi, kind="stable")
    for length in range(b, n + 1):
        cand = order[:length]
        sub = cand[np.argsort(-info[cand], kind="stable")[:b]]
        if math.floor(pi[sub].sum()) <= target:
            return length
    return n


def test_e2oal_length_hand_case():
    pi = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    info = np.array([0.1, 0.2, 0.3, 0.9, 0.8])
    # target 0.8: L=2 picks {0,1} (sum 1.7), L=3 {2,1} (1.5), L=4 {3,2} (0.9 -> floor 0)
    assert e2oal_length(pi, info, 2, 0.4) == 4
    assert e2oal_length(pi, info, 2, 0.5) == 2  # target 1.0 >= floor(1.7)
    assert e2oal_length(pi, info, 2, 0.0) == 5  # target 0: every sample
    assert e2oal_length(np.full(5, 0.9), info, 2, 0.4) == 5  # none qualifies: all
    assert e2oal_length(pi[:1], info[:1], 2, 0.4) == 1  # fewer samples than the budget


@pytest.mark.parametrize("seed", range(6))
def test_e2oal_length_matches_the_naive_search(seed):
    rng = np.random.default_rng(seed)
    n, b = 60, int(rng.integers(1, 12))
    pi = rng.beta(0.5, 0.5, n)
    info = np.round(rng.random(n), 1)  # ties in info
    for tau in (0.1, 0.3, 0.6, 0.9):
        assert e2oal_length(pi, info, b, tau) == _length_naive(pi, info, b, tau)


# ---- selection ----------------------------------------------------------------------------------

PRED = np.array([0, 0, 0, 0, 1, 1, 2, 2])
PURITY = np.array([4.0, 3.0, 2.0, 1.0, 5.0, 4.0, 9.0, 9.0])
INFO = np.array([0.1, 0.5, 0.9, 0.8, 0.2, 0.3, 1.0, 1.0])
PI = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.5])


def test_e2oal_select_buckets_by_purity_then_info():
    # length 6 -> 3 candidates per class by purity; budget 4 -> 2 per class by info
    picks, short = e2oal_select(PURITY, INFO, PI, PRED, 2, 4, 6, np.random.default_rng(0))
    assert sorted(picks.tolist()) == [1, 2, 4, 5] and short == 0  # 3 misses the purity stage
    # a longer candidate list lets 3 in by its informativeness
    picks, _ = e2oal_select(PURITY, INFO, PI, PRED, 2, 4, 8, np.random.default_rng(0))
    assert sorted(picks.tolist()) == [2, 3, 4, 5]


def test_e2oal_select_cap_and_top_up():
    picks, short = e2oal_select(PURITY, INFO, PI, PRED, 2, 6, 6, np.random.default_rng(0))
    # class 0 gives {0,1,2}, class 1's bucket holds only {4,5}: one short, topped up with the
    # highest pi * info among {3, 6, 7}: 0.72, 0.1, 0.5 -> 3
    assert short == 1 and sorted(picks[:5].tolist()) == [0, 1, 2, 4, 5] and picks[5] == 3
    picks, short = e2oal_select(PURITY, INFO, PI, PRED, 2, 20, 8, np.random.default_rng(0))
    assert sorted(picks.tolist()) == list(range(8)) and short == 2  # budget capped at U
    empty, short = e2oal_select(PURITY, INFO, PI, PRED, 2, 0, 8, np.random.default_rng(0))
    assert len(empty) == 0 and short == 0


@pytest.mark.parametrize("seed", range(5))
def test_e2oal_select_returns_budget_distinct(seed):
    rng = np.random.default_rng(seed)
    n, k = 40, 3
    pred = rng.integers(0, k + 1, n)
    purity, info, pi = rng.normal(size=n), rng.random(n), rng.random(n)
    for budget in (1, 5, 17, 40):
        length = int(rng.integers(budget, n + 1))
        picks, short = e2oal_select(purity, info, pi, pred, k, budget, length, rng)
        assert len(picks) == budget == len(set(picks.tolist()))
        assert picks.min() >= 0 and picks.max() < n and 0 <= short <= budget


@pytest.mark.parametrize(
    ("tau", "prec", "want"),
    [
        (0.6, 0.6, 0.6),
        (0.5, 0.4, 0.7),
        (0.6, 0.2, 1.0),
        (0.6, 0.0, 1.0),  # clipped at 1
        (0.3, 0.9, 0.0),
        (0.2, 1.0, 0.0),  # clipped at 0
        (0.45, float("nan"), 0.45),  # no picks: unchanged
    ],
)
def test_update_tau(tau, prec, want):
    assert update_tau(tau, prec, 0.6) == pytest.approx(want)
    assert 0.0 <= update_tau(tau, prec, 0.6) <= 1.0


# ---- the strategy on a fake client ----------------------------------------------------------


_outputs = model_outputs
_inputs = three_groups


def test_select_avoids_unknown_like_samples_and_updates_tau():
    q = build_query("e2oal", {})
    assert isinstance(q, E2OALQuery) and q.detector == "det_edl" and q.open_set_only
    assert q.models() == {"global", "detector"} and q.detector_params() == {}
    inp = _inputs({"last_precision": 0.2})
    picks = q.select(inp)
    assert len(picks) == 4 == len(set(picks.tolist()))
    assert np.all((picks >= 6) & (picks < 26))  # groups A and B only
    assert {int((picks < 16).sum()), int((picks >= 16).sum())} == {2}  # 2 per class bucket
    # tau = 0.6 + 0.6 - 0.2 = 1.0: floor(sum pi) <= b always, so L = b
    assert inp.state[TAU_KEY] == pytest.approx(1.0) and inp.diagnostics["tau"] == 1.0
    assert inp.diagnostics["length"] == 4 and inp.diagnostics["shortfall"] == 0
    inp = _inputs({TAU_KEY: 0.5})  # no precision yet: the stored tau is kept
    q.select(inp)
    assert inp.state[TAU_KEY] == 0.5 and 4 <= inp.diagnostics["length"] <= 30


def test_select_is_deterministic_for_the_same_rng():
    q = build_query("e2oal", {"tau0": 0.3})
    a, b = q.select(_inputs({})), q.select(_inputs({}))
    assert np.array_equal(a, b)
    c = q.select(_inputs({}, budget=8, unknowns=False))  # cycle 0 on this client
    assert len(c) == 8 == len(set(c.tolist())) and np.all(c >= 6)
    ref = build_query("e2oal", {"js_form": "reference"}).select(_inputs({}))
    assert len(ref) == 4 and np.all((ref >= 6) & (ref < 26))


def test_select_fits_the_gmm_on_labeled_and_unlabeled(monkeypatch):
    import clients.query.e2oal as mod

    seen: dict = {}
    real = mod.gmm_posterior

    def spy(values, **kw):
        seen["n"], seen["kw"] = len(values), kw
        return real(values, **kw)

    monkeypatch.setattr(mod, "gmm_posterior", spy)
    build_query("e2oal", {"gmm_components": 2}).select(_inputs({}))
    assert seen["n"] == 36 and seen["kw"]["components"] == 2 and seen["kw"]["pick"] == "max"


def test_select_takes_the_whole_pool_when_the_budget_covers_it():
    inp = _inputs({}, budget=30)
    picks = build_query("e2oal", {}).select(inp)
    assert sorted(picks.tolist()) == list(range(6, 36)) and inp.diagnostics["shortfall"] > 0


@pytest.mark.parametrize(
    "params",
    [
        {"target_precision": 1.5},
        {"target_precision": "high"},
        {"tau0": -0.1},
        {"unknown_slots": 2},
        {"unknown_slots": True},
        {"gmm_components": 1},
        {"gmm_components": 2.5},
        {"cluster_features": "clip"},
        {"js_form": "kl"},
    ],
)
def test_bad_parameters(params):
    with pytest.raises(ConfigError, match=f"query.{next(iter(params))}"):
        build_query("e2oal", params)


def test_clustered_unknown_slots_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="not built and needs num_clients=1") as err:
        build_query("e2oal", {"unknown_slots": "clustered"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        build_query("e2oal", {"tau": 0.5})  # a typo
