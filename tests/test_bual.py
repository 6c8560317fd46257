"""BUAL (spec open_set_fal.md 4.2): the pure math by hand, and ``select`` on a tiny real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import clients.query.bual  # noqa: F401  (registers "bual")
from clients.query import ModelOutputs, QueryContext, QueryInputs, build_query
from clients.query.bual import (
    bual_pick,
    bual_score,
    complementary_labels,
    confidence,
    jaccard,
    nl_loss,
)
from clients.query.local_only import infer
from fedsim.errors import ConfigError
from fedsim.models import build_model

# the 4-sample hand case (K = 2): max-probs of P- 0.9, 0.5, 0.8, 0.6 -> a = [1, 0, .75, .25];
# max-probs of p+ 0.5, 0.9, 0.55, 0.7 -> c = [0, 1, .125, .5]; p_aux(K) .1 .3 .5 .9 -> w = [0, .25, .5, 1]
P_NEG = np.array([[0.9, 0.1], [0.5, 0.5], [0.8, 0.2], [0.6, 0.4]])
P_POS = np.array([[0.5, 0.5], [0.9, 0.1], [0.55, 0.45], [0.7, 0.3]])
P_AUX_K = np.array([0.1, 0.3, 0.5, 0.9])
# full detector softmax (K + 1 = 3 columns): rows 2 and 3 are predicted unknown (argmax = 2)
P_AUX = np.array([[0.6, 0.3, 0.1], [0.4, 0.3, 0.3], [0.25, 0.25, 0.5], [0.05, 0.05, 0.9]])


def test_nl_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax .5/.5 and .75/.25
    # ybar = 0 for both: 1 - p = .5 and .25 -> mean(-log) = (log 2 + log 4) / 2
    loss = nl_loss(logits, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
    assert nl_loss(logits, torch.tensor([1, 1])).item() == pytest.approx(
        -(math.log(0.5) + math.log(0.75)) / 2, rel=1e-6
    )
    # 1 - p underflows: clamped at 1e-5
    assert nl_loss(torch.tensor([[60.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(
        -math.log(1e-5), rel=1e-5
    )


def test_complementary_labels_avoid_y_and_cover_the_allowed_set() -> None:
    y = torch.tensor([0, 1, 2, -1]).repeat(3000)
    ybar = complementary_labels(y, 3, torch.Generator().manual_seed(0))
    assert ybar.shape == y.shape and ybar.dtype == torch.long
    known = y >= 0
    assert not (ybar[known] == y[known]).any()
    for cls, allowed in ((0, {1, 2}), (1, {0, 2}), (2, {0, 1}), (-1, {0, 1, 2})):
        got = ybar[y == cls]
        assert set(got.tolist()) == allowed
        counts = torch.bincount(got, minlength=3).float()[sorted(allowed)]
        assert (counts - 3000 / len(allowed)).abs().max() < 0.1 * 3000 / len(allowed)
    again = complementary_labels(y, 3, torch.Generator().manual_seed(0))
    assert torch.equal(ybar, again)


def test_confidence_per_variant() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    np.testing.assert_allclose(confidence(p, "b_lc"), [0.7, 0.4])
    np.testing.assert_allclose(confidence(p, "b_margin"), [0.5, 0.0], atol=1e-12)
    ent = [
        0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1),
        2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2),
    ]
    np.testing.assert_allclose(confidence(p, "b_entropy"), ent)
    with pytest.raises(ConfigError):
        confidence(p, "b_x")


def test_bual_score_code_by_hand() -> None:
    # no detector: s = a + r c
    np.testing.assert_allclose(bual_score(P_NEG, P_POS, None, 0.0), [1, 0, 0.75, 0.25])
    np.testing.assert_allclose(bual_score(P_NEG, P_POS, None, 1.0), [1, 1, 0.875, 0.75])
    # detector: s = w a + r (1 - w) c
    np.testing.assert_allclose(bual_score(P_NEG, P_POS, P_AUX_K, 0.0), [0, 0, 0.375, 0.25])
    s = bual_score(P_NEG, P_POS, P_AUX_K, 1.0)
    np.testing.assert_allclose(s, [0, 0.75, 0.4375, 0.25])
    # the b smallest: r = 0 ranks by a, r = 1 mixes in c
    np.testing.assert_array_equal(bual_pick(P_NEG, P_POS, None, 0.0, 4), [1, 3, 2, 0])
    np.testing.assert_array_equal(bual_pick(P_NEG, P_POS, None, 1.0, 2), [3, 2])
    # a sum of probes scores like their mean (the min-max removes the scale), every variant
    for variant in ("b_lc", "b_margin", "b_entropy"):
        np.testing.assert_allclose(
            bual_score(3 * P_NEG, P_POS, P_AUX_K, 0.5, variant),
            bual_score(P_NEG, P_POS, P_AUX_K, 0.5, variant),
            atol=1e-12,
        )


def test_bual_score_paper_by_hand() -> None:
    # unc_n = 1 - max P- = [.1, .5, .2, .4]; unc_p = 1 - max p+ = [.5, .1, .45, .3]
    s0 = bual_score(P_NEG, P_POS, P_AUX_K, 0.0, "b_lc", "paper")
    np.testing.assert_allclose(s0, [0.01, 0.15, 0.1, 0.36])
    s1 = bual_score(P_NEG, P_POS, P_AUX_K, 1.0, "b_lc", "paper")
    np.testing.assert_allclose(s1, [0.46, 0.22, 0.325, 0.39])
    np.testing.assert_allclose(
        bual_score(P_NEG, P_POS, None, 1.0, "b_lc", "paper"), [0.6, 0.6, 0.65, 0.7]
    )
    # paper: the largest are picked
    np.testing.assert_array_equal(bual_pick(P_NEG, P_POS, None, 0.0, 2, mode="paper"), [1, 3])
    # margin: 1 - (p1 - p2); entropy: the top class only, -p log p
    np.testing.assert_allclose(
        bual_score(P_NEG, P_POS, None, 0.0, "b_margin", "paper"), [0.2, 1.0, 0.4, 0.8]
    )
    ent = [-q * math.log(q) for q in (0.9, 0.5, 0.8, 0.6)]
    np.testing.assert_allclose(bual_score(P_NEG, P_POS, None, 0.0, "b_entropy", "paper"), ent)


def test_bual_pick_drops_predicted_unknowns_and_tops_up() -> None:
    # over the whole pool (r = 1) s = [0, .75, .4375, .25] would pick rows 0 and 3; row 3 (and 2)
    # is predicted unknown, so the candidates are rows 0 and 1 (scored among themselves)
    np.testing.assert_array_equal(np.sort(bual_pick(P_NEG, P_POS, P_AUX, 1.0, 2)), [0, 1])
    # too few candidates: both, then the removed row of smallest whole-pool s (row 3: .25 < .4375)
    np.testing.assert_array_equal(bual_pick(P_NEG, P_POS, P_AUX, 1.0, 3), [0, 1, 3])
    assert len(bual_pick(P_NEG, P_POS, P_AUX, 1.0, 9)) == 4
    assert len(bual_pick(P_NEG, P_POS, P_AUX, 1.0, 0)) == 0


def test_jaccard() -> None:
    assert jaccard(np.array([1, 2, 3]), np.array([2, 3, 4])) == pytest.approx(0.5)
    assert jaccard(np.array([3, 1]), np.array([1, 3])) == 1.0
    assert jaccard(np.array([1]), np.array([2])) == 0.0
    assert jaccard(np.array([], dtype=int), np.array([], dtype=int)) == 1.0


# ---- select on a tiny real model ------------------------------------------------------------
N, K = 30, 3


def _inputs(seed: int, *, with_unknown: bool = False, budget: int = 5) -> QueryInputs:
    data = np.random.default_rng(42)
    x = torch.from_numpy(data.integers(0, 256, size=(N, 1, 8, 8), dtype=np.uint8))
    labeled = np.zeros(N, dtype=bool)
    labeled[:8] = True
    labels = np.full(N, -1)
    labels[:6] = [0, 1, 2, 0, 1, 2]
    labels[6:8] = [0, 1] if not with_unknown else [K, K]
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=K, in_channels=1, image_size=8, params={"hidden": [8]})
    mean, std = (0.5,), (0.25,)
    glob = infer(model, x, mean, std, device=torch.device("cpu"))
    det_logits = data.normal(size=(N, K + 1))
    det_logits[1::2, K] += 10.0  # odd rows: the detector says unknown
    det_logits[0::2, K] -= 10.0  # even rows: a known class
    det_logp = det_logits - np.log(np.exp(det_logits).sum(1, keepdims=True))
    outs = {"global": glob, "detector": ModelOutputs(det_logp, np.zeros((N, 2)), det_logits)}
    ctx = QueryContext(
        x=x,
        mean=mean,
        std=std,
        device=torch.device("cpu"),
        infer_batch_size=16,
        target=model,
        seed=seed,
    )
    return QueryInputs(
        labeled=labeled,
        labels=labels,
        budget=budget,
        num_classes=K,
        rng=np.random.default_rng(seed),
        outputs=outs.__getitem__,
        unknown_label=K,
        state={"last_precision": 0.5},
        context=ctx,
    )


PARAMS = {"nl_epochs": 4, "probe_every": 2, "sub_size": 16, "nl_batch_size": 8}


def test_select_returns_budget_distinct_unlabeled_and_is_deterministic() -> None:
    q = build_query("bual", {**PARAMS, "nl_early_stop": "none"})
    inp = _inputs(3)
    picks = q.select(inp)
    assert len(picks) == 5 == len(np.unique(picks))
    assert not inp.labeled[picks].any() and picks.max() < N
    assert inp.diagnostics == {"nl_epochs_run": 4, "r": 0.5, "aux_used": 0}
    assert inp.context is not None and inp.context.target.classifier.out_features == K
    np.testing.assert_array_equal(picks, q.select(_inputs(3)))


def test_select_with_labeled_unknowns_skips_predicted_unknowns() -> None:
    inp = _inputs(3, with_unknown=True)
    picks = build_query("bual", PARAMS).select(inp)
    assert inp.diagnostics["aux_used"] == 1
    assert len(picks) == 5 == len(np.unique(picks)) and not inp.labeled[picks].any()
    assert (picks % 2 == 0).all()  # 11 unlabeled even rows are candidates, odd rows are removed


def test_stable_set_stops_after_patience_unchanged_probes() -> None:
    # a vanishing learning rate leaves the picks unchanged: probes at epochs 0, 1, 2 -> stop
    params = {**PARAMS, "probe_every": 1, "patience": 2, "nl_lr": 1e-12}
    inp = _inputs(1)
    build_query("bual", params).select(inp)
    assert inp.diagnostics["nl_epochs_run"] == 2
    inp = _inputs(1)
    build_query("bual", {**params, "nl_early_stop": "none"}).select(inp)
    assert inp.diagnostics["nl_epochs_run"] == 4


def test_bad_values_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid query.variant='x'"):
        build_query("bual", {"variant": "x"})
    with pytest.raises(ConfigError, match="oracle.*not offered"):
        build_query("bual", {"nl_early_stop": "oracle"})
    with pytest.raises(ConfigError, match="invalid query.score"):
        build_query("bual", {"score": "eq3"})
