"""Experiment presets in conf/experiment: each composes and validates; a smoke run of each is slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import CONF_DIR, compose, validate
from fedsim.runner import run
from tests.conftest import SHARED_DATA

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


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
    cfg = compose([f"experiment={preset}", "rounds=1", "progress=false"])
    if cfg.dataset.name != "digits":
        if not (SHARED_DATA / "MNIST").is_dir():
            pytest.skip(f"no offline data at {SHARED_DATA}")
        cfg.dataset.root = str(SHARED_DATA)
    if preset == "flain_mnist":
        cfg.max_train_samples = 3000  # reduced data (50 clients, Adam, FLAIN at the end)
    cfg.output_dir = str(tmp_path / preset)
    summary = run(cfg)
    assert summary["rounds"] == 1 and summary["final_accuracy"] is not None
