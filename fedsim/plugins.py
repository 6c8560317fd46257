"""Loading fedsim's plugins: the packages that register methods into the core's registries.

The core (``fedsim/``) never imports ``clients``, ``server`` or ``strategies``. Plugin modules are
named by the ``fedsim.plugins`` entry-point group (``pyproject.toml``,
``[project.entry-points."fedsim.plugins"]``); :func:`load_plugins` imports each of them once, and
they register their entries and config checks into :mod:`fedsim.registries`. Where the package
metadata is absent or stale (a checkout used without installing), :data:`DEFAULT_PLUGINS` is used.

A third-party package adds a learner, a strategy or a config check by declaring its own module in
the same entry-point group; nothing in fedsim has to change.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

#: The entry-point group that names plugin modules.
ENTRY_POINT_GROUP = "fedsim.plugins"
#: fedsim's own plugin modules (used when no entry point of the group is installed).
DEFAULT_PLUGINS = {
    "clients": "clients.plugin",
    "strategies": "strategies.plugin",
    "server": "server.plugin",
}

#: The Flower apps by reference, as ``[tool.flwr.app.components]`` in ``pyproject.toml`` names
#: them; engines load them with :func:`load_object` (a test checks the two agree).
SERVER_APP = "server.app:app"
CLIENT_APP = "clients.app:app"
#: The ClientApp's runtime factory (data, model, learner of a node); the fast engine's workers
#: build it at load time to warm up.
CLIENT_RUNTIME = "clients.app:client_runtime"
#: A post-training defense applied to a finished run (studies' post-hoc variants).
POSTHOC_DEFENSE = "server.components.defense:posthoc_defense"

_state = {"loaded": False, "loading": False}


def plugin_modules() -> dict[str, str]:
    """Plugin name -> module path, from the entry points (else :data:`DEFAULT_PLUGINS`).

    fedsim's own plugins are always included, so a stale install that lists only some of them
    still loads every built-in method.
    """
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {**DEFAULT_PLUGINS, **found}


def load_plugins() -> None:
    """Import every plugin module once (later calls return at once; reentrant calls made while
    the plugins are being imported are no-ops)."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        for module in plugin_modules().values():
            importlib.import_module(module.split(":")[0])
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def load_object(ref: str) -> Any:
    """The object named by a ``"package.module:attribute"`` reference (as Flower's
    ``[tool.flwr.app.components]`` names apps, e.g. ``"server.app:app"``).

    The composition root (engines, runner) uses it to reach an app or a plugin function without a
    static import of the plugin package.

    Raises
    ------
    ValueError
        If ``ref`` is not of the form ``module:attribute``.
    """
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"invalid object reference {ref!r}: expected 'package.module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
