"""Simulation engines: what drives the ServerApp and ClientApps in ``fedsim run``.

Engines are registered by name in :data:`ENGINES` and selected by the config group ``engine``.
An engine is a function ``(cfg, prestarted=None) -> None`` that runs ``server.app:app`` and
``clients.app:app`` with the config shipped in Flower's run config. An engine may carry a
``prestart(cfg)`` attribute: :func:`fedsim.runner.run` calls it right after validating the config,
so that slow start-up work (Ray, workers) overlaps the loading of the data, and passes its handle
(which has ``close()``) as ``prestarted``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fedsim.registry import Registry

ENGINES: Registry[Callable[..., None]] = Registry("engine")


def ray_init_args(engine: Mapping[str, Any], *, verbose: bool) -> dict[str, Any]:
    """``ray.init`` arguments from the ``engine`` config: join ``ray_address`` if set, else start
    a local Ray limited to ``num_cpus``/``num_gpus``; no dashboard; quiet unless ``verbose``."""
    args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if engine.get("ray_address"):
        args["address"] = str(engine["ray_address"])
    else:
        if engine.get("num_cpus") is not None:
            args["num_cpus"] = int(engine["num_cpus"])
        if engine.get("num_gpus") is not None:
            args["num_gpus"] = int(engine["num_gpus"])
    return args


from fedsim.engine import fast as _fast  # noqa: E402,F401  (registers "fast")
from fedsim.engine import flower as _flower  # noqa: E402,F401  (registers "flower")

__all__ = ["ENGINES"]
