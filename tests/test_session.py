"""``EngineSession``: Ray and the ``engine=fast`` actors start once for many runs, and a run on a
session gives the metrics it gives alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.engine import EngineSession, session
from fedsim.errors import ConfigError
from fedsim.outputs import read_metrics
from fedsim.runner import run

TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}
SMALL = ["progress=false", "rounds=2", "num_clients=6", "clients_per_round=4", "checkpoint_every=0"]


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def _cfg(tmp: Path, name: str, overrides: list[str]) -> object:
    cfg = compose([*SMALL, *overrides])
    cfg.output_dir = str(tmp / name)
    return cfg


@pytest.mark.slow  # 18 s; the suite itself runs on one shared session
def test_runs_on_a_session_share_ray_and_actors_and_match_a_run_alone(
    tmp_path: Path, engine_session: EngineSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs on the shared session: Ray starts at most once and the second run gets the
    first run's actors; both end with the metrics of a run on its own one-run session."""
    engine_session.close()
    starts = engine_session.ray_starts
    engine_session.run(_cfg(tmp_path, "first", ["seed=3"]))
    pool = engine_session._pool
    assert pool is not None and pool.actors
    actors = [a._actor_id for a in pool.actors]
    run(_cfg(tmp_path, "second", ["seed=4"]))  # run() finds the open session
    assert engine_session.ray_starts == starts + 1
    assert [a._actor_id for a in engine_session._pool.actors] == actors

    monkeypatch.setattr(session, "_open_session", None)  # as in a script: no session open
    import ray

    engine_session.close()  # one Ray per process: the one-run session starts its own
    run(_cfg(tmp_path, "alone3", ["seed=3"]))
    run(_cfg(tmp_path, "alone4", ["seed=4"]))
    assert not ray.is_initialized()  # each one-run session stopped its Ray
    assert _metrics(tmp_path / "first") == _metrics(tmp_path / "alone3")
    assert _metrics(tmp_path / "second") == _metrics(tmp_path / "alone4")
    assert _metrics(tmp_path / "first") != _metrics(tmp_path / "second")  # seeds matter


def test_a_session_with_fixed_settings_refuses_a_run_its_ray_cannot_serve(tmp_path: Path) -> None:
    s = EngineSession({"name": "fast", "num_cpus": 2})
    s._ray, s._owns_ray = {"num_cpus": 2, "CPU": 2.0, "GPU": 0.0}, True  # as after start()
    with pytest.raises(
        ConfigError, match=r"engine.num_cpus=1, but the Ray of this session has 2 CPUs"
    ):
        s.begin(_cfg(tmp_path, "x", ["engine.num_cpus=1"]))
    with pytest.raises(ConfigError, match=r"engine.ray_address='10.0.0.1:6379'"):
        s.begin(_cfg(tmp_path, "x", ["engine.ray_address=10.0.0.1:6379"]))
    assert s.runs == 0


def test_ray_mismatch_names_what_differs() -> None:
    have = {"CPU": 2.0, "GPU": 0.0, "lean_ray": True}
    assert session.ray_mismatch({"num_cpus": None, "lean_ray": True}, have, speed_too=True) is None
    assert "num_gpus=1" in str(session.ray_mismatch({"num_gpus": 1}, have, speed_too=False))
    assert session.ray_mismatch({"lean_ray": False}, have, speed_too=False) is None
    assert "lean_ray=False" in str(session.ray_mismatch({"lean_ray": False}, have, speed_too=True))
    joined = {"ray_address": "h:1", "CPU": 8.0, "GPU": 0.0}  # a cluster's resources are its own
    assert (
        session.ray_mismatch({"ray_address": "h:1", "num_cpus": 1}, joined, speed_too=True) is None
    )


def test_one_session_per_process(engine_session: EngineSession) -> None:
    assert session.open_session() is engine_session
    with pytest.raises(RuntimeError, match="already open"), EngineSession():
        pass
    assert session.open_session() is engine_session


@pytest.mark.slow  # 6 s; a regression test of a start-up race (make test-all)
def test_flower_engine_imports_ray_before_the_server_thread_starts(tmp_path: Path) -> None:
    """The import race of ``engine=flower`` (the ServerApp's thread saw a partly imported Ray):
    Ray is fully imported before Flower's simulation starts the ServerApp's thread."""
    code = (
        "import sys\n"
        "import flwr.simulation.run_simulation\n"
        "rs = sys.modules['flwr.simulation.run_simulation']  # the package's name is a function\n"
        "from fedsim.config import compose\n"
        "from fedsim.engine.flower import run_flower\n"
        "seen = []\n"
        "def fake(**kw):\n"
        "    ray = sys.modules.get('ray')\n"
        "    seen.append(ray is not None and hasattr(ray, 'is_initialized'))\n"
        "rs._run_simulation = fake\n"
        f"run_flower(compose(['engine=flower', 'output_dir={tmp_path}']))\n"
        "print(seen)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[True]", out.stderr[-2000:]
