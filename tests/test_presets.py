"""Experiment presets in conf/experiment: each composes and validates; a smoke run of each is slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import CONF_DIR, compose, validate
from fedsim.runner import run
from tests.conftest import SHARED_DATA

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
#: Extra overrides that keep a preset's smoke run small (FAL presets run several stages).
SMOKE = {
    p: ["max_train_samples=3000", "fal.end_ratio=0.1", "local.epochs=1", "+model.params.width=8"]
    for p in PRESETS
    if p.startswith("fal_")
}


def test_there_are_presets() -> None:
    assert {"digits_fedprox", "mnist_cnn", "fmnist_lt"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset: str) -> None:
    cfg = compose([f"experiment={preset}"])
    validate(cfg)
    assert cfg.rounds >= 1


def test_mnist_preset_values() -> None:
    cfg = compose(["experiment=mnist_cnn", "rounds=3"])
    assert (
        cfg.dataset.name,
        cfg.model.name,
        cfg.num_clients,
        cfg.clients_per_round,
        cfg.rounds,
    ) == (
        "mnist",
        "cnn",
        100,
        10,
        3,
    )


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_smoke_run(preset: str, tmp_path: Path) -> None:
    cfg = compose([f"experiment={preset}", "rounds=1", "progress=false", *SMOKE.get(preset, [])])
    if cfg.dataset.name != "digits":
        if not (SHARED_DATA / "MNIST").is_dir():
            pytest.skip(f"no offline data at {SHARED_DATA}")
        cfg.dataset.root = str(SHARED_DATA)
    if preset == "flain_mnist":
        cfg.max_train_samples = 3000  # reduced data (50 clients, Adam, FLAIN at the end)
    cfg.output_dir = str(tmp_path / preset)
    summary = run(cfg)
    stages = len(summary.get("stage_accuracies", [None]))
    assert summary["rounds"] == stages and summary["final_accuracy"] is not None


def test_fal_presets_are_the_reference_setting() -> None:
    for preset, beta in (("fal_fmnist_lt", 0.1), ("fal_fmnist_lt_b100", 100)):
        cfg = compose([f"experiment={preset}"])
        validate(cfg)
        assert (cfg.dataset.name, cfg.model.name, cfg.partition.name, cfg.query.name) == (
            "fashion_mnist",
            "cnn4conv",
            "dir_balance",
            "fairfal",
        )
        assert (cfg.longtail_rho, cfg.partition.beta, cfg.num_clients, cfg.rounds) == (
            20,
            beta,
            10,
            100,
        )
        assert (cfg.fal.initial_ratio, cfg.fal.query_ratio, cfg.fal.end_ratio) == (0.05, 0.05, 0.45)
        assert compose([f"experiment={preset}", "rounds=5"]).rounds == 5  # reducible for CPU
