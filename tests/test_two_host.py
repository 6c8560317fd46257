"""Deployment on two hosts: the README's "On two (or more) machines" steps, run literally.

Two Linux network namespaces joined by a veth pair stand for the server host and a client host;
each has its own loopback, ports and (through ``/etc/netns/NAME/hosts``) its own host names. The
server runs the SuperLink (TLS, SuperNode authentication, state database, Control API on its
loopback), the client host runs two SuperNodes through ``fedsim doctor --start``. Checked:

- a 2-round run submitted on the server has the metrics of the same config simulated;
- only the Fleet API listens on the network; from the client host, registering a key or
  submitting a run is refused (connection refused), and a keyless node cannot self-register;
- a node with an unregistered key, one that does not trust the CA and one that dials a name not
  in the certificate each get one line from ``fedsim doctor`` and do not join;
- a SuperLink restart with ``--database`` keeps the registrations, and the nodes come back;
- a SuperNode killed mid-run and restarted rejoins: the round it missed counts the failure, the
  run goes on and completes, and the last round has both clients again.

Needs root (``ip netns``), iproute2, openssl and ssh-keygen; skipped with the reason otherwise.
Everything it creates (namespaces, processes, /etc/netns entries, temp dirs) is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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
RUN = ["num_clients=2", "clients_per_round=2", "rounds=2", "progress=false"]


def _wait(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class TwoHosts:
    """A server namespace and a client namespace on a private /30, and the processes in them."""

    def __init__(self, root: Path) -> None:
        tag = f"fs{os.getpid() % 100000}"
        self.server_ns, self.client_ns = f"{tag}srv", f"{tag}cli"
        self.veth = (f"{tag}vs", f"{tag}vc")
        pid = os.getpid()
        base = 4 * ((pid // 250) % 63)
        self.server_ip = f"10.213.{pid % 250}.{base + 1}"
        self.client_ip = f"10.213.{pid % 250}.{base + 2}"
        self.root = root
        self.server, self.client = root / "server", root / "client"
        self.certs = self.server / "fedsim" / "certs"  # the README's ~/.fedsim/certs
        self.procs: dict[str, subprocess.Popen] = {}
        self.made: list[str] = []

    # ---- the network --------------------------------------------------------------------
    def create(self) -> None:
        """Make the namespaces, the veth pair, the addresses and the client's host names."""
        steps = [
            ["ip", "netns", "add", self.server_ns],
            ["ip", "netns", "add", self.client_ns],
            ["ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1]],
            ["ip", "link", "set", self.veth[0], "netns", self.server_ns],
            ["ip", "link", "set", self.veth[1], "netns", self.client_ns],
            [
                "ip",
                "-n",
                self.server_ns,
                "addr",
                "add",
                f"{self.server_ip}/30",
                "dev",
                self.veth[0],
            ],
            [
                "ip",
                "-n",
                self.client_ns,
                "addr",
                "add",
                f"{self.client_ip}/30",
                "dev",
                self.veth[1],
            ],
        ]
        for ns, dev in ((self.server_ns, self.veth[0]), (self.client_ns, self.veth[1])):
            steps += [["ip", "-n", ns, "link", "set", "lo", "up"]]
            steps += [["ip", "-n", ns, "link", "set", dev, "up"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                raise OSError(f"{' '.join(step)}: {done.stderr.strip()}")
            if step[:3] == ["ip", "netns", "add"]:
                self.made.append(step[3])
        hosts = Path("/etc/netns") / self.client_ns
        hosts.mkdir(parents=True)
        (hosts / "hosts").write_text(
            f"127.0.0.1 localhost\n{self.server_ip} server.lab\n{self.server_ip} wrong.lab\n"
        )
        for home in (self.server, self.client):
            (home / "flwr_home").mkdir(parents=True)

    def destroy(self) -> None:
        """Stop every process in the namespaces, then remove them and the host names."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for ns in self.made:  # what escaped the process groups (flower-superexec, ...)
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in out.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / self.client_ns, ignore_errors=True)

    # ---- commands -----------------------------------------------------------------------
    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(home / "flwr_home")
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        return env

    def _where(self, host: str) -> tuple[str, Path]:
        return (self.server_ns, self.server) if host == "server" else (self.client_ns, self.client)

    def run(self, host: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``cmd`` on ``host`` ("server" or "client") to completion."""
        ns, home = self._where(host)
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            cwd=home,
            env=self.env(home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, host: str, name: str, *cmd: str) -> subprocess.Popen:
        """Start ``cmd`` on ``host`` in its own session, logging to ``ROOT/NAME.log``."""
        ns, home = self._where(host)
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (kept open for the process)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            cwd=home,
            env=self.env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def connects(self, host: str, ip: str, port: int) -> bool:
        """Whether a TCP connection from ``host`` to ``ip:port`` is accepted."""
        probe = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=5).close()"
        return self.run(host, sys.executable, "-c", probe).returncode == 0

    # ---- the README's steps ---------------------------------------------------------------
    def superlink(self) -> None:
        """README step 1 (second half): the SuperLink, with the Control API on loopback."""
        c = self.certs
        self.start(
            "server",
            "superlink",
            "flower-superlink",
            *("--ssl-ca-certfile", f"{c}/ca.crt", "--ssl-certfile", f"{c}/server.crt"),
            *("--ssl-keyfile", f"{c}/server.key", "--enable-supernode-auth"),
            "--disable-runtime-dependency-installation",
            *("--database", f"{self.server}/fedsim/superlink.db"),
            *("--fleet-api-address", "0.0.0.0:9092", "--host", "127.0.0.1", "--port", "8000"),
        )
        _wait(lambda: self.connects("server", "127.0.0.1", 8000), 60, "the Control API")
        _wait(lambda: self.connects("server", "127.0.0.1", 9092), 60, "the Fleet API")

    def node_command(self, k: int, key: str, ca: str, name: str = "server.lab") -> list[str]:
        """README step 3: a SuperNode started through ``fedsim doctor --start``."""
        return [
            str(BIN / "fedsim"),
            "doctor",
            *("--superlink", f"{name}:9092", "--root-certificates", ca),
            *("--auth-supernode-private-key", key, "--start"),
            *("--node-config", f"partition-id={k} num-partitions=2", "--port", str(9094 + k)),
        ]

    def flwr(self, host: str, *args: str) -> subprocess.CompletedProcess:
        return self.run(host, str(BIN / "flwr"), *args)

    def nodes(self) -> list[dict]:
        out = self.flwr("server", "supernode", "list", "lab", "--format", "json")
        return list(json.loads(out.stdout[out.stdout.find("{") :]).get("nodes", []))

    def online(self) -> int:
        return sum(1 for n in self.nodes() if n.get("status") == "online")

    def submit(
        self, host: str, *overrides: str, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """README step 4: ``fedsim submit lab ...`` from the fedsim checkout."""
        return self.run(
            host, str(BIN / "fedsim"), "submit", "--app", str(REPO), "lab", *overrides,
            timeout=timeout,
        )  # fmt: skip

    def up(self) -> None:
        """Every step of the README's "On two (or more) machines", in order."""
        make_certs = str(REPO / "scripts/make_certs.sh")
        done = self.run("server", make_certs, str(self.certs), "2", "server.lab", self.server_ip)
        assert done.returncode == 0, done.stderr
        self.superlink()
        (self.server / "flwr_home" / "config.toml").write_text(
            '[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "127.0.0.1:8000"\n'
            f'root-certificates = "{self.certs}/ca.crt"\n'
        )
        for k in range(2):
            done = self.flwr("server", "supernode", "register", f"{self.certs}/node_{k}.pub", "lab")
            assert done.returncode == 0, done.stdout + done.stderr
        for name in ("ca.crt", "node_0", "node_1"):  # what the client host is given (scp -p)
            shutil.copy2(self.certs / name, self.client / name)
        for k in range(2):
            self.start("client", f"node{k}", *self.node_command(k, f"node_{k}", "ca.crt"))
        _wait(lambda: self.online() == 2, 90, "2 SuperNodes online")


@pytest.fixture(scope="module")
def hosts() -> Iterator[TwoHosts]:
    for tool in ("ip", "openssl", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the two-host test needs iproute2, openssl, ssh-keygen")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces (ip netns add) needs root")
    root = Path(tempfile.mkdtemp(prefix="fedsim-two-host-"))
    h = TwoHosts(root)
    try:
        try:
            h.create()
        except OSError as e:
            pytest.skip(f"cannot create network namespaces here: {e}")
        h.up()
        yield h
    finally:
        h.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def test_only_the_fleet_api_is_on_the_network(hosts: TwoHosts) -> None:
    for ns in (hosts.server_ns, hosts.client_ns):
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH"], capture_output=True)
        local = [line.split()[3] for line in out.stdout.decode().splitlines()]
        exposed = [a for a in local if not a.startswith(("127.0.0.1:", "[::1]:"))]
        assert exposed == (["*:9092"] if ns == hosts.server_ns else []), local
    assert hosts.connects("client", hosts.server_ip, 9092)
    assert not hosts.connects("client", hosts.server_ip, 8000)
    for key in ("ca.key", "server.key", "node_0", "node_1"):
        assert (hosts.certs / key).stat().st_mode & 0o777 == 0o600, key
    assert (hosts.certs.stat().st_mode & 0o777) == 0o700


def test_run_on_two_hosts_matches_the_simulation(hosts: TwoHosts) -> None:
    out = hosts.root / "deployed"
    done = hosts.submit("server", *RUN, f"output_dir={out}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fedsim submit: preflight ok: 2 SuperNodes online" in done.stdout
    assert "finished:completed" in done.stdout
    metrics = read_metrics(out)
    assert [r[C.ROUND] for r in metrics] == [1, 2]
    assert all(r[C.FAILURES] == 0 for r in metrics)
    cfg = compose(RUN)
    cfg.output_dir = str(hosts.root / "simulated")
    run(cfg)
    assert _comparable(out) == _comparable(hosts.root / "simulated")


def test_the_client_host_cannot_register_keys_or_submit_runs(hosts: TwoHosts) -> None:
    hosts.run("server", str(REPO / "scripts/make_certs.sh"), str(hosts.certs), "3")  # node_2
    shutil.copy2(hosts.certs / "node_2.pub", hosts.client / "node_2.pub")
    (hosts.client / "flwr_home" / "config.toml").write_text(
        '[superlink]\ndefault = "lab"\n\n[superlink.lab]\n'
        f'address = "{hosts.server_ip}:8000"\nroot-certificates = "{hosts.client}/ca.crt"\n'
    )
    runs_before = hosts.flwr("server", "list", "lab", "--format", "json").stdout.count('"run-id"')
    reg = hosts.flwr("client", "supernode", "register", "node_2.pub", "lab")
    assert reg.returncode != 0 and "unavailable" in reg.stdout + reg.stderr
    sub = hosts.submit("client", *RUN, timeout=120)
    assert sub.returncode == 1
    assert sub.stderr.strip().splitlines() == [
        f"fedsim submit: SuperLink unreachable: connection refused on {hosts.server_ip}:8000 "
        "(nothing listens there to this host: is the SuperLink running, on this port, bound to "
        "a reachable address?)"
    ]
    raw = hosts.flwr("client", "run", str(REPO), "lab", "--run-config", 'overrides="rounds=1"')
    assert raw.returncode != 0, raw.stdout
    # A SuperNode without a key would self-register over the Fleet API: refused as well.
    keyless = hosts.start(
        "client", "keyless", "flower-supernode", "--superlink", "server.lab:9092",
        "--root-certificates", "ca.crt", "--port", "9096", "--max-retries", "1",
    )  # fmt: skip
    assert keyless.wait(timeout=120) != 0
    assert len(hosts.nodes()) == 2 and hosts.online() == 2
    runs_after = hosts.flwr("server", "list", "lab", "--format", "json").stdout.count('"run-id"')
    assert runs_after == runs_before


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unregistered key", "fedsim doctor: key not registered: the SuperLink refused"),
        ("untrusted CA", "fedsim doctor: CA not trusted: the SuperLink's certificate at"),
        ("wrong name", "fedsim doctor: name not in the certificate: the SuperLink's certificate"),
    ],
)
def test_a_node_that_cannot_join_is_told_why_in_one_line(
    hosts: TwoHosts, case: str, expected: str
) -> None:
    other = hosts.client / "other_ca"
    if not other.exists():
        hosts.run("client", str(REPO / "scripts/make_certs.sh"), str(other), "0")
        hosts.run("server", str(REPO / "scripts/make_certs.sh"), str(hosts.certs), "3")
        shutil.copy2(hosts.certs / "node_2", hosts.client / "node_2")
    key, ca, name = {
        "unregistered key": ("node_2", "ca.crt", "server.lab"),
        "untrusted CA": ("node_0", f"{other}/ca.crt", "server.lab"),
        "wrong name": ("node_0", "ca.crt", "wrong.lab"),
    }[case]
    done = hosts.run("client", *hosts.node_command(1, key, ca, name))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(expected), line
    assert "starting" not in done.stdout  # flower-supernode was never started
    assert len(hosts.nodes()) == 2 and hosts.online() == 2
    if case == "wrong name":  # flower-supernode itself, with bounded retries, gives up too
        t0 = time.monotonic()
        plain = hosts.start(  # a log file, not a pipe: its flower-superexec would hold that open
            "client", "plain-wrong-name", "flower-supernode", "--superlink", "wrong.lab:9092",
            "--root-certificates", "ca.crt", "--auth-supernode-private-key", "node_0",
            "--port", "9097", "--max-retries", "2", "--max-wait-time", "20",
        )  # fmt: skip
        assert plain.wait(timeout=60) != 0 and time.monotonic() - t0 < 60
        assert "Hostname Verification Check failed" in hosts.log("plain-wrong-name")


def test_a_superlink_restart_keeps_the_registrations(hosts: TwoHosts) -> None:
    before = sorted(n["node-id"] for n in hosts.nodes())
    hosts.stop("superlink")
    _wait(lambda: not hosts.connects("server", "127.0.0.1", 9092), 30, "the SuperLink to stop")
    hosts.superlink()
    assert sorted(n["node-id"] for n in hosts.nodes()) == before
    again = hosts.flwr("server", "supernode", "register", f"{hosts.certs}/node_0.pub", "lab")
    assert again.returncode != 0 and "Public key already in use" in again.stdout + again.stderr
    _wait(lambda: hosts.online() == 2, 120, "both SuperNodes back online")


def test_a_killed_supernode_rejoins_and_the_run_completes(hosts: TwoHosts) -> None:
    out = hosts.root / "killed"
    result: dict = {}
    overrides = [*RUN[:2], "rounds=4", "round_timeout=150", "progress=false", f"output_dir={out}"]
    worker = threading.Thread(target=lambda: result.update(done=hosts.submit("server", *overrides)))
    worker.start()
    _wait(lambda: len(read_metrics(out)) >= 1, 300, "round 1")
    hosts.stop("node1", signal.SIGKILL)  # no shutdown: the SuperLink learns it from heartbeats
    doctor = hosts.node_command(1, "node_1", "ca.crt")
    check = doctor[: doctor.index("--start")]
    _wait(lambda: hosts.run("client", *check).returncode == 0, 150, "node_1's key free", poll=1.0)
    hosts.start("client", "node1-again", *doctor)
    worker.join(timeout=600)
    done = result["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(out)
    assert [r[C.ROUND] for r in metrics] == [1, 2, 3, 4]
    assert metrics[0][C.FAILURES] == 0
    assert [f["client"] for f in metrics[1][C.FAILED_CLIENTS]] == [1]  # the reply it never sent
    assert all(f["client"] == 1 for r in metrics for f in r[C.FAILED_CLIENTS])
    assert metrics[-1][C.FAILURES] == 0 and metrics[-1][C.CLIENTS_SAMPLED] == [0, 1]
