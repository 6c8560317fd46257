"""End-to-end runs under Flower's simulation runtime (Ray): accuracy, determinism, resume, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.outputs import read_metrics
from fedsim.runner import resume_config, run

TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}


def _run(tmp: Path, name: str, overrides: list[str]) -> Path:
    cfg = compose(["progress=false", *overrides])
    cfg.output_dir = str(tmp / name)
    run(cfg)
    return tmp / name


def _comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return _run(tmp, "a", []), _run(tmp, "b", [])


def test_default_run_reaches_90_percent_and_writes_its_outputs(
    default_runs: tuple[Path, Path],
) -> None:
    run_dir = default_runs[0]
    summary = json.loads((run_dir / C.SUMMARY_FILE).read_text())
    assert summary[C.FINAL_ACCURACY] >= 0.90
    assert summary[C.ROUNDS_DONE] == 20 and summary[C.TOTAL_FAILURES] == 0
    metrics = read_metrics(run_dir)
    assert [r[C.ROUND] for r in metrics] == list(range(1, 21))
    assert all(r[C.CLIENTS_SAMPLED] == list(range(10)) for r in metrics)
    for name in (C.CONFIG_FILE, C.PARTITION_CSV, C.PARTITION_PNG, C.ACCURACY_PNG):
        assert (run_dir / name).stat().st_size > 0, name
    assert any((run_dir / C.TENSORBOARD_DIR).iterdir())
    assert sorted(p.name for p in (run_dir / C.CHECKPOINT_DIR).iterdir()) == [
        f"round_{r:05d}.pt" for r in (5, 10, 15, 20)
    ]


def test_same_seed_gives_identical_per_round_metrics(default_runs: tuple[Path, Path]) -> None:
    a, b = (_comparable(d) for d in default_runs)
    assert a == b


def test_resume_ends_with_the_same_metrics_as_an_uninterrupted_run(
    default_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    partial = _run(tmp_path, "partial", ["rounds=10", "strategy=fedavg"])
    assert read_metrics(partial)[-1][C.ROUND] == 10
    # A record past the last checkpoint, as a killed run leaves it, must be recomputed.
    with (partial / C.METRICS_FILE).open("a") as f:
        f.write(json.dumps({C.ROUND: 11, C.EVAL_ACCURACY: 0.0}) + "\n")
    cfg = resume_config(partial, compose(["rounds=20", "progress=false"]))
    run(cfg)
    assert _comparable(partial) == _comparable(default_runs[0])


def test_sampling_and_fedprox_with_a_different_seed(tmp_path: Path) -> None:
    d = _run(
        tmp_path,
        "s",
        [
            "seed=1",
            "num_clients=20",
            "clients_per_round=5",
            "rounds=3",
            "strategy=fedprox",
            "strategy.mu=0.1",
            "checkpoint_every=0",
            "federated_eval_every=1",
        ],
    )
    metrics = read_metrics(d)
    sampled = [r[C.CLIENTS_SAMPLED] for r in metrics]
    assert all(len(s) == 5 and len(set(s)) == 5 for s in sampled)
    assert len({tuple(s) for s in sampled}) > 1  # re-sampled each round
    assert all(0 <= r["federated_eval_accuracy"] <= 1 for r in metrics)
    assert all(r["federated_eval_loss"] > 0 for r in metrics)
    assert [p.name for p in (d / C.CHECKPOINT_DIR).iterdir()] == ["round_00003.pt"]


def test_mnist_from_shared_data(shared_data: Path, tmp_path: Path) -> None:
    d = _run(
        tmp_path,
        "mnist",
        ["dataset=mnist", f"dataset.root={shared_data}", "rounds=2", "partition.alpha=1.0"],
    )
    summary = json.loads((d / C.SUMMARY_FILE).read_text())
    assert summary[C.FINAL_ACCURACY] > 0.85


@pytest.mark.slow  # 16 s; the CLI's refusals are also checked in test_bad_inputs
def test_cli_run_report_and_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "fedsim.cli"]
    done = subprocess.run(
        [*cmd, "run", "rounds=2", f"output_dir={out}"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round 2/2" in done.stdout and "final test accuracy" in done.stdout
    rep = subprocess.run([*cmd, "report", str(out)], capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "final acc" in rep.stdout
    bad = subprocess.run(
        [*cmd, "run", "partition.alpha=0", f"output_dir={tmp_path / 'bad'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fedsim: error: invalid partition.alpha=0: allowed a number > 0"
    ]
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # 18 s; resume is also checked in-process
def test_server_killed_mid_run_resumes_to_the_same_metrics(
    default_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGKILL the whole `fedsim run` process group after the round-10 checkpoint; nothing
    written is corrupted, and resume ends where an uninterrupted run ends."""
    import os
    import signal
    import time

    from omegaconf import OmegaConf

    from fedsim.checkpoint import latest_checkpoint, load_checkpoint

    out = tmp_path / "killed"
    # Client 0 straggles 1 s from round 11 on (results unchanged), so the kill lands mid-run.
    slow = [
        "faults.slow_clients=[0]",
        "faults.slow_seconds=1.0",
        f"faults.rounds={list(range(11, 21))}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", "progress=false", *slow, f"output_dir={out}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt = out / C.CHECKPOINT_DIR / "round_00010.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # inside round 11
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert ckpt.exists() and not (out / C.SUMMARY_FILE).exists(), "the kill missed the run"
    assert latest_checkpoint(out) == ckpt
    assert load_checkpoint(ckpt)["round"] == 10
    rounds = [r[C.ROUND] for r in read_metrics(out)]
    assert rounds[:10] == list(range(1, 11)) and len(rounds) <= 11

    changes = OmegaConf.create({"faults": {"slow_clients": [], "rounds": []}, "progress": False})
    run(resume_config(out, changes))
    assert _comparable(out) == _comparable(default_runs[0])
