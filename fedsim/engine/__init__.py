"""Simulation engines: what drives the ServerApp and ClientApps in ``fedsim run``.

Engines are registered by name in :data:`ENGINES` and selected by the config group ``engine``.
An engine is a function ``(cfg) -> None`` that runs ``server.app:app`` and ``clients.app:app``
with the config shipped in Flower's run config.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from fedsim.registry import Registry

ENGINES: Registry[Callable[[DictConfig], None]] = Registry("engine")

from fedsim.engine import fast as _fast  # noqa: E402,F401  (registers "fast")
from fedsim.engine import flower as _flower  # noqa: E402,F401  (registers "flower")

__all__ = ["ENGINES"]
