"""The registries that plugins fill and the core looks up (a leaf module: it imports no plugin).

``clients``, ``server`` and ``strategies`` import these objects and register into them; the old
names stay importable where they were (``from strategies import STRATEGIES``). A lookup that
misses loads the plugins first (:func:`fedsim.plugins.load_plugins`).

Whole-config checks live here too: a plugin registers a function of the composed config with
:func:`config_check`, and :func:`fedsim.config.validate` runs every registered check before any
work starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from fedsim.plugins import load_plugins
from fedsim.registry import Registry

#: Local learners (config group ``local``), filled by ``clients.learners``.
LOCAL: Registry[Any] = Registry("local", loader=load_plugins)
#: FAL query strategies (config group ``query``), filled by ``clients.query``.
QUERY: Registry[Any] = Registry("query", loader=load_plugins)
#: Attacks (config group ``attack``; ``none`` maps to ``None``), filled by ``clients.attacks``.
ATTACKS: Registry[Any] = Registry("attack", loader=load_plugins)
#: Aggregation strategies (config group ``strategy``), filled by ``strategies``.
STRATEGIES: Registry[Any] = Registry("strategy", loader=load_plugins)
#: Post-training defenses (config group ``defense``), filled by ``server.defenses``.
DEFENSES: Registry[Any] = Registry("defense", loader=load_plugins)

ConfigCheck = Callable[[DictConfig], None]
#: Whole-config checks by name; each raises a one-line ConfigError on bad input.
CONFIG_CHECKS: Registry[ConfigCheck] = Registry("config check", loader=load_plugins)


DataCheck = Callable[[DictConfig, Any], None]
#: Checks of the config against the loaded dataset (a :class:`fedsim.data.DatasetArrays`), run by
#: :func:`fedsim.config.check_data` once the data is loaded and before any output is written.
DATA_CHECKS: Registry[DataCheck] = Registry("data check", loader=load_plugins)


def config_check(name: str) -> Callable[[ConfigCheck], ConfigCheck]:
    """Decorator: register a whole-config check run by :func:`fedsim.config.validate`.

    Parameters
    ----------
    name
        A unique name (the config group the check owns, e.g. ``"strategy"``).
    """
    return CONFIG_CHECKS.register(name)


def data_check(name: str) -> Callable[[DataCheck], DataCheck]:
    """Decorator: register a check of the config against the loaded dataset, run by
    :func:`fedsim.config.check_data` (e.g. an attack's trigger must fit the images)."""
    return DATA_CHECKS.register(name)
