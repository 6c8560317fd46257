"""fedsim's stand-in for Ray's node agents (``engine.lean_agents``): the command lines it gets,
the port files it writes, and that it lives exactly as long as its parent's pipe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.engine import stub_agent
from fedsim.engine.localray import stub_agent_commands

NODE = "ab" * 28


def _raylet_command(session_dir: str, *, runtime_port: int = 0) -> list[str]:
    """A raylet command line shaped like Ray 2.55's (``services.start_raylet``): the agents'
    command lines are single options, quoted by ``subprocess.list2cmdline``."""
    dashboard = [
        sys.executable,
        "-u",
        "/site/ray/dashboard/agent.py",
        f"--node-id={NODE}",
        "--node-ip-address=127.0.0.1",
        f"--session-dir={session_dir}",
        "--logging-format=%(asctime)s\t%(levelname)s (dashboard_agent) %(message)s",
        "--minimal",
    ]
    runtime = [
        sys.executable,
        "-u",
        "/site/ray/_private/runtime_env/agent/main.py",
        f"--node-id={NODE}",
        "--node-ip-address=127.0.0.1",
        f"--runtime-env-agent-port={runtime_port}",
        f"--session-dir={session_dir}",
    ]
    return [
        "/site/ray/core/src/ray/raylet/raylet",
        "--raylet_socket_name=/tmp/raylet",
        f"--dashboard_agent_command={subprocess.list2cmdline(dashboard)}",
        f"--runtime_env_agent_command={subprocess.list2cmdline(runtime)}",
        "--head",
    ]


def test_agent_options_and_ports_to_write() -> None:
    argv = ["-u", "--node-id=n1", "--minimal", "--logging-format=a=b c", "--session-dir=/s"]
    assert stub_agent.agent_options(argv) == {
        "node-id": "n1",
        "logging-format": "a=b c",
        "session-dir": "/s",
    }
    assert stub_agent.ports_to_write({"node-id": "n1"}) == {
        "metrics_agent_port": -1,
        "metrics_export_port": -1,
        "dashboard_agent_listen_port": -1,
    }
    ports = stub_agent.ports_to_write({"runtime-env-agent-port": "0"})
    assert list(ports) == ["runtime_env_agent_port"] and ports["runtime_env_agent_port"] > 0
    with socket.socket() as taken:  # a fixed port is kept when it is free
        taken.bind(("127.0.0.1", 0))
        wanted = taken.getsockname()[1]
    ports = stub_agent.ports_to_write(
        {"runtime-env-agent-port": str(wanted), "node-ip-address": "127.0.0.1"}
    )
    assert ports == {"runtime_env_agent_port": wanted}


def test_stub_agent_commands_replace_both_agents_and_keep_the_rest(tmp_path: Path) -> None:
    session = str(tmp_path / "a session dir")  # a space: the quoting must survive
    command = _raylet_command(session, runtime_port=4242)
    out = stub_agent_commands(command)
    assert out[0] == command[0] and out[1] == command[1] and out[-1] == "--head"
    import shlex

    stub = os.path.abspath(stub_agent.__file__)
    dash = shlex.split(out[2].split("=", 1)[1])
    runtime = shlex.split(out[3].split("=", 1)[1])
    assert dash == [
        sys.executable,
        "-S",
        stub,
        f"--session-dir={session}",
        f"--node-id={NODE}",
        "--node-ip-address=127.0.0.1",
    ]
    assert runtime == dash + ["--runtime-env-agent-port=4242"]
    assert out[2].startswith("--dashboard_agent_command=")
    assert out[3].startswith("--runtime_env_agent_command=")


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("--runtime_env_agent_command=", "has 0 --runtime_env_agent_command options"),
        ("--node-id=", "lacks ['node-id']"),
    ],
)
def test_stub_agent_commands_refuse_an_unknown_command_line(drop: str, message: str) -> None:
    command = _raylet_command("/s")
    if drop.startswith("--runtime"):
        command = [c for c in command if not c.startswith(drop)]
    else:
        command[2] = command[2].replace(f"{drop}{NODE}", "")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        stub_agent_commands(command)


def _run_stub(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-S", stub_agent.__file__, *args],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_the_stub_writes_its_ports_and_exits_when_its_parent_pipe_closes(tmp_path: Path) -> None:
    runtime = _run_stub(
        [f"--session-dir={tmp_path}", f"--node-id={NODE}", "--runtime-env-agent-port=0"]
    )
    dash = _run_stub([f"--session-dir={tmp_path}", f"--node-id={NODE}", "--minimal"])
    files = {
        "runtime_env_agent_port",
        "metrics_agent_port",
        "metrics_export_port",
        "dashboard_agent_listen_port",
    }
    paths = {name: tmp_path / f"{name}_{NODE}" for name in files}
    import time

    deadline = time.monotonic() + 20
    while not all(p.exists() for p in paths.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in paths.values()}
    assert int(paths["runtime_env_agent_port"].read_text()) > 0
    for name in files - {"runtime_env_agent_port"}:
        assert paths[name].read_text() == "-1"
    # the agents stay up while the raylet (here: this test) holds their stdin open
    assert runtime.poll() is None and dash.poll() is None
    for proc in (runtime, dash):
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0


def test_the_stub_refuses_a_command_line_without_its_session() -> None:
    proc = _run_stub(["--node-id=n1"])
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert b"missing --session-dir=" in err


def test_the_raylet_start_gets_the_stubs_and_other_processes_do_not(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Inside ``_stubbed_agents``, Ray's process starter rewrites the raylet's command only; a
    raylet command it cannot read starts unchanged (Ray's own agents), with a warning."""
    from ray._private import services

    from fedsim.engine.localray import _stubbed_agents

    started: list[tuple[list[str], str]] = []

    def fake_start(command: list[str], process_type: str, **kw: object) -> None:
        started.append((command, process_type))

    monkeypatch.setattr(services, "start_ray_process", fake_start)
    raylet = _raylet_command("/s")
    with _stubbed_agents():
        services.start_ray_process(raylet, "raylet")
        services.start_ray_process(["gcs_server", "--x=1"], "gcs_server")
        services.start_ray_process(["raylet", "--head"], "raylet")
    assert services.start_ray_process is fake_start  # restored
    assert started[0] == (stub_agent_commands(raylet), "raylet")
    assert started[1:] == [
        (["gcs_server", "--x=1"], "gcs_server"),
        (["raylet", "--head"], "raylet"),
    ]
    assert "Ray's own agents start" in caplog.text


@pytest.mark.parametrize("pidfd", [True, False])
def test_without_a_pipe_the_stub_exits_with_its_parent(tmp_path: Path, pidfd: bool) -> None:
    """With stdin not a pipe, the stub waits on its parent process itself (by pidfd, or by
    looking now and then where there is none) and exits once the parent is gone."""
    import psutil

    parent_code = (
        "import subprocess, sys\n"
        "stub = subprocess.Popen([sys.executable, '-S', '-c', sys.argv[1], *sys.argv[2:]],\n"
        "                        stdin=subprocess.DEVNULL)\n"
        "print(stub.pid, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    # the stub, with os.pidfd_open removed when pidfd is False
    stub_code = (
        "import os, runpy, sys\n"
        + ("" if pidfd else "del os.pidfd_open\n")
        + f"sys.argv = [{stub_agent.__file__!r}, *sys.argv[1:]]\n"
        + f"runpy.run_path({stub_agent.__file__!r}, run_name='__main__')\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, stub_code, f"--session-dir={tmp_path}", "--node-id=n"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    stub = psutil.Process(int(parent.stdout.readline()))
    import time

    deadline = time.monotonic() + 20
    while not (tmp_path / "metrics_agent_port_n").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "metrics_agent_port_n").read_text() == "-1"
    assert stub.is_running() and stub.status() != psutil.STATUS_ZOMBIE  # waits on its parent
    parent.kill()
    parent.wait(timeout=20)
    try:
        stub.wait(timeout=20)  # raises psutil.TimeoutExpired if the stub outlives its parent
    finally:
        if stub.is_running():
            stub.kill()
