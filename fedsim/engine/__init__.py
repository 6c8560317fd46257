"""Simulation engines: what drives the ServerApp and ClientApps in ``fedsim run``.

Engines are registered by name in :data:`ENGINES` and selected by the config group ``engine``.
An engine is a function ``(cfg, prestarted=None) -> None`` that runs ``server.app:app`` and
``clients.app:app`` with the config shipped in Flower's run config. An engine may carry a
``prestart(cfg)`` attribute: :func:`fedsim.runner.run` calls it right after validating the config,
so that slow start-up work (Ray, workers) overlaps the loading of the data, and passes its handle
(which has ``close()``) as ``prestarted``.
"""

from __future__ import annotations

from collections.abc import Callable

from fedsim.registry import Registry

ENGINES: Registry[Callable[..., None]] = Registry("engine")

from fedsim.engine import fast as _fast  # noqa: E402,F401  (registers "fast")
from fedsim.engine import flower as _flower  # noqa: E402,F401  (registers "flower")

__all__ = ["ENGINES"]
