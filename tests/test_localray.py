"""The lean local Ray of ``engine=fast`` (``engine.lean_ray``): which processes it starts and
that it leaves none behind."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from fedsim.engine.localray import LEAN_SYSTEM_CONFIG, lean_node_params, start_ray, stop_ray

# These tests start and stop Ray themselves: the shared session's Ray is stopped first.
pytestmark = pytest.mark.usefixtures("no_engine_session")

#: Command-line fragments of the Python helpers that plain ``ray.init`` starts.
HELPERS = {
    "dashboard server": "dashboard/dashboard.py",
    "autoscaler monitor": "autoscaler/_private/monitor.py",
    "log monitor": "_private/log_monitor.py",
}


def _session_processes(session_dir: str) -> list[psutil.Process]:
    """The live processes whose command line names ``session_dir`` (Ray's daemons' do)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if session_dir in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _cmd(proc: psutil.Process) -> str:
    return " ".join(proc.cmdline())


def _commands(procs: list[psutil.Process]) -> list[str]:
    return [" ".join(p.info["cmdline"]) for p in procs]


def _left_after(procs: list[psutil.Process]) -> list[str]:
    """Wait (up to 15 s) for ``procs`` to exit; the command lines of those still running."""
    _, alive = psutil.wait_procs(procs, timeout=15)
    return [" ".join(p.info["cmdline"]) for p in alive if p.status() != psutil.STATUS_ZOMBIE]


#: Command-line fragments of Ray's two node agents (their scripts, or the titles they set),
#: and of fedsim's stand-in for them.
RAY_AGENTS = (
    "dashboard/agent.py",
    "runtime_env/agent/main.py",
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
)
STUB_AGENT = "fedsim/engine/stub_agent.py"


def _start(lean: bool, agents: bool = True) -> str:
    import ray

    assert start_ray({"num_cpus": 1, "lean_ray": lean, "lean_agents": agents}, verbose=False)
    session_dir: str = ray._private.worker.global_worker.node.get_session_dir_path()
    return session_dir


def _agents(session_dir: str) -> tuple[int, int]:
    """How many of the raylet's children are fedsim's stub agent, and how many Ray's agents."""
    raylet = next(p for p in _session_processes(session_dir) if "raylet_socket" in _cmd(p))
    kids = [_cmd(p) for p in raylet.children()]  # the agents (and any worker)
    return sum(STUB_AGENT in c for c in kids), sum(any(m in c for m in RAY_AGENTS) for c in kids)


def test_stub_agents_only_on_the_ray_version_they_were_checked_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedsim.engine import localray

    monkeypatch.setattr(localray, "STUB_AGENT_RAY_VERSIONS", frozenset({"0.0.1"}))
    session_dir = _start(True, True)
    try:
        assert _agents(session_dir) == (0, 2)
    finally:
        assert not _stopped(session_dir)


def _stopped(session_dir: str) -> list[str]:
    """Stop Ray; the processes of ``session_dir`` that outlive it."""
    procs = _session_processes(session_dir)
    assert procs, f"no process names {session_dir}"
    stop_ray()
    return _left_after(procs)


def test_lean_node_params_leave_out_the_helpers_and_keep_the_settings() -> None:
    args = {
        "num_cpus": 2,
        "num_gpus": 1,
        "_system_config": {"max_direct_call_object_size": 7},
        "include_dashboard": True,  # never: the lean node has no dashboard server
        "logging_level": 30,  # a driver setting, not the node's
    }
    assert lean_node_params(args) == {
        "include_dashboard": False,
        "no_monitor": True,
        "include_log_monitor": False,
        "num_cpus": 2,
        "num_gpus": 1,
        "_system_config": {**LEAN_SYSTEM_CONFIG, "max_direct_call_object_size": 7},
    }
    assert lean_node_params({})["_system_config"] == LEAN_SYSTEM_CONFIG
    assert LEAN_SYSTEM_CONFIG["prestart_worker_first_driver"] is False


def _check_lean_settings(session_dir: str) -> None:
    """The lean node's GCS (which hands Ray's settings to the raylet and the workers) got
    :data:`LEAN_SYSTEM_CONFIG`, and :func:`_await_raylet` tells
    a registered node from an unknown one."""
    import base64
    import json

    import ray

    from fedsim.engine.localray import _await_raylet

    gcs = next(c for c in _commands(_session_processes(session_dir)) if "gcs_server" in c)
    encoded = next(a for a in gcs.split() if a.startswith("--config_list="))
    settings = json.loads(base64.b64decode(encoded.split("=", 1)[1]))
    for key, value in LEAN_SYSTEM_CONFIG.items():
        assert settings[key] == value, key
    node = ray._private.worker.global_worker.node
    assert _await_raylet(node.gcs_address, node.node_id, timeout=5.0)
    assert not _await_raylet(node.gcs_address, "ab" * 28, timeout=0.05)


@pytest.mark.parametrize(
    ("lean", "agents"),
    [
        (True, True),
        pytest.param(True, False, marks=pytest.mark.slow),
        pytest.param(False, True, marks=pytest.mark.slow),
    ],
)
def test_local_ray_helpers_and_a_clean_stop(lean: bool, agents: bool) -> None:
    """The lean node leaves out Ray's helpers and (with ``lean_agents``) runs the stub agents
    in place of Ray's; tasks run on it, and nothing outlives :func:`stop_ray`."""
    import ray

    session_dir = _start(lean, agents)
    try:
        running = _commands(_session_processes(session_dir))
        assert any("gcs_server" in c for c in running) and any("raylet" in c for c in running)
        for name, fragment in HELPERS.items():
            present = any(fragment in c for c in running)
            assert present is not lean, f"{name} running={present} with lean_ray={lean}"
        stubbed = lean and agents
        assert _agents(session_dir) == ((2, 0) if stubbed else (0, 2))

        @ray.remote
        def square(x: int) -> int:
            return x * x

        assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
        if lean:
            _check_lean_settings(session_dir)
    finally:
        left = _stopped(session_dir)
    assert not left, f"processes left after stop_ray(): {left}"
    assert not ray.is_initialized()


def test_bad_input_found_after_the_engine_started_stops_it_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` starts Ray before it loads the data: a missing dataset still gives the one-line
    error, with nothing written and no Ray process left."""
    import ray

    from fedsim.config import compose
    from fedsim.engine import localray, session
    from fedsim.errors import ConfigError
    from fedsim.runner import run

    cfg = compose(["engine=fast", "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}"])
    cfg.output_dir = str(tmp_path / "run")
    seen: list[psutil.Process] = []

    def stop_and_record() -> None:  # the engine's Ray processes, as it stops them
        seen.extend(
            _session_processes(ray._private.worker.global_worker.node.get_session_dir_path())
        )
        stop_ray()

    monkeypatch.setattr(localray, "stop_ray", stop_and_record)
    monkeypatch.setattr(session, "_open_session", None)  # no session open: a one-run session
    with pytest.raises(ConfigError, match="nowhere"):
        run(cfg)
    assert not (tmp_path / "run").exists()
    assert not ray.is_initialized()
    assert seen, "the engine should have started Ray before the data check, and stopped it"
    left = _left_after(seen)
    assert not left, f"processes left after the error: {left}"


@pytest.mark.parametrize("inline_bytes", [4194304, pytest.param(None, marks=pytest.mark.slow)])
def test_lean_ray_keeps_the_inline_results_setting(inline_bytes: int | None) -> None:
    """``engine.inline_bytes`` reaches a lean Ray: 1 MB results skip the object store."""
    import numpy as np
    import ray
    from ray._private.internal_api import memory_summary

    session_dir = ""
    try:
        assert start_ray(
            {"num_cpus": 1, "lean_ray": True, "inline_bytes": inline_bytes}, verbose=False
        )
        session_dir = ray._private.worker.global_worker.node.get_session_dir_path()

        @ray.remote
        def megabyte() -> np.ndarray:
            return np.ones(125_000)

        refs = [megabyte.remote() for _ in range(5)]
        assert all(len(a) == 125_000 for a in ray.get(refs))
        gcs = ray._private.worker.global_worker.node.gcs_address  # not "auto": other Rays may run
        summary = memory_summary(address=gcs, stats_only=True)
        stats = [x for x in summary.splitlines() if "Plasma memory" in x]
        assert stats and (" 0 objects" in stats[0]) is (inline_bytes is not None), stats
    finally:
        if session_dir:
            assert not _stopped(session_dir)
        else:
            stop_ray()


def _ray_children() -> list[psutil.Process]:
    """This process's Ray daemons (GCS, raylet, their agents and workers)."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if any(m in _cmd(p) for m in ("gcs_server", "raylet", "stub_agent", "ray::", "agent"))
    ]


@pytest.mark.parametrize("failure", ["raises", pytest.param("times out", marks=pytest.mark.slow)])
def test_a_failed_lean_start_falls_back_to_ray_init_with_one_warning(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lean start fails (an error, or a raylet that does not register within the bound):
    one warning, the lean node's processes are stopped, and ``ray.init`` starts a Ray that runs
    tasks (with the helpers only ``ray.init`` starts)."""
    import ray

    from fedsim.engine import localray

    lean_processes: list[psutil.Process] = []
    lean_commands: list[str] = []
    if failure == "raises":

        def broken(args: object, *, stub_agents: bool) -> None:
            raise RuntimeError("no lean node today")

        monkeypatch.setattr(localray, "_start_lean", broken)
    else:

        def never_registers(gcs_address: str, node_id: str, *, timeout: float) -> bool:
            assert timeout == 0.2  # the bound
            lean_processes.extend(_ray_children())
            lean_commands.extend(_cmd(p) for p in lean_processes)
            return False

        monkeypatch.setattr(localray, "LEAN_START_TIMEOUT_S", 0.2)
        monkeypatch.setattr(localray, "_await_raylet", never_registers)
    with caplog.at_level("WARNING", logger="fedsim"):
        session_dir = _start(True, True)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.name == "fedsim"]
        assert len(warnings) == 1 and "lean Ray start failed" in warnings[0], warnings
        if failure == "times out":
            assert "did not register within 0.2 s" in warnings[0]
            assert any("raylet_socket" in c for c in lean_commands), lean_commands
            assert not _left_after(lean_processes), "the lean node outlived its timeout"
        running = _commands(_session_processes(session_dir))
        assert any(HELPERS["log monitor"] in c for c in running)  # ray.init's Ray

        @ray.remote
        def twice(x: int) -> int:
            return 2 * x

        assert ray.get(twice.remote(21)) == 42
    finally:
        assert not _stopped(session_dir)


@pytest.mark.slow  # 18 s (make test-all)
def test_a_local_start_ignores_a_dead_recorded_cluster_and_ray_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's record of a cluster that died without ``ray stop`` (``ray_current_cluster``), and
    ``RAY_ADDRESS``, do not stop a run without ``engine.ray_address`` from starting its own
    Ray (``ray.init()`` with no address joins the recorded cluster and fails)."""
    import socket
    import tempfile

    import ray

    with socket.socket() as s:  # a port nobody listens on: the dead cluster's
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    temp = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # short: Ray's socket paths live in it
    Path(temp, "ray").mkdir()
    Path(temp, "ray", "ray_current_cluster").write_text(dead)
    monkeypatch.setenv("RAY_TMPDIR", temp)
    for lean in (False, True):
        for address in (None, dead):
            if address is None:
                monkeypatch.delenv("RAY_ADDRESS", raising=False)
            else:
                monkeypatch.setenv("RAY_ADDRESS", address)
            session_dir = _start(lean)
            try:
                assert session_dir.startswith(temp)
                assert ray.get_runtime_context().gcs_address != dead
                assert ray.cluster_resources()["CPU"] == 1
            finally:
                assert not _stopped(session_dir)
