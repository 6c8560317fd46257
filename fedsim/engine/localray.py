"""Starting and stopping the Ray that ``engine=fast`` runs on.

With ``engine.lean_ray=true`` (the default) a local Ray starts with only the processes the engine
uses: its GCS, the raylet with its two agents, and the workers Ray starts for the actors.
Three Python helpers that plain ``ray.init`` adds are left out (and three waits are cut short,
see :data:`LEAN_SYSTEM_CONFIG` and :func:`_await_raylet`):

- the dashboard server (fedsim asks for no dashboard, yet ``ray.init`` still starts its minimal
  server and waits until it has published its address: about 0.8 s of start-up);
- the autoscaler monitor (a single machine has nothing to scale);
- the log monitor, which forwards the workers' output to the driver's terminal. Without it the
  workers' output stays in Ray's session logs (``/tmp/ray/session_latest/logs/worker-*``); a
  ClientApp exception still comes back to the server as an error reply.

With ``engine.lean_agents=true`` (the default) the raylet's two agents are stand-ins
(:mod:`fedsim.engine.stub_agent`, :func:`stub_agent_commands`): Ray up in about 0.8 s instead
of 1.5 s, and about 2 CPU-s less work while the workers import their libraries.

On 2 cores ``ray.init`` took 3.7-4.3 s and its processes 5.3-7.0 CPU-s; the lean start 1.9 s and
3.1-3.9 CPU-s, and 1.2-1.7 s (10 starts) once the waits were cut (``scripts/bench_engine.py``
measures the effect on a whole run). Ray offers no
public switch for these helpers, so the lean start builds Ray's head node itself, from the
classes ``ray.init`` uses (``ray._private``; Flower pins the Ray version, 2.55.1). If that fails
(on another Ray, say), or the raylet has not registered within :data:`LEAN_START_TIMEOUT_S`, the
lean node is stopped and ``ray.init`` starts Ray instead, with one warning. ``lean_ray=false``
uses ``ray.init``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("fedsim")

#: Ray settings of the lean node (its ``_system_config``; ``engine.inline_bytes`` adds its own).
LEAN_SYSTEM_CONFIG: dict[str, Any] = {
    # Ray prestarts one worker per CPU when the first driver connects, and answers that driver
    # only once they have started: 0.6-0.7 s in which the driver waited, on 2 cores. Without
    # the prestart the driver connects in about 0.1 s and loads the data while Ray starts the
    # actors' workers (as the actors are created, as it would have started the prestarted ones).
    "prestart_worker_first_driver": False,
    # A Ray process that connects to a local socket nobody listens on yet tries again after
    # this many ms (Ray's default: 1000, 10 tries). The raylet's connection to its own object
    # store came too early in 3 of 8 starts and waited a whole second. 20 ms x 500 tries keeps
    # the 10 s of patience.
    "raylet_client_connect_timeout_milliseconds": 20,
    "raylet_client_num_connect_attempts": 500,
}

#: The head node started by :func:`start_ray` in lean mode, stopped by :func:`stop_ray`.
_lean_node: Any = None


def _worker_pythonpath() -> str:
    """The driver's ``sys.path`` (then any ``PYTHONPATH``), so that the workers import fedsim as
    the driver does (as Flower's Ray backend does)."""
    path = os.pathsep.join(p for p in sys.path if p)
    saved = os.environ.get("PYTHONPATH")
    return f"{path}{os.pathsep}{saved}" if saved else path


@contextmanager
def _pythonpath_for_workers() -> Iterator[None]:
    """A local Ray's workers inherit the environment of the raylet started in this block."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _worker_pythonpath()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def lean_node_params(args: Mapping[str, Any]) -> dict[str, Any]:
    """``RayParams`` keyword arguments for a lean local head node from ``ray.init`` ``args``
    (as :func:`fedsim.engine.ray_init_args` builds them for a local Ray)."""
    params: dict[str, Any] = {
        "include_dashboard": False,
        "no_monitor": True,
        "include_log_monitor": False,
    }
    for key in ("num_cpus", "num_gpus"):
        if key in args:
            params[key] = args[key]
    params["_system_config"] = {**LEAN_SYSTEM_CONFIG, **dict(args.get("_system_config") or {})}
    return params


#: Seconds between two looks for the raylet in the GCS's node table (see :func:`_await_raylet`).
RAYLET_POLL_S = 0.01


#: Seconds the lean start may take until its raylet registers; then :func:`start_ray` stops
#: the lean node and starts Ray with ``ray.init`` (a normal lean start takes 1-2 s on 2 cores).
LEAN_START_TIMEOUT_S = 30.0


class LeanStartTimeout(RuntimeError):
    """The lean node's raylet did not register within :data:`LEAN_START_TIMEOUT_S`."""


def _await_raylet(gcs_address: str, node_id: str, *, timeout: float = 30.0) -> bool | None:
    """Wait until the raylet of ``node_id`` has registered with the GCS at ``gcs_address``;
    True once it has, False on timeout, None if the GCS cannot be asked (the caller then waits
    Ray's own way).

    Ray's head node waits for its raylet by asking the GCS for the node, a call that checks,
    sleeps a whole second and checks again. The raylet registers about 1 s after it starts (its
    two agents must be up first), so that wait ended 1 or 2 s after the start: on 2 cores, 1.01,
    1.02 and 2.01 s in three starts. Reading the node table every :data:`RAYLET_POLL_S` instead
    finds the raylet within about 10 ms of its registration.
    """
    import time

    try:
        from ray._private.services import _get_gcs_client_options
        from ray._private.state import GlobalState

        state = GlobalState()
        state._initialize_global_state(_get_gcs_client_options(gcs_address))
    except Exception:  # another Ray's internals: wait Ray's own way
        return None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            nodes = state.node_table()
            if any(n.get("NodeID") == node_id and n.get("Alive") for n in nodes):
                return True
            time.sleep(RAYLET_POLL_S)
        return False
    except Exception:
        return None
    finally:
        state.disconnect()


#: The raylet's options that hold its agents' command lines.
AGENT_COMMAND_OPTIONS = ("--dashboard_agent_command=", "--runtime_env_agent_command=")
#: Options of an agent's command line that :mod:`fedsim.engine.stub_agent` reads.
STUB_AGENT_OPTIONS = ("session-dir", "node-id", "node-ip-address", "runtime-env-agent-port")
#: Ray versions whose raylet is known to start with the stub agents (Flower 1.39 pins 2.55.1).
STUB_AGENT_RAY_VERSIONS = frozenset({"2.55.1"})


def stub_agent_commands(command: Sequence[str]) -> list[str]:
    """The raylet's ``command`` with its two agents' command lines replaced by
    :mod:`fedsim.engine.stub_agent` (see its docstring), given the options it needs.

    Raises
    ------
    ValueError
        If ``command`` lacks an agent's command line or one lacks an option the stub needs.
    """
    import shlex
    import subprocess

    from fedsim.engine import stub_agent

    out = list(command)
    for key in AGENT_COMMAND_OPTIONS:
        at = [i for i, arg in enumerate(out) if arg.startswith(key)]
        if len(at) != 1:
            raise ValueError(f"the raylet's command has {len(at)} {key[:-1]} options, not 1")
        options = stub_agent.agent_options(shlex.split(out[at[0]][len(key) :]))
        needed = ["session-dir", "node-id"]
        if key.startswith("--runtime_env"):
            needed.append("runtime-env-agent-port")
        missing = [name for name in needed if name not in options]
        if missing:
            raise ValueError(f"{key[:-1]} lacks {missing}")
        stub = [sys.executable, "-S", os.path.abspath(stub_agent.__file__)]
        stub += [f"--{name}={options[name]}" for name in STUB_AGENT_OPTIONS if name in options]
        out[at[0]] = key + subprocess.list2cmdline(stub)
    return out


@contextmanager
def _stubbed_agents() -> Iterator[None]:
    """Within this block, a raylet that Ray starts gets :func:`stub_agent_commands`."""
    from ray._private import services

    start = services.start_ray_process

    def start_with_stubs(command: list[str], process_type: str, *args: Any, **kw: Any) -> Any:
        if process_type == "raylet":
            try:
                command = stub_agent_commands(command)
            except ValueError as e:  # another Ray's command line: its own agents
                log.warning("fedsim: Ray's own agents start (%s)", e)
        return start(command, process_type, *args, **kw)

    services.start_ray_process = start_with_stubs
    try:
        yield
    finally:
        services.start_ray_process = start


def _start_lean(args: Mapping[str, Any], *, stub_agents: bool) -> Any:
    """Start the lean head node and connect this driver to it; return the node.

    Raises
    ------
    LeanStartTimeout
        If the raylet has not registered within :data:`LEAN_START_TIMEOUT_S` (the node's
        processes are stopped first).
    """
    import ray
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    stub_agents = stub_agents and ray.__version__ in STUB_AGENT_RAY_VERSIONS

    class LeanNode(Node):  # type: ignore[misc]
        def start_api_server(self, *, include_dashboard: Any, raise_on_failure: Any) -> None:
            """No dashboard server (see the module's docstring)."""

        def start_raylet(self, *args: Any, **kw: Any) -> None:
            """The raylet, with stub agents if ``stub_agents`` (see :func:`stub_agent_commands`)."""
            if not stub_agents:
                return super().start_raylet(*args, **kw)  # type: ignore[no-any-return]
            with _stubbed_agents():
                return super().start_raylet(*args, **kw)  # type: ignore[no-any-return]

        def start_ray_processes(self) -> None:
            """Start the raylet, then wait for it to register (see :func:`_await_raylet`)."""
            super().start_ray_processes()
            bound = LEAN_START_TIMEOUT_S
            if _await_raylet(self.gcs_address, self._node_id, timeout=bound) is False:
                self.kill_all_processes(check_alive=False, allow_graceful=False)
                raise LeanStartTimeout(f"its raylet did not register within {bound:g} s")

    node = LeanNode(
        ray_params=RayParams(**lean_node_params(args)),
        head=True,
        shutdown_at_exit=True,  # also stopped if the driver exits without stop_ray()
        spawn_reaper=True,
        ray_init_cluster=True,
    )
    try:
        ray.init(
            address=node.address,
            logging_level=args.get("logging_level", logging.WARNING),
            log_to_driver=False,
        )
    except BaseException:
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        raise
    return node


def start_ray(
    engine: Mapping[str, Any], *, verbose: bool, log_to_driver: bool | None = None
) -> bool:
    """Start (or join) Ray for an ``engine`` config; True when this call started or joined it,
    False when Ray was already initialised in this process (then :func:`stop_ray` is not for it).

    Without ``engine.ray_address`` this always starts a new local Ray (see
    :func:`fedsim.engine.ray_init_args`): the lean node if ``engine.lean_ray``, falling back to
    ``ray.init`` with one warning when the lean start fails or times out. ``log_to_driver``:
    whether ``ray.init`` forwards the workers' output (None: Ray's default; the lean node never
    does).
    """
    import ray

    from fedsim.engine import ray_init_args

    global _lean_node
    if ray.is_initialized():
        return False
    args = ray_init_args(engine, verbose=verbose)
    if log_to_driver is not None:
        args["log_to_driver"] = log_to_driver
    if engine.get("ray_address"):  # a cluster: its workers get the path through the runtime env
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": _worker_pythonpath()}}, **args)
        return True
    # The path goes through the environment rather than a runtime env, which Ray's runtime-env
    # agent would set up for the workers (when Ray prestarted workers, a job runtime env made it
    # start others for the actors: 1.5-3 s at start-up).
    with _pythonpath_for_workers():
        if engine.get("lean_ray", False):
            try:
                _lean_node = _start_lean(args, stub_agents=engine.get("lean_agents", False))
                return True
            except Exception as e:  # another Ray's internals, or a start that hangs
                log.warning(
                    "fedsim: lean Ray start failed (%s: %s); using ray.init", type(e).__name__, e
                )
                if ray.is_initialized():
                    ray.shutdown()
        ray.init(**args)
    return True


def reattach(*, verbose: bool) -> bool:
    """Connect this driver again to the lean node :func:`start_ray` started, after something
    (Flower's Ray backend, at the end of a run) called ``ray.shutdown()``; True if it did."""
    import ray

    if _lean_node is None or ray.is_initialized():
        return False
    ray.init(
        address=_lean_node.address,
        logging_level=logging.INFO if verbose else logging.WARNING,
        log_to_driver=False,
    )
    return True


def stop_ray() -> None:
    """Shut down Ray in this process, and the lean head node if :func:`start_ray` started one."""
    import ray

    global _lean_node
    ray.shutdown()
    node, _lean_node = _lean_node, None
    if node is not None:
        node.destroy_external_storage()
        node.kill_all_processes(check_alive=False, allow_graceful=True)
