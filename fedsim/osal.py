"""Open-set federated active learning at the config level (core): whether a run is open-set, and
which detector its query strategy declares.

The pool construction is :mod:`fedsim.data.open_set`; the strategies live in ``clients/query``
and declare their detector on themselves (:attr:`clients.query.QueryStrategy.detector`), which
the core reads through the :data:`~fedsim.registries.QUERY` registry.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["check_open_set_run", "detector_learner", "federated_detector", "open_set_spec"]


def open_set_spec(cfg: DictConfig | Any) -> dict[str, Any] | None:
    """The ``open_set`` group as a plain dict, or ``None`` when the run is closed-set (the group is
    absent, ``open_set=none``, or ``mode: none``)."""
    node = cfg.get("open_set") if hasattr(cfg, "get") else None
    if node is None:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    spec = dict(plain)  # type: ignore[arg-type]
    if str(spec.get("mode", "none")) == "none":
        return None
    return spec


def detector_learner(cfg: DictConfig | Any) -> str | None:
    """The ``LOCAL`` name of the helper learner that trains the federated (K+1)-class detector of
    an open-set run, as the configured query strategy declares it; ``None`` when the run is
    closed-set or its strategy reads no detector."""
    if open_set_spec(cfg) is None or cfg.get("query") is None:
        return None
    from fedsim.registries import QUERY

    name = str(cfg.query.get("name", ""))
    if name not in QUERY.names():
        return None  # validation reports the unknown name
    det = getattr(QUERY.get(name), "detector", None)
    return None if det is None else str(det)


def federated_detector(cfg: DictConfig | Any) -> str | None:
    """:func:`detector_learner` when the detector is federated (``open_set.detector`` is
    ``federated``: it travels with the target in one state dict), else ``None``."""
    name = detector_learner(cfg)
    spec = open_set_spec(cfg)
    if name is None or spec is None:
        return None
    return name if str(spec["detector"]) == "federated" else None


def check_open_set_run(cfg: DictConfig | Any) -> None:
    """Refuse an open-set pool without a query strategy, in one line (the pool's values are
    checked by the ``open_set_fal`` component against the dataset)."""
    spec = open_set_spec(cfg)
    if spec is not None and cfg.get("query") is None:
        from fedsim.errors import ConfigError

        raise ConfigError(
            f"open_set={spec.get('name', spec.get('mode'))} needs a query strategy: open-set "
            "pools are an active-learning setting (e.g. query=lfosa, eaoa, bual, entropy)"
        )
