"""The FedLabel studies (``conf/study/fedlabel_fmnist.yaml``, ``fedlabel_reference.yaml``) load and
plan, and differ only where their scale lines say. No training."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.study import load_study, plan
from fedsim.study.runner import PlannedRun

STUDIES = ("fedlabel_fmnist", "fedlabel_reference")


def _planned(name: str, root: Path) -> list[PlannedRun]:
    spec = load_study(name, [f"output={root / 'studies'}"])
    return plan(spec, root=root)


def _federation(run: PlannedRun) -> tuple[object, ...]:
    cfg = run.cfg
    return (
        cfg.num_clients,
        cfg.clients_per_round,
        cfg.partition.name,
        cfg.partition.alpha,
        cfg.ssfl.name,
        cfg.strategy.name,
        cfg.local.batch_size,
        cfg.local.lr,
        cfg.local.momentum,
    )


@pytest.mark.parametrize("name", STUDIES)
def test_the_fedlabel_studies_plan_the_reference_federation(name: str, tmp_path: Path) -> None:
    runs = _planned(name, tmp_path)
    assert len({r.key for r in runs}) == len(runs)  # every run its own config
    assert not (tmp_path / "studies").exists()  # planning makes nothing
    for run in runs:
        # spec 2.2 (third-party): 10 of 100 clients, Dirichlet 0.1, lr 0.05, batch 20
        assert _federation(run) == (
            100,
            10,
            "dirichlet",
            0.1,
            "labels_at_client",
            "fedavg",
            20,
            0.05,
            0.9,
        )
        if run.cfg.local.name != "supervised":
            assert run.cfg.local.mu == 7
    methods = {r.cell.label("method"): r.cfg.local.name for r in runs}
    expected = {"supervised": "supervised", "FixMatch": "fixmatch", "FedLabel": "fedlabel"}
    if name == "fedlabel_fmnist":
        expected["FedLabel_in_round"] = "fedlabel"
    assert methods == expected
    assert load_study(name).baseline == {"method": "FixMatch"}
    assert sorted({r.seed for r in runs}) == [0, 1, 2, 3, 4]


def test_the_cpu_study_changes_only_data_model_rounds_and_augmentation_cost(
    tmp_path: Path,
) -> None:
    cpu = _planned("fedlabel_fmnist", tmp_path / "cpu")
    ref = _planned("fedlabel_reference", tmp_path / "ref")
    assert {r.cfg.ssfl.labeled_ratio for r in ref} == {0.2, 0.05}
    assert {r.cfg.ssfl.labeled_ratio for r in cpu} == {0.2}
    assert {(r.cfg.dataset.name, r.cfg.model.name, r.cfg.rounds) for r in ref} == {
        ("cifar10", "resnet34", 200)
    }
    assert {(r.cfg.dataset.name, r.cfg.model.name, r.cfg.rounds) for r in cpu} == {
        ("fashion_mnist", "cnn", 40)
    }
    assert {r.cfg.local.get("ra_group", 1) for r in ref} == {1}  # RandAugment per image
    fedlabel = [r for r in cpu + ref if r.cell.label("method") == "FedLabel"]
    assert {(r.cfg.local.score, r.cfg.local.beta, r.cfg.local.lambda0) for r in fedlabel} == {
        ("variance", 0.95, 1.0)
    }
    assert {r.cfg.local.local_model for r in fedlabel} == {"persistent"}
    in_round = [r for r in cpu if r.cell.label("method") == "FedLabel_in_round"]
    assert len(in_round) == 5 and {r.cfg.local.local_model for r in in_round} == {"in_round"}
