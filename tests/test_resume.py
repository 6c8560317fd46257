"""Resume equals an uninterrupted run, for every stateful strategy and every workflow component.

Each case runs once uninterrupted with a checkpoint every round, then loses every checkpoint
after round ``k`` (as if killed there) and resumes: the rounds after ``k`` must give the same
records, and the run the same summary. FAL cases resume mid-stage and at a stage boundary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.runner import resume_config, run

SMALL = ["num_clients=4", "clients_per_round=3", "rounds=4", "checkpoint_every=1"]
SMALL += ["progress=false", "tensorboard=false", "local.epochs=1", "max_train_samples=600"]
HOLDOUT = ["backdoor_eval.aux_per_class=5", "backdoor_eval.root_per_class=3"]
TRIGGER = ["attack.image_size=8", "attack.trigger_size=2", "attack.trigger_pos=[5,5]", *HOLDOUT]
FAL = ["query=entropy", "fal.end_ratio=0.15", "rounds=2"]  # 3 stages of 2 rounds

#: name -> (overrides, round after which the run is cut)
CASES: dict[str, tuple[list[str], int]] = {
    "fedavgm": (["strategy=fedavgm"], 2),
    "fedadam": (["strategy=fedadam"], 2),
    "fedyogi": (["strategy=fedyogi"], 2),
    "foolsgold": (["strategy=foolsgold"], 2),
    "dp_fedadam": (["strategy=dp_fixed_clipping", "strategy.inner=fedadam"], 2),
    "backdoor": (["attack=cba", "attack.mcr=0.5", *TRIGGER], 2),
    "fltrust": (["strategy=fltrust", *HOLDOUT], 2),
    "ssfl": (["ssfl=labels_at_server", "local=semifl"], 2),
    "defense": (["attack=cba", "attack.mcr=0.5", "defense=dormant_pruning", *TRIGGER], 3),
    "fal_mid_stage": (FAL, 3),
    "fal_stage_end": ([*FAL, "query=margin"], 4),
    "open_set_mid_stage": (
        [*FAL, "query=lfosa", "open_set=class_split", "open_set.log_picks=true"]
        + ["open_set.cycles=2", "open_set.initial_ratio=0.05"],
        3,
    ),
}
FAST = ("foolsgold", "fal_mid_stage", "ssfl")
TIMING = {C.ROUND_SECONDS, C.WALL_SECONDS, C.TIMESTAMP}


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / C.METRICS_FILE).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _summary(run_dir: Path) -> dict[str, Any]:
    s = json.loads((run_dir / C.SUMMARY_FILE).read_text())
    return {k: v for k, v in s.items() if "seconds" not in k}


def _cut(run_dir: Path, after: int) -> None:
    """Remove what a run killed after round ``after`` would not have written."""
    for ckpt in (run_dir / C.CHECKPOINT_DIR).glob("round_*.pt"):
        if int(ckpt.stem.split("_")[1]) > after:
            ckpt.unlink()
    (run_dir / C.SUMMARY_FILE).unlink()
    for extra in (C.DEFENSE_FILE,):
        (run_dir / extra).unlink(missing_ok=True)
    if (run_dir / C.FAL_DIR).is_dir():
        shutil.rmtree(run_dir / C.FAL_DIR)


def _check_resume(name: str, tmp_path: Path) -> None:
    overrides, after = CASES[name]
    out = tmp_path / name
    cfg = compose([*SMALL, *overrides, "seed=1", f"output_dir={out}"])
    run(cfg)
    whole, summary = _records(out), _summary(out)
    _cut(out, after)
    run(resume_config(out))
    resumed = _records(out)
    assert [r[C.ROUND] for r in resumed] == [r[C.ROUND] for r in whole]
    assert resumed == whole
    assert _summary(out) == summary


@pytest.mark.parametrize("name", FAST)
def test_resume_equals_uninterrupted(name: str, tmp_path: Path) -> None:
    _check_resume(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CASES) - set(FAST)))
def test_resume_equals_uninterrupted_all(name: str, tmp_path: Path) -> None:
    _check_resume(name, tmp_path)


def test_resume_says_when_a_learner_keeps_client_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gce"
    run(compose([*SMALL, "rounds=2", "weak_labels=noisy", "local=gce", f"output_dir={out}"]))
    _cut(out, 1)
    capsys.readouterr()
    run(resume_config(out))
    assert "local method(s) gce keep per-client state" in capsys.readouterr().out
