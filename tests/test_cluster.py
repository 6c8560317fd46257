"""Both engines on a joined two-node Ray cluster (``engine.ray_address``): the clients' actors run
on both nodes and the metrics equal a local run's.

The cluster is two ``ray start`` nodes of one CPU each on this machine, with their own temp dir
and free ports (other Ray instances may run here at the same time), stopped by signalling the
processes the test started (``ray stop`` would stop every Ray of the user on the machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.engine import EngineSession
from fedsim.outputs import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_engine_session")]

RAY = str(Path(sys.executable).with_name("ray"))
TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}
RUN = ["progress=false", "rounds=2", "num_clients=6", "clients_per_round=4", "checkpoint_every=0"]
#: The Ray actor class that hosts the clients, per engine.
ACTOR_CLASS = {"fast": "ClientWorker", "flower": "ClientAppActor"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _started_by(temp: str, port: int) -> list[psutil.Process]:
    """The live processes whose command line names ``temp`` or the GCS ``port`` (the head's
    client server names only the port), with their descendants (the workers)."""
    mark = re.compile(rf"{re.escape(temp)}|:{port}(?!\d)")
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if mark.search(cmd):
            found[proc.pid] = proc
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update({c.pid: c for c in proc.children(recursive=True)})
    return [p for p in found.values() if p.pid != os.getpid()]


def _stop(temp: str, port: int) -> list[str]:
    """Stop the cluster's processes (SIGTERM, then SIGKILL after 10 s); those left running."""
    procs = _started_by(temp, port)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    _, alive = psutil.wait_procs(alive, timeout=10)
    return [" ".join(p.cmdline())[:200] for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A head and a worker node, one CPU each, on this machine; yields the head's address."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live in it
    gcs, client, dashboard, *node_ports = _free_ports(11)
    address = f"127.0.0.1:{gcs}"
    env = {**os.environ, "RAY_TMPDIR": temp}  # Ray's record of the cluster stays in there
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]

    def node_ports_args(i: int) -> list[str]:
        a, b, c, d = node_ports[4 * i : 4 * i + 4]
        return [
            f"--dashboard-agent-listen-port={a}",
            f"--dashboard-agent-grpc-port={b}",
            f"--metrics-export-port={c}",
            f"--runtime-env-agent-port={d}",
        ]

    head = [
        RAY,
        "start",
        "--head",
        f"--port={gcs}",
        f"--ray-client-server-port={client}",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=false",
        f"--temp-dir={temp}/ray",
        *common,
        *node_ports_args(0),
    ]
    worker = [RAY, "start", f"--address={address}", *common, *node_ports_args(1)]
    try:
        for cmd in (head, worker):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield address
    finally:
        left = _stop(temp, gcs)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"cluster processes left: {left}"


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def _actor_nodes(address: str, class_name: str) -> set[str]:
    """The node ids of the cluster's actors of ``class_name`` (alive or ended), from the GCS's
    actor table (without the dashboard, which serves Ray's public state API)."""
    import ray
    from ray._private import state

    if not ray.is_initialized():  # Flower's backend shuts Ray down as its run ends
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        table = state.actors()
        return {a["Address"]["NodeID"] for a in table.values() if a["ActorClassName"] == class_name}
    finally:
        ray.shutdown()


def _alive_nodes(address: str) -> set[str]:
    import ray

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()


def test_both_engines_run_on_a_two_node_cluster_like_a_local_ray(
    two_nodes: str, tmp_path: Path
) -> None:
    nodes = _alive_nodes(two_nodes)
    assert len(nodes) == 2
    local = compose([*RUN, "engine=fast"])
    local.output_dir = str(tmp_path / "local")
    with EngineSession(local.engine) as s:
        s.run(local)
    expected = _metrics(tmp_path / "local")
    assert len(expected) == 2
    for engine in ("fast", "flower"):
        cfg = compose([*RUN, f"engine={engine}", f"engine.ray_address={two_nodes}"])
        cfg.output_dir = str(tmp_path / engine)
        started = time.monotonic()
        with EngineSession(cfg.engine) as s:
            s.run(cfg)
        print(f"engine={engine} on the cluster: {time.monotonic() - started:.1f} s")
        assert _actor_nodes(two_nodes, ACTOR_CLASS[engine]) == nodes, engine
        assert _metrics(tmp_path / engine) == expected, engine
