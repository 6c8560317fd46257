"""End-to-end federated active learning on digits (fast), determinism, and one-line config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import compose
from fedsim.errors import ConfigError
from fedsim.outputs import read_metrics
from fedsim.runner import prepare, run
from server.fal_math import aulc

OVERRIDES = [
    "rounds=2",
    "fal.end_ratio=0.15",
    "progress=false",
    "tensorboard=false",
    "local.epochs=2",
    "engine.num_cpus=2",
]


def _run(tmp: Path, query: str, seed: int = 0) -> tuple[dict, list[dict]]:
    cfg = compose([f"query={query}", f"seed={seed}", *OVERRIDES])
    cfg.output_dir = str(tmp)
    summary = run(cfg)
    return summary, read_metrics(tmp)


@pytest.fixture(scope="module")
def fairfal_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    d = tmp_path_factory.mktemp("fairfal")
    summary, metrics = _run(d, "fairfal")
    return d, summary, metrics


def test_fal_run_grows_the_labeled_pools_by_the_budget(fairfal_run) -> None:
    run_dir, summary, metrics = fairfal_run
    b0, b = summary["budget_initial"], summary["budget_per_cycle"]
    # 1437 training images less the validation split (round(0.1 n_c) per class: 142) = 1295;
    # N100 = 1300: int(1300 * 0.05 / 10) = 6 labels per client initially and per cycle
    assert summary["pool_size"] == 1295 and (b0, b) == (6, 6)
    stages = [r for r in metrics if r.get("kind") == "stage"]
    assert [s["labeled_ratio"] for s in stages] == [0.05, 0.1, 0.15]
    assert [s["labeled"] for s in stages] == [60, 120, 180]  # 10 clients x 6 per stage
    assert [sum(s["query_hist"]) for s in stages[:-1]] == [60, 60]
    assert sum(summary["query_hist_total"]) == 120  # 2 cycles x 10 clients x 6
    # each client picked exactly b positions in each cycle, never one picked before
    seen: dict[str, set[int]] = {}
    for cycle in (0, 1):
        picks = json.loads((run_dir / "fal" / f"cycle_{cycle}.json").read_text())
        assert len(picks) == 10
        for pid, m in picks.items():
            assert len(m["picks"]) == b == len(set(m["picks"]))
            assert not seen.setdefault(pid, set()) & set(m["picks"])
            seen[pid] |= set(m["picks"])
            assert m["fairfal_quotas"] and sum(m["fairfal_quotas"]) == b
    # rbar is computed in the first cycle and kept (Q1)
    assert stages[0]["fairfal_rbar"] == stages[1]["fairfal_rbar"]
    assert stages[0]["fairfal_rbar"] == pytest.approx(np.mean(stages[0]["fairfal_imbalances"]))
    accs = [s["eval_accuracy"] for s in stages]
    assert summary["stage_accuracies"] == accs and summary["final_accuracy"] == accs[-1]
    assert summary["aulc"] == pytest.approx(aulc([0.05, 0.1, 0.15], accs))
    assert len(stages[-1]["per_class_accuracy"]) == 10
    rounds = [r for r in metrics if r.get("kind") != "stage"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert [r["stage"] for r in rounds] == [0, 0, 1, 1, 2, 2]


def test_fal_run_is_deterministic(fairfal_run, tmp_path: Path) -> None:
    _, summary, metrics = fairfal_run
    again, metrics2 = _run(tmp_path, "fairfal")
    assert again["stage_accuracies"] == summary["stage_accuracies"]
    assert again["query_hist_total"] == summary["query_hist_total"]
    keep = ("eval_accuracy", "train_loss", "query_hist", "labeled_hist")
    assert [{k: r.get(k) for k in keep} for r in metrics] == [
        {k: r.get(k) for k in keep} for r in metrics2
    ]


@pytest.mark.slow
@pytest.mark.parametrize("query", ["kafal", "logo", "badge"])
def test_other_strategies_end_to_end(query: str, tmp_path: Path) -> None:
    summary, metrics = _run(tmp_path, query)
    assert sum(summary["query_hist_total"]) == 120
    assert len(summary["stage_accuracies"]) == 3


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["query=nope"], r"query.*nope"),
        (["query=entropy", "query.model_mode=server"], r"invalid query.model_mode='server'"),
        (["query=fairfal", "+query.tauu=1"], r"invalid query parameter 'tauu'.*tau"),
        (["query=fairfal", "query.divergence_classes=some"], r"invalid query.divergence_classes"),
        (["query=random", "fal.reset=warm"], r"invalid fal.reset='warm': allowed random, continue"),
        (["query=random", "fal.end_ratio=1.5"], r"invalid fal.end_ratio=1.5"),
        (["query=random", "fal.end_ratio=0.01"], r"invalid fal.end_ratio=0.01"),
        (
            ["query=random", "fal.local_only.milestone_unit=step"],
            r"invalid fal.local_only.milestone_unit='step'",
        ),
        (["partition=dir_balance", "partition.beta=-1"], r"invalid partition.beta=-1"),
    ],
)
def test_bad_fal_input_is_one_clear_line(overrides: list[str], pattern: str) -> None:
    import re

    with pytest.raises(ConfigError) as info:
        cfg = compose(overrides)
        cfg.output_dir = "unused"
        prepare(cfg)
    assert "\n" not in str(info.value)
    assert re.search(pattern, str(info.value)), str(info.value)
