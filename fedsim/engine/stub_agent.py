"""A stand-in for the two Python agents that Ray's raylet starts (``engine.lean_agents``).

The raylet of Ray 2.55 starts two agents and registers its node only once each has written the
ports it serves to a file in the session directory:

- the dashboard agent, which without Ray's dashboard extras (``ray[default]``, which fedsim does
  not install) runs ``--minimal`` and writes -1 for all its ports ("not in use");
- the runtime-env agent, an HTTP server that sets up runtime environments (``pip``,
  ``working_dir``, ``env_vars``, ...) for workers that ask for one. A lean local node gives the
  workers their path through the environment and asks for no runtime environment, so the raylet
  never calls it.

Each agent imports much of Ray (aiohttp, gRPC, the dashboard's modules): about 1 CPU-s each on a
2-core machine, while the raylet waits and the driver imports torch. This script writes what the
minimal dashboard agent writes (-1 for its ports) or a free port for the runtime-env agent (where
nothing listens, so a runtime-env request would fail rather than run), then stays alive until the
raylet, its parent, is gone, as the agents do. It runs as ``python -S`` and imports nothing beyond
the standard library: it starts in about 20 ms.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import sys
import time
from collections.abc import Mapping, Sequence

#: Port files of the dashboard agent (names as Ray's ``persist_port`` writes them).
DASHBOARD_AGENT_PORTS = ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port")
#: Port file of the runtime-env agent.
RUNTIME_ENV_AGENT_PORT = "runtime_env_agent_port"
#: Seconds between two looks at the raylet when stdin is not its pipe and Linux has no pidfd.
PARENT_POLL_S = 0.5


def agent_options(argv: Sequence[str]) -> dict[str, str]:
    """The ``--name=value`` options of an agent's command line (others are ignored)."""
    options = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            name, value = arg[2:].split("=", 1)
            options[name] = value
    return options


def free_port(host: str, wanted: int) -> int:
    """``wanted`` if it can be bound on ``host``, a free port chosen by the OS if ``wanted`` is 0."""
    with socket.socket() as sock:
        sock.bind((host, wanted))
        port: int = sock.getsockname()[1]
    return port


def ports_to_write(options: Mapping[str, str]) -> dict[str, int]:
    """The port files this stub writes for the agent that ``options`` describe: the runtime-env
    agent's (it has ``--runtime-env-agent-port``) or the minimal dashboard agent's."""
    if "runtime-env-agent-port" in options:
        host = options.get("node-ip-address") or "127.0.0.1"
        wanted = int(options["runtime-env-agent-port"] or 0)
        return {RUNTIME_ENV_AGENT_PORT: free_port(host, wanted)}
    return dict.fromkeys(DASHBOARD_AGENT_PORTS, -1)


def persist(session_dir: str, node_id: str, name: str, port: int) -> None:
    """Write ``port`` to the file Ray's raylet reads (``<session_dir>/<name>_<node_id>``), at
    once (a rename), so that the raylet never reads a partial file."""
    path = os.path.join(session_dir, f"{name}_{node_id}")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_parent_exit() -> None:
    """Return once the raylet is gone: its pipe on stdin ends or, if stdin is no pipe, the
    raylet's process (``RAY_RAYLET_PID``, which Ray sets for its agents, else this process's
    parent) exits. That wait uses a pidfd where Linux has one, else a look every
    :data:`PARENT_POLL_S` seconds."""
    try:
        is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        is_pipe = False
    if is_pipe:
        while os.read(0, 65536):
            pass
        return
    raylet = int(os.environ.get("RAY_RAYLET_PID") or os.getppid())
    try:
        fd = os.pidfd_open(raylet)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd here: look now and then
        while _alive(raylet):
            time.sleep(PARENT_POLL_S)
        return
    try:
        select.select([fd], [], [])  # readable once the process has exited
    finally:
        os.close(fd)


def main(argv: Sequence[str]) -> int:
    options = agent_options(argv)
    try:
        session_dir, node_id = options["session-dir"], options["node-id"]
    except KeyError as e:
        print(f"fedsim stub agent: missing --{e.args[0]}= in {list(argv)}", file=sys.stderr)
        return 2
    for name, port in ports_to_write(options).items():
        persist(session_dir, node_id, name, port)
    wait_for_parent_exit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
