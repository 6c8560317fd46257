"""Hand-computed cases for ``clients.query.fairfal`` (docs/mutation.md): the probe, divergence and
imbalance edge cases, the model-choice thresholds at equality, pseudo-labels at a tiny
temperature and for zero vectors, the quota rounding and overflow, the two-stage selection's
branches, and the strategy's parameters, phase-A statistics and query-model wiring."""

from __future__ import annotations

import numpy as np
import pytest

from clients.query import ModelOutputs, QueryInputs
from clients.query.fairfal import (
    FairFALQuery,
    balanced_probe,
    class_quotas,
    divergence,
    imbalance_proxy,
    model_choice,
    prototype_pseudo_labels,
    two_stage_select,
)
from fedsim.errors import ConfigError


def test_balanced_probe_single_class_and_empty() -> None:
    rng = np.random.default_rng(0)
    assert balanced_probe(np.array([3, 3]), rng).tolist() == [0, 1]
    empty = balanced_probe(np.array([], dtype=np.int64), rng)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert np.arange(2)[empty].tolist() == []


def test_divergence_edge_cases() -> None:
    # |1 - 3| / 4 = 0.5, class 1 is 0/0 = 0, |2 - 0| / 2 = 1: mean 0.5
    assert divergence(np.array([1.0, 0.0, 2.0]), np.array([3.0, 0.0, 0.0]), None) == 0.5
    # present as 0/1 integers is a mask, not positions
    assert divergence([1.0, 0.0, 2.0], [3.0, 0.0, 0.0], np.array([1, 0, 1]), "present") == 0.75
    assert divergence([1.0, 2.0], [3.0, 0.0], np.array([False, False]), "present") == 0.0


def test_imbalance_proxy_edge_cases() -> None:
    p32 = np.array([0.1, 0.3], dtype=np.float32)
    assert imbalance_proxy(p32, np.array([True, True])) == float(p32[0]) / float(p32[1])
    assert imbalance_proxy(np.array([0.2, 0.9, 0.4]), np.array([1, 0, 1])) == 0.5
    assert imbalance_proxy(np.array([0.2, 0.4]), np.array([False, False])) == 0.0
    assert imbalance_proxy(np.array([0.0, 0.0]), np.array([True, True])) == 0.0


def test_model_choice_thresholds_are_strict() -> None:
    # t = 0.5: s = 1 - (d + rbar) / 2 = 0.75 exactly: not > 0.75; rbar = 0.5: not < 0.5
    assert model_choice(0.5, 0.0) == (False, True, 0.75)
    assert model_choice(0.0, 0.5) == (False, False, 0.75)


def test_pseudo_labels_tiny_temperature_stays_finite() -> None:
    labeled = np.array([[1.0, 0.0], [0.0, 1.0]])
    unl = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]])  # best: 0, 1, 1 (cos -0.995 vs 0.0995)
    got = prototype_pseudo_labels(unl, labeled, np.array([0, 1]), 2, tau=1e-3)
    assert got.tolist() == [0, 1, 1]
    # tau = 1e-17: sim / tau is still ordered (multiplying by tau would round every exp to 1)
    got = prototype_pseudo_labels(unl, labeled, np.array([0, 1]), 2, tau=1e-17)
    assert got.tolist() == [0, 1, 1]


def test_pseudo_labels_zero_vectors_and_unmasked_absent_class() -> None:
    labeled = np.array([[2, 0], [0, 3]])  # int features are accepted
    unl = np.array([[0, 0], [-1, -1], [1, 1]])
    # mask "present": the zero vector ties at 0 over classes 0, 1 -> 0; (-1, -1) -> 0 (tie)
    assert prototype_pseudo_labels(unl, labeled, [0, 1], 3).tolist() == [0, 0, 0]
    # mask "none": class 2's zero prototype has similarity 0, above (-1, -1)'s -0.707
    got = prototype_pseudo_labels(unl, labeled, [0, 1], 3, mask="none")
    assert got.tolist() == [0, 2, 0]


def test_class_quotas_by_hand() -> None:
    assert class_quotas(np.array([1, 5, 3]), 4).tolist() == [1, 2, 1]  # +1 to the largest
    assert class_quotas(np.array([10, 10, 10]), 7).tolist() == [3, 2, 2]  # floor 2, +1
    # floor 1, +1 to class 1, capped [0, 2, 1]; the 1 left goes to class 1 (largest) only
    assert class_quotas(np.array([0, 5, 5]), 4).tolist() == [0, 3, 1]
    # capped [2, 2, 0], 2 left: class 1, then class 0 is full, then class 1 again
    assert class_quotas(np.array([2, 5, 0]), 6).tolist() == [2, 4, 0]


def test_class_quotas_ties_keep_the_lower_classes_on_many_classes() -> None:
    q = class_quotas(np.array([1, 2] * 20), 10)  # 40 classes: the 10 extra to classes 1, 3, ...
    assert np.flatnonzero(q).tolist() == list(range(1, 20, 2))


def _phi_rows(feats: np.ndarray):
    return lambda pos: feats[pos]


def test_two_stage_default_oversample_and_anchor_distance() -> None:
    # one class, budget 1 (q = 1), 6 candidates by uncertainty 0..5; default oversample 4 keeps 4,
    # k-center from the anchor at 0 picks the farthest of those: candidate 3 (candidate 4, at 9,
    # would win with 5 kept)
    feats = np.array([[1.0], [2.0], [3.0], [4.0], [9.0], [0.5]])
    unc = np.array([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    pos, q = two_stage_select(
        np.zeros(6, dtype=float), unc, _phi_rows(feats), lambda c: np.zeros((1, 1)), 1, 1
    )  # float pseudo-labels are converted
    assert pos.tolist() == [3] and q.tolist() == [1]


def test_two_stage_top_uncertainty_when_kept_equals_quota() -> None:
    # oversample 1: m = q, the q most uncertain in uncertainty order (not k-center order)
    feats = np.array([[1.0], [5.0], [0.0]])
    unc = np.array([0.9, 0.8, 0.1])
    anchors = lambda c: np.zeros((1, 1))  # noqa: E731
    pos, _ = two_stage_select(np.zeros(3), unc, _phi_rows(feats), anchors, 2, 1, oversample=1.0)
    assert pos.tolist() == [0, 1]
    pos, _ = two_stage_select(np.zeros(3), unc, _phi_rows(feats), anchors, 1, 1, oversample=1.0)
    assert pos.tolist() == [0]  # m = 1 (not 2): candidate 1 would be farther from the anchor


def test_two_stage_skips_empty_classes_and_counts_every_class() -> None:
    # 3 classes, class 0 has no candidate (quota 0), classes 1, 2 one each; budget 3
    pseudo = np.array([1, 2])
    unc = np.array([0.5, 0.5])
    feats = np.array([[0.0], [1.0]])
    pos, q = two_stage_select(pseudo, unc, _phi_rows(feats), lambda c: np.zeros((0, 1)), 3, 3)
    assert q.tolist() == [0, 1, 1] and pos.tolist() == [0, 1]
    # class 2 has no candidate: quotas still over 3 classes
    pos, q = two_stage_select(np.array([0, 1, 1]), np.ones(3), _phi_rows(np.zeros((3, 1))),
                              lambda c: np.zeros((0, 1)), 3, 3)  # fmt: skip
    assert q.tolist() == [1, 2, 0] and pos.tolist() == [0, 1, 2]


def test_two_stage_ties_and_zero_budget() -> None:
    unc = np.array([0.0, 1.0] * 20)  # 40 candidates of one class, oversample 1: m = q = 10
    pos, _ = two_stage_select(np.zeros(40), unc, _phi_rows(np.zeros((40, 1))),
                              lambda c: np.zeros((0, 1)), 10, 1, oversample=1.0)  # fmt: skip
    assert pos.tolist() == list(range(1, 20, 2))
    pos, q = two_stage_select(np.zeros(3), np.ones(3), _phi_rows(np.zeros((3, 1))),
                              lambda c: np.zeros((0, 1)), 0, 2)  # fmt: skip
    assert pos.shape == (0,) and pos.dtype == np.int64 and q.tolist() == [0, 0]


def test_fairfal_parameters() -> None:
    q = FairFALQuery()
    assert (q.t, q.s_threshold, q.rbar_threshold, q.tau, q.oversample, q.probe_seed) == (
        0.5, 0.75, 0.5, 1.5, 4.0, 42,
    )  # fmt: skip
    assert (q.freeze_rbar, q.divergence_classes, q.pseudo_label_mask) == (True, "all", "present")
    assert q.models() == {"global", "local_only"}
    q = FairFALQuery(divergence_classes="present", pseudo_label_mask="none", tau=0.5, oversample=1)
    assert (q.divergence_classes, q.pseudo_label_mask, q.oversample) == ("present", "none", 1)
    assert FairFALQuery(freeze_rbar=False).freeze_rbar is False
    bad = [
        ({"divergence_classes": "x"}, "invalid query.divergence_classes='x': allowed all, present"),
        ({"pseudo_label_mask": "x"}, "invalid query.pseudo_label_mask='x': allowed present, none"),
        ({"tau": 0}, "invalid query.tau=0: allowed a number > 0"),
        ({"oversample": 0.5}, "invalid query.oversample=0.5: allowed a number >= 1"),
    ]
    for kw, msg in bad:
        with pytest.raises(ConfigError) as info:
            FairFALQuery(**kw)
        assert str(info.value) == msg


def _inputs(glob: ModelOutputs, loc: ModelOutputs, labeled, labels, budget, c, **kw) -> QueryInputs:
    return QueryInputs(
        labeled=np.array(labeled),
        labels=np.array(labels),
        budget=budget,
        num_classes=c,
        rng=np.random.default_rng(0),
        outputs=lambda mode: {"global": glob, "local_only": loc}[mode],
        **kw,
    )


def test_fairfal_stats_present_classes_and_probe() -> None:
    # 3 classes, labeled: three of class 0 (rows 0-2), one of class 1 (row 3), class 2 absent;
    # the probe tops class 1 up with its only row, so it is [0, 1, 2, 3, 3, 3]
    pg_rows = np.array([[0.6, 0.3, 0.1]] * 3 + [[0.2, 0.7, 0.1]] + [[0.3, 0.3, 0.4]])
    pl_rows = np.array([[0.4, 0.4, 0.2]] * 3 + [[0.2, 0.6, 0.2]] + [[0.3, 0.3, 0.4]])
    glob = ModelOutputs(np.log(pg_rows), np.zeros((5, 1)))
    loc = ModelOutputs(np.log(pl_rows), np.zeros((5, 1)))
    lab = [True, True, True, True, False]
    inp = _inputs(glob, loc, lab, [0, 0, 0, 1, -1], 1, 3)
    pg = np.array([0.4, 0.5, 0.1])  # mean over the probe: (3 * 0.6 + 3 * 0.2) / 6, ...
    pl = np.array([0.3, 0.5, 0.2])
    st = FairFALQuery().stats(inp)
    assert set(st) == {"divergence", "imbalance"}
    assert st["imbalance"] == pytest.approx(0.4 / 0.5)  # class 2 (0.1) is not present
    assert st["divergence"] == pytest.approx(np.mean(np.abs(pg - pl) / (pg + pl)))
    st = FairFALQuery(divergence_classes="present").stats(inp)
    assert st["divergence"] == pytest.approx(np.mean((np.abs(pg - pl) / (pg + pl))[:2]))


def test_fairfal_stats_probe_is_seeded_by_probe_seed() -> None:
    rows = np.exp(np.random.default_rng(1).normal(size=(9, 2)))
    rows /= rows.sum(1, keepdims=True)
    glob = ModelOutputs(np.log(rows), np.zeros((9, 1)))
    loc = ModelOutputs(np.log(rows[::-1].copy()), np.zeros((9, 1)))
    labels = [0] * 6 + [1] * 3  # class 1 topped up with 3 draws from its 3 rows
    inp = _inputs(glob, loc, [True] * 9, labels, 1, 2)
    for seed in (42, 7):
        probe = balanced_probe(np.array(labels), np.random.default_rng(seed))
        pg, pl = rows[probe].mean(0), rows[::-1][probe].mean(0)
        q = FairFALQuery() if seed == 42 else FairFALQuery(probe_seed=seed)
        st = q.stats(inp)
        assert st["divergence"] == pytest.approx(np.mean(np.abs(pg - pl) / (pg + pl)), abs=1e-12)
        assert st["imbalance"] == pytest.approx(pg.min() / pg.max(), abs=1e-12)


def _select_case():
    # 2 classes; labeled rows 0 (class 0) and 1 (class 1); unlabeled rows 2, 3 (class 0 by
    # prototype) and 4 (class 1). Global entropy: row 2 > row 3; local-only: row 3 > row 2.
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.2], [0.0, 1.0]])
    pg = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.8, 0.2], [0.3, 0.7]])
    pl = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5], [0.3, 0.7]])
    glob = ModelOutputs(np.log(pg), feats)
    loc = ModelOutputs(np.log(pl), np.zeros((5, 2)))
    return glob, loc


def test_fairfal_select_uncertainty_model_and_diagnostics() -> None:
    glob, loc = _select_case()
    lab = [True, True, False, False, False]
    q = FairFALQuery(oversample=1.0)
    # d = 0.1, rbar = 0.2: s = 1 - 0.15 = 0.85 > 0.75 -> global uncertainty; rbar < 0.5
    inp = _inputs(glob, loc, lab, [0, 1, -1, -1, -1], 2, 2, rbar=0.2, divergence=0.1)
    assert q.select(inp).tolist() == [2, 4]
    d = inp.diagnostics
    assert set(d) == {"use_global_uncertainty", "use_global_gradient", "s", "quotas",
                      "pseudo_labels"}  # fmt: skip
    assert (d["use_global_uncertainty"], d["use_global_gradient"]) == (1, 1)
    assert d["s"] == pytest.approx(0.85) and d["quotas"] == [1, 1]
    assert d["pseudo_labels"].tolist() == [0, 1]
    # d = 0.6, rbar = 0.6: s = 0.4 -> local-only uncertainty (row 3); rbar >= 0.5
    inp = _inputs(glob, loc, lab, [0, 1, -1, -1, -1], 2, 2, rbar=0.6, divergence=0.6)
    assert q.select(inp).tolist() == [3, 4]
    assert (inp.diagnostics["use_global_uncertainty"], inp.diagnostics["use_global_gradient"]) == (
        0, 0,
    )  # fmt: skip


def test_fairfal_select_passes_its_thresholds() -> None:
    glob, loc = _select_case()
    lab = [True, True, False, False, False]
    # t = 0: s = 1 - (d + rbar) + d rbar = 1 - 0.3 + 0.02 = 0.72; s_threshold 0.7 -> global
    # uncertainty (the default 0.75 would not); rbar_threshold 0.1 -> rbar 0.2 is not below
    q = FairFALQuery(t=0.0, s_threshold=0.7, rbar_threshold=0.1, oversample=1.0)
    inp = _inputs(glob, loc, lab, [0, 1, -1, -1, -1], 2, 2, rbar=0.2, divergence=0.1)
    assert q.select(inp).tolist() == [2, 4]
    assert inp.diagnostics["s"] == pytest.approx(0.72)
    assert inp.diagnostics["use_global_uncertainty"] == 1
    assert inp.diagnostics["use_global_gradient"] == 0
    q = FairFALQuery(t=0.0, s_threshold=0.8, oversample=1.0)  # 0.72 <= 0.8: local uncertainty
    inp = _inputs(glob, loc, lab, [0, 1, -1, -1, -1], 2, 2, rbar=0.2, divergence=0.1)
    assert q.select(inp).tolist() == [3, 4]
    with pytest.raises(AssertionError):
        FairFALQuery().select(_inputs(glob, loc, lab, [0, 1, -1, -1, -1], 2, 2, divergence=0.1))


def test_fairfal_select_pseudo_label_mask_and_default_oversample() -> None:
    # 3 classes, class 2 never labeled; unlabeled row 2 at (-1, -1) is class 2 only unmasked
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
    p = np.full((4, 3), 1 / 3)
    glob = ModelOutputs(np.log(p), feats)
    lab = [True, True, False, False]
    for mask, want in (("present", [0, 0]), ("none", [2, 0])):
        inp = _inputs(glob, glob, lab, [0, 1, -1, -1], 2, 3, rbar=0.0, divergence=0.0)
        FairFALQuery(pseudo_label_mask=mask).select(inp)
        assert sorted(inp.diagnostics["pseudo_labels"].tolist()) == sorted(want)
