"""The workflow's components (see :mod:`server.components.base`): importing this package
registers them in :data:`~server.components.base.COMPONENTS`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from server.components import (  # noqa: F401  (register)
    backdoor,
    defense,
    fal,
    fltrust,
    open_set_fal,
    ssfl,
    validation,
)
from server.components.base import COMPONENTS, Component, wanted_components

if TYPE_CHECKING:
    from fedsim.federation import Federation

__all__ = [
    "COMPONENTS",
    "Component",
    "build_components",
    "check_components",
    "check_components_data",
    "promised_keys",
]


def build_components(cfg: DictConfig) -> list[Component]:
    """One instance of every component ``cfg`` turns on, in hook order."""
    return [cls() for cls in wanted_components(cfg)]


def check_components(cfg: DictConfig) -> None:
    """Every component's config checks (those ``cfg`` turns on, and the refusals of the
    others' combinations), before any work; one :class:`~fedsim.errors.ConfigError` line."""
    for cls in wanted_components(cfg):
        cls.check(cfg)
    drivers = [c.name for c in wanted_components(cfg) if c.drives_stages]
    if len(drivers) > 1:  # no registered pair does this today; a new driver must compose first
        from fedsim.errors import ConfigError

        raise ConfigError(f"components {drivers} each split the run into stages: pick one")


def check_components_data(cfg: DictConfig, federation: Federation) -> None:
    """Every active component's checks against the loaded data (before any work)."""
    for cls in wanted_components(cfg):
        cls.check_data(cfg, federation)


def promised_keys(cfg: DictConfig) -> tuple[set[str], set[str]]:
    """The metric keys the active components promise: in evaluated round records, in the
    summary."""
    rounds: set[str] = set()
    summary: set[str] = set()
    for cls in wanted_components(cfg):
        rounds |= set(cls.promised(cfg))
        summary |= set(cls.summary_promises)
    return rounds, summary
