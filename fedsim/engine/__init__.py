"""Simulation engines: what drives the ServerApp and ClientApps in ``fedsim run``.

Engines are registered by name in :data:`ENGINES` and selected by the config group ``engine``.
An engine is a function ``(cfg, prestarted=None) -> None`` that runs ``server.app:app`` and
``clients.app:app`` with the config shipped in Flower's run config. Runs go through an
:class:`~fedsim.engine.session.EngineSession` (:func:`fedsim.runner.run` opens a one-run session
when none is open): it starts Ray before the data is loaded, so that slow start-up work (Ray,
workers) overlaps the loading, and hands the engine its handle (``engine=fast``: the run's
actors) as ``prestarted``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fedsim.registry import Registry

ENGINES: Registry[Callable[..., None]] = Registry("engine")


def ray_init_args(engine: Mapping[str, Any], *, verbose: bool) -> dict[str, Any]:
    """``ray.init`` arguments from the ``engine`` config: join ``ray_address`` if set, else start
    a local Ray limited to ``num_cpus``/``num_gpus``; no dashboard; quiet unless ``verbose``.

    Without ``ray_address`` the address is ``"local"``: a new local Ray, whatever ``RAY_ADDRESS``
    or Ray's record of the last ``ray start`` (``ray_current_cluster`` in Ray's temp dir) says.
    (``ray.init()`` with no address joins the recorded cluster, and hangs or fails when that
    cluster died without ``ray stop``.)

    ``inline_bytes`` (``engine=fast``; local Ray only, as a cluster's settings are its own): call
    arguments and results up to this size travel inside Ray's RPC messages instead of through its
    object store. Ray's default is 100 KiB; a call returning six 220 KB models cost the machine
    13.6 ms of CPU that way and 5-7 ms inline, while an 11 MB result costs more inline (30 vs
    36-40 ms), hence 4 MiB.
    """
    args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if engine.get("ray_address"):
        args["address"] = str(engine["ray_address"])
    else:
        args["address"] = "local"
        if engine.get("num_cpus") is not None:
            args["num_cpus"] = int(engine["num_cpus"])
        if engine.get("num_gpus") is not None:
            args["num_gpus"] = int(engine["num_gpus"])
        if engine.get("inline_bytes") is not None:
            n = int(engine["inline_bytes"])
            args["_system_config"] = {
                "max_direct_call_object_size": n,
                # the cap on all inlined arguments of one call (Ray's default: 10 MiB)
                "task_rpc_inlined_bytes_limit": max(n, 10 * 1024 * 1024),
            }
    return args


from fedsim.engine import fast as _fast  # noqa: E402,F401  (registers "fast")
from fedsim.engine import flower as _flower  # noqa: E402,F401  (registers "flower")
from fedsim.engine.session import EngineSession, open_session  # noqa: E402

__all__ = ["ENGINES", "EngineSession", "open_session", "ray_init_args"]
