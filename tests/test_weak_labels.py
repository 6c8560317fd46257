"""Weak-label generators (realised statistics), per-client groups, config checks and refusal."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import compose, validate
from fedsim.data.weak_clients import assign_groups, client_specs, write_label_quality
from fedsim.data.weak_labels import WEAK_LABELS, label_quality, make_weak_labels
from fedsim.errors import ConfigError
from fedsim.federation import build_federation

C = 10


def _labels(n: int = 5000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, C, n)


def _gen(name: str, params: dict, labels: np.ndarray | None = None, seed: int = 1):
    labels = _labels() if labels is None else labels
    return labels, make_weak_labels(name, labels, C, np.random.default_rng(seed), params)


def test_registry_kinds() -> None:
    assert WEAK_LABELS.names() == ["clean", "noisy", "partial", "semi"]
    assert {n: WEAK_LABELS.meta(n)["kind"] for n in WEAK_LABELS} == {
        "clean": "clean",
        "noisy": "noisy",
        "partial": "partial",
        "semi": "semi",
    }


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8])
def test_symmetric_noise_exclude_true_hits_the_rate(rate: float) -> None:
    true, wl = _gen("noisy", {"noise_type": "symmetric", "rate": rate})
    flipped = wl.y != true
    assert flipped.sum() == round(rate * len(true))  # exactly round(r n) wrong labels
    assert wl.stats["noise_rate"] == pytest.approx(rate, abs=1 / len(true))
    assert wl.kind == "noisy" and (wl.y >= 0).all() and wl.candidates is None
    if rate > 0:  # wrong labels are spread over the other classes
        counts = np.bincount((wl.y[flipped] - true[flipped]) % C, minlength=C)
        assert counts[0] == 0 and counts[1:].min() > 0.6 * counts[1:].mean()


def test_symmetric_include_true_has_rate_times_c_minus_one_over_c() -> None:
    _, wl = _gen("noisy", {"rate": 0.5, "symmetric_convention": "include_true"})
    assert wl.stats["noise_rate"] == pytest.approx(0.5 * (C - 1) / C, abs=0.02)


def test_pair_and_asymmetric_noise() -> None:
    true, wl = _gen("noisy", {"noise_type": "pair", "rate": 0.3})
    flipped = wl.y != true
    assert np.array_equal(wl.y[flipped], (true[flipped] + 1) % C)
    assert wl.stats["noise_rate"] == pytest.approx(0.3, abs=1e-3)
    cmap = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    true, wl = _gen("noisy", {"noise_type": "asymmetric", "rate": 0.4, "class_map": cmap})
    for c in range(C):
        sel = true == c
        wrong = wl.y[sel] != c
        if c in cmap:
            assert set(wl.y[sel][wrong].tolist()) <= {cmap[c]}
            assert wrong.mean() == pytest.approx(0.4, abs=0.06)
        else:
            assert not wrong.any()


def test_instance_noise_rate_and_wrong_classes() -> None:
    rng = np.random.default_rng(0)
    labels = _labels(4000)
    x = rng.integers(0, 256, (4000, 1, 8, 8)).astype(np.uint8)
    wl = make_weak_labels(
        "noisy", labels, C, np.random.default_rng(2), {"noise_type": "instance", "rate": 0.3}, x=x
    )
    assert wl.stats["noise_rate"] == pytest.approx(0.3, abs=0.03)
    assert (wl.y >= 0).all() and (wl.y < C).all()


@pytest.mark.parametrize("q", [0.1, 0.3, 0.5])
def test_partial_sets_always_hold_the_true_label_when_eta_is_zero(q: float) -> None:
    true, wl = _gen("partial", {"q": q, "eta": 0.0})
    assert wl.candidates is not None and wl.kind == "partial" and (wl.y == -1).all()
    assert wl.candidates[np.arange(len(true)), true].all()
    assert wl.stats["coverage"] == 1.0
    assert wl.stats["mean_candidates"] == pytest.approx(1 + q * (C - 1), abs=0.05)
    wrong = wl.candidates.sum(1) - 1
    assert wrong.mean() / (C - 1) == pytest.approx(q, abs=0.01)


def test_partial_unreliable_rate_and_min_one_false() -> None:
    true, wl = _gen("partial", {"q": 0.3, "eta": 0.3})
    assert wl.stats["coverage"] == pytest.approx(0.7, abs=0.03)
    assert wl.candidates.any(1).all()  # never an empty set
    _, clean_sets = _gen("partial", {"q": 0.3, "eta": 0.0})  # the swap keeps set sizes
    assert wl.stats["mean_candidates"] == pytest.approx(
        clean_sets.stats["mean_candidates"], abs=1e-9
    )
    _, wl = _gen("partial", {"q": 0.05, "min_one_false": True})
    assert (wl.candidates.sum(1) >= 2).all()


def test_semi_labels_per_class_and_ratio() -> None:
    true = np.repeat(np.arange(C), [50, 3, 20, 20, 20, 20, 20, 20, 20, 0])
    _, wl = _gen("semi", {"labeled_ratio": None, "labels_per_class": 5}, labels=true)
    counts = np.bincount(true[wl.y >= 0], minlength=C)
    assert counts.tolist() == [5, 3, 5, 5, 5, 5, 5, 5, 5, 0]
    assert (wl.y[wl.y >= 0] == true[wl.y >= 0]).all()  # kept labels are true
    assert wl.stats["labeled"] == 43 and wl.stats["noise_rate"] == 0.0
    true, wl = _gen("semi", {"labeled_ratio": 0.05})
    assert (wl.y >= 0).sum() == round(0.05 * len(true))
    with pytest.raises(ConfigError, match="exactly one of labeled_ratio, labels_per_class"):
        _gen("semi", {"labeled_ratio": 0.1, "labels_per_class": 4})


def test_generators_are_seeded() -> None:
    _, a = _gen("noisy", {"rate": 0.4}, seed=3)
    _, b = _gen("noisy", {"rate": 0.4}, seed=3)
    _, c = _gen("noisy", {"rate": 0.4}, seed=4)
    assert np.array_equal(a.y, b.y) and not np.array_equal(a.y, c.y)


def test_label_quality_hand_case() -> None:
    true = np.array([0, 1, 2, 3])
    q = label_quality(true, np.array([0, 2, -1, 3]), None)
    assert q == {
        "n": 4.0,
        "labeled": 3.0,
        "noise_rate": pytest.approx(1 / 3),
        "mean_candidates": 1.0,
        "coverage": pytest.approx(2 / 3),
    }
    cand = np.zeros((4, 4), bool)
    cand[0, [0, 1]] = cand[1, [0]] = cand[2, [2, 3, 1]] = cand[3, [3]] = True
    q = label_quality(true, np.full(4, -1), cand)
    assert q["mean_candidates"] == pytest.approx(7 / 4) and q["coverage"] == pytest.approx(3 / 4)


def test_group_assignment_counts_and_seed() -> None:
    g = assign_groups(0, 10, [0.3, 0.3])
    assert sorted(np.bincount(g + 1).tolist()) == [3, 3, 4]
    assert np.array_equal(g, assign_groups(0, 10, [0.3, 0.3]))
    assert not np.array_equal(g, assign_groups(1, 10, [0.3, 0.3]))
    assert (assign_groups(0, 7, [0.5, 0.5]) >= 0).all()  # the fractions cover everyone


def test_mixed_preset_assigns_groups_and_local_methods(tmp_path: Path) -> None:
    cfg = compose(["experiment=fmnist_mixed_weak", "dataset=digits"])
    validate(cfg)
    specs = client_specs(cfg)
    names = [s.name for _, s in specs]
    assert names.count("noisy") == 3 and names.count("partial") == 3 and names.count("clean") == 4
    fed = build_federation(cfg)
    kinds = [fed.client_data(pid).label_kind for pid in range(10)]
    assert kinds == [WEAK_LABELS.meta(n)["kind"] for n in names]
    path = tmp_path / "label_quality.csv"
    write_label_quality(path, cfg, fed.weak, fed.weak_groups)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 10
    for r in rows:
        expect = {"noisy": "gce", "partial": "proden", "clean": "supervised"}[r["weak_labels"]]
        assert r["local"] == expect
        if r["weak_labels"] == "partial":
            assert float(r["coverage"]) == 1.0 and float(r["mean_candidates"]) > 1.5
        if r["weak_labels"] == "noisy":
            assert abs(float(r["noise_rate"]) - 0.4) < 0.02
        if r["weak_labels"] == "clean":
            assert float(r["noise_rate"]) == 0.0 and r["labeled"] == r["n"]


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            ["weak_labels=partial"],
            "local method 'supervised' cannot train on 'partial' labels: it accepts "
            "clean, noisy, semi",
        ),
        (["weak_labels=semi", "local=gce"], "local method 'gce' cannot train on 'semi' labels"),
        (["weak_labels=noisy", "local=proden"], "'proden' cannot train on 'noisy' labels"),
        (["weak_labels.name=typo"], "unknown weak_labels 'typo': valid weak_labels names are"),
        (["weak_labels=noisy", "weak_labels.rate=1.5"], r"invalid weak_labels.rate=1.5"),
        (["weak_labels=noisy", "weak_labels.noise_type=pairs"], "noise_type='pairs'"),
        (["weak_labels=noisy", "+weak_labels.ratee=0.1"], "parameter 'ratee' for weak labels"),
        (
            ["+weak_labels.groups=[{fraction: 0.5, name: partial, local: gce}]"],
            "'gce' cannot train on 'partial'",
        ),
        (
            ["+weak_labels.groups=[{fraction: 0.7, name: noisy}, {fraction: 0.7, name: semi}]"],
            "fractions that sum to at most 1",
        ),
        (
            ["+weak_labels.groups=[{fraction: 0.5, name: partial, local: nope}]"],
            "unknown local 'nope'",
        ),
    ],
)
def test_bad_weak_label_config_is_one_line_before_any_work(
    overrides: list[str], pattern: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides))
    assert "\n" not in str(info.value)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_group_local_method_can_use_its_labels() -> None:
    cfg = compose(["+weak_labels.groups=[{fraction: 0.5, name: partial, local: {name: cc}}]"])
    validate(cfg)
