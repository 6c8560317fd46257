"""Deployment end to end: a SuperLink and SuperNodes on localhost over gRPC with TLS and SuperNode
authentication, `fedsim submit` (flwr run + status check), refused nodes, failed runs, a node
killed mid-run, and scripts/deploy_local.sh itself. Slow: each run spawns ClientApp processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.outputs import read_metrics
from fedsim.runner import run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}


def _free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


class Federation:
    """A SuperLink with TLS + node auth, and registered SuperNodes, in their own sessions."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = dict(os.environ)
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["FLWR_HOME"] = str(tmp / "flwr_home")
        self.env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        self.certs = tmp / "certs"
        self.fleet, self.control, *self.node_ports = _free_ports(7)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 (kept open for the process)
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def supernode(self, name: str, k: int, key: Path, ca: Path, port: int) -> subprocess.Popen:
        return self.start(
            name,
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{self.fleet}",
                "--root-certificates",
                str(ca),
                "--auth-supernode-private-key",
                str(key),
                "--node-config",
                f"partition-id={k} num-partitions=2",
                "--port",
                str(port),
                "--max-retries",
                "2",
                "--max-wait-time",
                "20",
            ],
        )

    def up(self) -> None:
        subprocess.run([str(REPO / "scripts/make_certs.sh"), str(self.certs), "3"], check=True)
        Path(self.env["FLWR_HOME"]).mkdir()
        (Path(self.env["FLWR_HOME"]) / "config.toml").write_text(
            '[superlink]\ndefault = "t"\n\n[superlink.t]\n'
            f'address = "127.0.0.1:{self.control}"\nroot-certificates = "{self.certs}/ca.crt"\n'
        )
        self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-certfile",
                str(self.certs / "server.crt"),
                "--ssl-keyfile",
                str(self.certs / "server.key"),
                "--ssl-ca-certfile",
                str(self.certs / "ca.crt"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--database",  # registrations and runs persist, as the README's deployment does
                str(self.tmp / "superlink.db"),
                "--fleet-api-address",
                f"127.0.0.1:{self.fleet}",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.control),
            ],
        )
        _wait_port(self.control)
        _wait_port(self.fleet)
        for k in range(2):  # node_2's key is made but never registered
            done = self.flwr("supernode", "register", str(self.certs / f"node_{k}.pub"), "t")
            assert done.returncode == 0, done.stdout + done.stderr
            self.supernode(
                f"node{k}", k, self.certs / f"node_{k}", self.certs / "ca.crt", self.node_ports[k]
            )
        deadline = time.monotonic() + 60
        while self.online() < 2:
            assert time.monotonic() < deadline, self.log("node0") + self.log("node1")
            time.sleep(0.5)

    def online(self) -> int:
        out = self.flwr("supernode", "list", "t", "--format", "json")
        nodes = json.loads(out.stdout[out.stdout.find("{") :]).get("nodes", [])
        return sum(1 for n in nodes if n.get("status") == "online")

    def submit(self, *overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "fedsim"), "submit", "--app", str(REPO), "t", *overrides],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def down(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(1)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssl and ssh-keygen are needed to make certificates and node keys")
    f = Federation(tmp_path_factory.mktemp("deploy"))
    try:
        f.up()
        yield f
    finally:
        f.down()


def _comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def test_two_rounds_over_tls_with_node_auth_match_the_simulation(
    fed: Federation, tmp_path: Path
) -> None:
    pyproject = (REPO / "pyproject.toml").read_bytes()
    out = tmp_path / "deployed"
    done = fed.submit("num_clients=2", "clients_per_round=2", "rounds=2", f"output_dir={out}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:completed" in done.stdout
    metrics = read_metrics(out)
    assert [r[C.ROUND] for r in metrics] == [1, 2]
    assert all(0 < r[C.EVAL_ACCURACY] <= 1 and r[C.FAILURES] == 0 for r in metrics)
    assert (out / C.SUMMARY_FILE).exists() and (out / C.CONFIG_FILE).exists()
    assert (REPO / "pyproject.toml").read_bytes() == pyproject  # flwr run left it alone
    # The same apps, simulated, give the same numbers.
    cfg = compose(["num_clients=2", "clients_per_round=2", "rounds=2", "progress=false"])
    cfg.output_dir = str(tmp_path / "simulated")
    run(cfg)
    assert _comparable(out) == _comparable(tmp_path / "simulated")


def test_unregistered_node_key_is_refused(fed: Federation) -> None:
    proc = fed.supernode(
        "intruder", 1, fed.certs / "node_2", fed.certs / "ca.crt", fed.node_ports[2]
    )
    assert proc.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in fed.log("intruder")
    assert fed.online() == 2


def test_node_that_does_not_trust_the_ca_cannot_connect(fed: Federation, tmp_path: Path) -> None:
    other = tmp_path / "other_ca"
    subprocess.run([str(REPO / "scripts/make_certs.sh"), str(other), "0"], check=True)
    proc = fed.supernode("untrusting", 0, fed.certs / "node_0", other / "ca.crt", fed.node_ports[3])
    assert proc.wait(timeout=120) != 0
    assert fed.online() == 2


def test_failed_run_gives_a_nonzero_exit_status(fed: Federation, tmp_path: Path) -> None:
    out = tmp_path / "failing"
    done = fed.submit(
        "num_clients=2",
        "clients_per_round=2",
        "rounds=2",
        "too_few_replies=stop",
        "faults.raise_clients=[0,1]",
        f"output_dir={out}",
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:failed" in done.stderr
    assert "round 1: 0 of 2 sampled clients replied usably" in (out / C.STOPPED_FILE).read_text()


def test_supernode_killed_mid_run_times_out_and_the_run_goes_on(
    fed: Federation, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    result: dict = {}
    overrides = ["num_clients=2", "clients_per_round=2", "rounds=2", "round_timeout=90"]
    worker = threading.Thread(
        target=lambda: result.update(done=fed.submit(*overrides, f"output_dir={out}"))
    )
    worker.start()
    deadline = time.monotonic() + 300
    while not read_metrics(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(fed.procs["node1"].pid, signal.SIGKILL)  # partition 1's SuperNode dies after round 1
    worker.join(timeout=600)
    done = result["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(out)
    assert [r[C.ROUND] for r in metrics] == [1, 2]
    assert metrics[0][C.FAILURES] == 0
    # Either no reply within round_timeout, or the SuperLink's "Node Unavailable" error reply.
    failed = metrics[1][C.FAILED_CLIENTS]
    assert [f["client"] for f in failed] == [1], failed


def test_deploy_local_script_runs_the_default_experiment(tmp_path: Path) -> None:
    fleet, control, node = _free_ports(3)
    env = dict(os.environ, DEPLOY_DIR=str(tmp_path / "d"), FLEET_PORT=str(fleet))
    env.update(CONTROL_PORT=str(control), NODE_PORT=str(node))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [str(REPO / "scripts/deploy_local.sh"), "2", "rounds=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "d" / "runs").iterdir()
    assert [r[C.ROUND] for r in read_metrics(run_dir)] == [1, 2]
    bad = subprocess.run(
        [str(REPO / "scripts/deploy_local.sh"), "two"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "N='two' is not a positive integer" in bad.stderr
