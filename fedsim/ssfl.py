"""Semi-supervised FL settings: where the labels are (config group ``ssfl``).

Each setting is registered by name in :data:`SSFL` as a function that turns the ``ssfl`` node into
the per-client weak labels of :mod:`fedsim.data.weak_clients` (the ``semi`` generator of the
weak-supervision registry, so the label masks are drawn after the partition, per client, with
per-client seeds derived from ``cfg.seed``):

- ``none``: plain FL; ``weak_labels`` is used as configured.
- ``labels_at_client``: every client keeps ``labeled_ratio`` (or ``labels_per_class``) of its
  samples labeled; the rest is unlabeled.
- ``labels_at_server``: the server holds a labeled set drawn (seeded) from the training pool and
  removed from it before partitioning (:func:`split_server_set`); the clients hold unlabeled data
  only. The workflow's server step (:mod:`server.components.ssfl`) trains on that set.
- ``partial_client``: ``labeled_clients`` clients (a seeded choice) are fully labeled, the rest
  fully unlabeled.

Everything is derived from the config alone, so every process computes the same labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError, invalid
from fedsim.registry import Registry

#: setting name -> function ``(ssfl node, num_clients) -> weak_labels node`` (None: unchanged).
SSFL: Registry[Callable[[Mapping[str, Any], int], dict[str, Any] | None]] = Registry("ssfl")

SETTING_KEYS = {
    "none": (),
    "labels_at_client": ("labeled_ratio", "labels_per_class"),
    "labels_at_server": (
        "labeled_ratio",
        "labels_per_class",
        "server_epochs",
        "server_warmup_epochs",
        "server_batch_size",
        "server_lr",
        "server_momentum",
        "server_weight_decay",
    ),
    "partial_client": ("labeled_clients",),
}


def ssfl_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ssfl`` node as a plain dict (``{"name": "none"}`` when the group is absent)."""
    node = cfg.get("ssfl") if isinstance(cfg, Mapping) else None
    if node is None:
        return {"name": "none"}
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else {"name": str(node)}


def ssfl_setting(cfg: Mapping[str, Any]) -> str:
    """The configured setting's name (``none`` when the group is absent)."""
    return str(ssfl_config(cfg).get("name", "none"))


def _ratio_or_count(node: Mapping[str, Any], where: str) -> tuple[float | None, int | None]:
    ratio, per_class = node.get("labeled_ratio"), node.get("labels_per_class")
    if (ratio is None) == (per_class is None):
        raise ConfigError(
            f"{where} needs exactly one of labeled_ratio, labels_per_class: got "
            f"labeled_ratio={ratio!r}, labels_per_class={per_class!r}"
        )
    if ratio is not None and (
        isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1
    ):
        raise invalid(f"{where}.labeled_ratio", ratio, "a number in (0, 1]")
    if per_class is not None and (
        isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1
    ):
        raise invalid(f"{where}.labels_per_class", per_class, "an integer >= 1")
    return ratio, per_class


@SSFL.register("none")
def _none(node: Mapping[str, Any], num_clients: int) -> None:
    return None


@SSFL.register("labels_at_client")
def _labels_at_client(node: Mapping[str, Any], num_clients: int) -> dict[str, Any]:
    ratio, per_class = _ratio_or_count(node, "ssfl")
    return {"name": "semi", "labeled_ratio": ratio, "labels_per_class": per_class, "groups": []}


@SSFL.register("labels_at_server")
def _labels_at_server(node: Mapping[str, Any], num_clients: int) -> dict[str, Any]:
    _ratio_or_count(node, "ssfl")
    return {"name": "semi", "labeled_ratio": 0.0, "labels_per_class": None, "groups": []}


@SSFL.register("partial_client")
def _partial_client(node: Mapping[str, Any], num_clients: int) -> dict[str, Any]:
    k = node.get("labeled_clients")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_clients:
        raise invalid("ssfl.labeled_clients", k, f"an integer in [1, num_clients={num_clients})")
    return {
        "name": "semi",
        "labeled_ratio": 0.0,
        "labels_per_class": None,
        "groups": [{"fraction": k / num_clients, "name": "clean"}],
    }


def weak_labels_node(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``weak_labels`` node the ``ssfl`` setting implies (None for ``none``)."""
    node = ssfl_config(cfg)
    name = str(node.get("name", "none"))
    SSFL.get(name)
    return SSFL.get(name)(node, int(cfg["num_clients"]))


def check_ssfl(cfg: DictConfig) -> None:
    """Check ``cfg.ssfl`` before any work: the setting, its parameters and values, and that it is
    not combined with a non-default ``weak_labels`` (the setting draws the labels itself)."""
    node = ssfl_config(cfg)
    name = str(node.get("name", "none"))
    SSFL.get(name)
    unknown = sorted(set(node) - {"name", *SETTING_KEYS[name]})
    if unknown:
        raise ConfigError(
            f"invalid ssfl parameter {unknown[0]!r} for setting {name!r}: allowed "
            f"{', '.join(SETTING_KEYS[name]) or 'none'}"
        )
    weak_labels_node(cfg)
    if name == "none":
        return
    weak = cfg.get("weak_labels")
    weak_name = str(weak.get("name", "clean")) if isinstance(weak, Mapping) else "clean"
    if weak_name != "clean" or (isinstance(weak, Mapping) and weak.get("groups")):
        raise ConfigError(
            f"ssfl={name} draws the labels itself: it cannot be combined with "
            f"weak_labels={weak_name} (use weak_labels=clean)"
        )
    if name == "labels_at_server":
        for key in ("server_epochs", "server_warmup_epochs", "server_batch_size"):
            v = node.get(key)
            low = 1 if key == "server_batch_size" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise invalid(f"ssfl.{key}", v, f"an integer >= {low}")
        lr = node.get("server_lr")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise invalid("ssfl.server_lr", lr, "a number > 0")


def split_server_set(
    node: Mapping[str, Any], labels: np.ndarray, pool: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(client pool, server set)``: the server's labeled set drawn from ``pool`` (indices into
    ``labels``), seeded by ``seed``, and the pool without it. Outside ``labels_at_server`` the
    server set is empty.

    ``labeled_ratio`` takes ``round(ratio * len(pool))`` samples (at least 1);
    ``labels_per_class`` takes that many of each class (all of a class when it has fewer).
    """
    if str(node.get("name", "none")) != "labels_at_server":
        return pool, np.empty(0, dtype=np.int64)
    ratio, per_class = _ratio_or_count(node, "ssfl")
    rng = np.random.default_rng([int(seed), 0x55F1])
    if per_class is not None:
        chosen = []
        pool_labels = labels[pool]
        for c in np.unique(pool_labels):
            members = pool[pool_labels == c]
            chosen.append(rng.permutation(members)[:per_class])
        server = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    else:
        assert ratio is not None
        k = max(1, int(round(ratio * len(pool))))
        server = rng.permutation(pool)[:k]
    server = np.sort(server.astype(np.int64))
    rest = np.setdiff1d(pool, server, assume_unique=False)
    return rest, server
