"""The backdoor studies (``conf/study/flain_*.yaml``, ``backdoor_rules.yaml``): they load and plan,
choose only on validation, and their report sections (:mod:`server.study_reports_backdoor`) work
on hand-made rows. No training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedsim.study import STUDY_REPORTS, StudySpec, load_study, parse_study, plan
from fedsim.study.spec import SELECTABLE_PREFIXES, metric_terms
from fedsim.study.tables import apply_selections
from server import study_reports_backdoor as rb

STUDIES = ("flain_mnist", "backdoor_rules", "flain_reference")


def _first(spec: StudySpec) -> StudySpec:
    """``spec`` cut to its first cell and seed (composing all of a study's runs takes seconds)."""
    return dataclasses.replace(spec, cells=spec.cells[:1], seeds=spec.seeds[:1])


@pytest.mark.parametrize("name", STUDIES)
def test_the_backdoor_studies_load_and_plan(name: str, tmp_path: Path) -> None:
    spec = load_study(name, [f"output={tmp_path / 'studies'}"])
    cfg = plan(_first(spec), root=tmp_path)[0].cfg
    assert cfg.dataset.name == "mnist" and cfg.attack.name == "cba"
    assert cfg.defense.name == "none"  # the defenses are post hoc, on the trained model
    for sel in spec.select:
        assert all(k.startswith(SELECTABLE_PREFIXES) for _, k in metric_terms(sel.metric))
    for report in spec.reports:
        assert callable(STUDY_REPORTS.get(report))
    assert not (tmp_path / "studies").exists()  # planning makes nothing


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_every_run_of_the_backdoor_studies_plans(name: str, tmp_path: Path) -> None:
    spec = load_study(name, [f"output={tmp_path / 'studies'}"])
    runs = plan(spec, root=tmp_path)
    assert len(runs) == len(spec.cells) * len(spec.seeds)
    assert len({r.key for r in runs}) == len(runs)  # every run its own config


def test_the_flain_studies_declare_the_reference_setting() -> None:
    cpu, ref = load_study("flain_mnist"), load_study("flain_reference")
    for spec, rounds in ((cpu, 30), (ref, 200)):
        cfg = plan(_first(spec))[0].cfg
        assert cfg.rounds == rounds and cfg.num_clients == 50 and cfg.clients_per_round == 25
        assert cfg.attack.mcr == 0.2 and cfg.max_train_samples is None
        assert list(cfg.model.params.channels) == [32, 64]
        assert spec.seeds == (0, 1, 2, 3, 4)
        assert spec.posthoc["flain_reference"] == {"name": "flain", "mode": "reference"}
        assert rb.eps_of(spec.posthoc["flain_reference"], "mnist") == 0.0  # spec §1.4
        assert spec.baseline == {"method": "no_defense"}
        asr = next(t for t in spec.tables if t.metric == "final_asr")
        assert asr.higher_is_better is False
    assert cpu.posthoc == ref.posthoc and cpu.select == ref.select


def _spec():
    return load_study("flain_mnist")


def _rows() -> list[dict]:
    """Two seeds; eps 0.005 is best on validation, eps 0.02 costs too much val accuracy."""
    rows = []
    flain = {
        "flain_reference": (0.95, 0.60, 0.95, 0.62, 0.001, 13),
        "flain_eps0.0025": (0.95, 0.20, 0.948, 0.22, 0.02, 80),
        "flain_eps0.005": (0.947, 0.01, 0.946, 0.02, 0.04, 140),
        "flain_eps0.01": (0.94, 0.00, 0.941, 0.01, 0.11, 350),
        "flain_eps0.02": (0.93, 0.00, 0.93, 0.0, 0.2, 500),
    }
    for seed in (0, 1):
        d = 0.01 * seed
        rows.append(
            {"method": "no_defense", "seed": seed, "variant": "trained", "final_ma": 0.95 + d}
            | {"final_asr": 0.66, "final_val_accuracy": 0.95, "final_val_asr": 0.65}
        )
        for label, (ma, asr, vacc, vasr, k, flips) in flain.items():
            rows.append(
                {"method": label, "seed": seed, "variant": label, "final_ma": ma + d}
                | {"final_asr": asr, "final_val_accuracy": vacc, "final_val_asr": vasr}
                | {"defense_k_star": k, "defense_flip_count": flips, "defense_dormant_inputs": 7}
                | {"defense_aux_acc_drop": 0.001, "defense_terminated_without_stop": 0}
            )
        rows.append(
            {"method": "dormant_pruning", "seed": seed, "final_ma": 0.949, "final_asr": 0.008}
            | {"defense_pruned": 592, "defense_aux_acc_drop": 0.009}
        )
    return rows


def test_flain_candidates_are_the_reference_mode_variants_by_eps() -> None:
    cands = rb.flain_candidates(_spec(), "mnist")
    assert list(cands.values()) == [0.0, 0.0025, 0.005, 0.01, 0.02]
    assert "flain_rollback" not in cands and "dormant_pruning" not in cands


def test_eps_is_chosen_per_model_on_validation_only() -> None:
    rows = _rows()
    aware = rb.choose_per_model(_spec(), rows, "trigger_aware", dataset="mnist")
    # val acc - val asr: 0.33, 0.728, 0.926, 0.931, 0.93 -> eps 0.01, whatever the test numbers
    assert [(r["seed"], r["eps"]) for r in aware] == [(0, 0.01), (1, 0.01)]
    free = rb.choose_per_model(_spec(), rows, "trigger_free", dataset="mnist")
    # val accuracy within 0.5 point of 0.95: eps 0, 0.0025, 0.005 -> the largest, 0.005
    assert [r["chosen"] for r in free] == ["flain_eps0.005"] * 2
    for r in rows:  # a test number changes nothing
        r["final_asr"], r["final_ma"] = 0.5, 0.5
    assert rb.choose_per_model(_spec(), rows, "trigger_aware", dataset="mnist") == [
        {**r, "final_asr": 0.5, "final_ma": 0.5} for r in aware
    ]
    with pytest.raises(ValueError, match="unknown criterion"):
        rb.choose_per_model(_spec(), rows, "test")


def test_the_study_selection_picks_the_best_mean_val_criterion() -> None:
    out, choices = apply_selections(_spec(), _rows())
    assert [c["chosen"] for c in choices] == ["flain_eps0.01"]
    assert len([r for r in out if r["method"] == "flain_eps_on_val"]) == 2


def test_report_sections_on_hand_made_rows(tmp_path: Path) -> None:
    spec, rows = _spec(), _rows()
    details = rb.flain_details(spec, [], rows, [], tmp_path)
    assert "| flain_reference | 0: 0.001, 1: 0.001 | 13 [13, 13] | 7 [7, 7] |" in details
    assert "| dormant_pruning | - | 592 [592, 592] | - | 0.90 [0.90, 0.90] | - |" in details
    assert "flain_rollback" not in details  # not made: no row
    per_model = rb.flain_eps_per_model(spec, [], rows, [], tmp_path)
    assert "| trigger_aware | 0: 0.01, 1: 0.01 | 94.5 [" in per_model
    assert "| trigger_free | 0: 0.005, 1: 0.005 |" in per_model
    assert "| -66.0 [-66.0, -66.0] (2/2) |" in per_model  # ASR: lower wins
    empty = rb.flain_details(spec, [], [], [], tmp_path)
    assert "no post-hoc variant made yet" in empty
    assert "no FLAIN variant" in rb.flain_eps_per_model(spec, [], rows[:1], [], tmp_path)


def test_a_study_without_flain_variants_has_no_eps_section(tmp_path: Path) -> None:
    spec = parse_study(
        {
            "axes": {"method": {"fedavg": ["strategy=fedavg"]}},
            "baseline": {"method": "fedavg"},
        }
    )
    assert rb.flain_eps_per_model(spec, [], [], [], tmp_path) == ""
