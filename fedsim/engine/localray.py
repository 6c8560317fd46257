"""Starting and stopping the Ray that ``engine=fast`` runs on.

With ``engine.lean_ray=true`` (the default) a local Ray starts with only the processes the engine
uses: its GCS, the raylet with its two agents, and the prestarted workers that become the actors.
Three Python helpers that plain ``ray.init`` adds are left out:

- the dashboard server (fedsim asks for no dashboard, yet ``ray.init`` still starts its minimal
  server and waits until it has published its address: about 0.8 s of start-up);
- the autoscaler monitor (a single machine has nothing to scale);
- the log monitor, which forwards the workers' output to the driver's terminal. Without it the
  workers' output stays in Ray's session logs (``/tmp/ray/session_latest/logs/worker-*``); a
  ClientApp exception still comes back to the server as an error reply.

On 2 cores ``ray.init`` took 3.7-4.3 s and its processes 5.3-7.0 CPU-s; the lean start 1.9 s and
3.1-3.9 CPU-s (``scripts/bench_engine.py`` measures the effect on a whole run). Ray offers no
public switch for these helpers, so the lean start builds Ray's head node itself, from the
classes ``ray.init`` uses (``ray._private``; Flower pins the Ray version, 2.55.1). If that fails
on another Ray it falls back to ``ray.init`` with a warning. ``lean_ray=false`` uses ``ray.init``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("fedsim")

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
    for key in ("num_cpus", "num_gpus", "_system_config"):
        if key in args:
            params[key] = args[key]
    return params


def _start_lean(args: Mapping[str, Any]) -> Any:
    import ray
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    class LeanNode(Node):  # type: ignore[misc]
        def start_api_server(self, *, include_dashboard: Any, raise_on_failure: Any) -> None:
            """No dashboard server (see the module's docstring)."""

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


def start_ray(engine: Mapping[str, Any], *, verbose: bool) -> bool:
    """Start (or join) Ray for ``engine=fast``; True when this call started or joined it, False
    when Ray was already initialised in this process (then :func:`stop_ray` is not for it)."""
    import ray

    from fedsim.engine import ray_init_args

    global _lean_node
    if ray.is_initialized():
        return False
    args = ray_init_args(engine, verbose=verbose)
    if "address" in args:  # joining a cluster: its workers get the path through the runtime env
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": _worker_pythonpath()}}, **args)
        return True
    # The path goes through the environment rather than a runtime env so that the actors take the
    # workers Ray prestarts (a job runtime env makes Ray start new ones: 1.5-3 s at start-up).
    with _pythonpath_for_workers():
        if engine.get("lean_ray", False):
            try:
                _lean_node = _start_lean(args)
                return True
            except (AttributeError, TypeError, ImportError) as e:  # another Ray's internals
                log.warning("fedsim: lean Ray start failed (%s); using ray.init", e)
        ray.init(**args)
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
