"""The ``strategies`` plugin: importing it registers the aggregation strategies into
:data:`fedsim.registries.STRATEGIES` and their whole-config check.

It is named by the ``fedsim.plugins`` entry-point group (``pyproject.toml``) and imported by
:func:`fedsim.plugins.load_plugins`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from fedsim.registries import config_check
from strategies import build_strategy


@config_check("strategy")
def check_strategy(cfg: DictConfig) -> None:
    """Refuse unknown strategy parameters and values of the wrong type (the factory's keyword
    signature is the group's schema), too few clients for a robust rule and values the factory
    refuses (it is built once: a cheap object without state)."""
    build_strategy(cfg)  # checks the parameters first
