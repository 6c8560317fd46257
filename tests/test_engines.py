"""``engine=fast`` and ``engine=flower`` drive the same apps to the same per-round metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.engine.fast import FastGrid
from fedsim.outputs import read_metrics
from fedsim.runner import run

TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}


def _metrics(tmp: Path, engine: str, overrides: list[str]) -> list[dict]:
    cfg = compose(["progress=false", f"engine={engine}", *overrides])
    cfg.output_dir = str(tmp / engine)
    run(cfg)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(tmp / engine)]


@pytest.mark.parametrize(
    "overrides",
    [
        ["rounds=4", "num_clients=12", "clients_per_round=5", "strategy=fedavgm", "checkpoint_every=0",
         "federated_eval_every=2"],
    ],
)
def test_fast_and_flower_engines_give_identical_metrics(tmp_path: Path, overrides: list[str]) -> None:
    fast = _metrics(tmp_path, "fast", overrides)
    flower = _metrics(tmp_path, "flower", overrides)
    assert len(fast) == 4
    assert fast == flower


def test_fast_grid_is_a_flower_grid() -> None:
    from flwr.serverapp import Grid

    assert issubclass(FastGrid, Grid)
