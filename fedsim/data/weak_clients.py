"""Which weak labels (and which local method) each client gets, and the per-client quality report.

The ``weak_labels`` config group names a generator of :data:`~fedsim.data.weak_labels.WEAK_LABELS`
and its parameters, applied to every client; its optional ``groups`` list gives fractions of the
clients another generator and, optionally, another local method::

    weak_labels:
      name: clean                    # the clients no group takes
      groups:
        - {fraction: 0.3, name: noisy, noise_type: symmetric, rate: 0.4, local: gce}
        - {fraction: 0.3, name: partial, q: 0.3, local: {name: proden, lr: 0.05}}

Clients are assigned to groups by a permutation of the partition ids seeded by ``cfg.seed``: the
first ``round(f1 * K)`` go to group 1, the next to group 2, and so on. A group's ``local`` is a
name or a mapping with a name and overrides; its defaults come from ``conf/local/<name>.yaml``
(the config group stays the single source of defaults). A client outside every group, or in a
group without ``local``, uses ``cfg.local``. Everything is derived from the config alone, so every
process (server, Ray actors, SuperNodes) computes the same weak labels.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedsim.data.weak_labels import WEAK_LABELS, WeakLabels, generator_params, make_weak_labels
from fedsim.errors import ConfigError, invalid
from fedsim.seeding import derive_seed

GROUP_KEYS = ("fraction", "name", "local")  # a group's keys that are not generator parameters
QUALITY_COLUMNS = (
    "client",
    "group",
    "weak_labels",
    "kind",
    "local",
    "n",
    "labeled",
    "noise_rate",
    "mean_candidates",
    "coverage",
)


@dataclass(frozen=True)
class WeakSpec:
    """One client group's weak labels and local method (``local=None``: use ``cfg.local``)."""

    name: str
    params: dict[str, Any]
    local: dict[str, Any] | None = None


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def weak_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``weak_labels`` node as a plain dict (``{"name": "clean"}`` when the group is absent);
    an ``ssfl`` setting other than ``none`` supplies it instead (:mod:`fedsim.ssfl`)."""
    if "ssfl" in cfg:
        from fedsim.ssfl import weak_labels_node

        derived = weak_labels_node(cfg)
        if derived is not None:
            return derived
    node = _plain(cfg.get("weak_labels")) if "weak_labels" in cfg else None
    return dict(node) if isinstance(node, Mapping) else {"name": "clean"}


def _local_spec(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping) and "name" in value:
        return dict(value)
    raise invalid(where, value, "a local method name or a mapping with 'name'")


def parse_specs(cfg: Mapping[str, Any]) -> tuple[WeakSpec, list[tuple[float, WeakSpec]]]:
    """The default spec and the ``(fraction, spec)`` groups of ``cfg.weak_labels``.

    Raises
    ------
    ConfigError
        On an unknown generator, an unknown parameter, a bad fraction or fractions above 1.
    """
    node = weak_config(cfg)
    name = str(node.get("name", "clean"))
    WEAK_LABELS.get(name)
    params = {k: v for k, v in node.items() if k not in ("name", "groups")}
    default = WeakSpec(name, _checked(name, params, "weak_labels"))
    groups: list[tuple[float, WeakSpec]] = []
    raw = node.get("groups") or []
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise invalid("weak_labels.groups", raw, "a list of {fraction, name, ...} mappings")
    total = 0.0
    for i, g in enumerate(raw):
        where = f"weak_labels.groups[{i}]"
        if not isinstance(g, Mapping) or "name" not in g or "fraction" not in g:
            raise invalid(where, g, "a mapping with fraction and name")
        frac = g["fraction"]
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 <= frac <= 1:
            raise invalid(f"{where}.fraction", frac, "a number in [0, 1]")
        total += float(frac)
        gname = str(g["name"])
        WEAK_LABELS.get(gname)
        gparams = {k: v for k, v in g.items() if k not in GROUP_KEYS}
        local = _local_spec(g["local"], f"{where}.local") if g.get("local") else None
        groups.append((float(frac), WeakSpec(gname, _checked(gname, gparams, where), local)))
    if total > 1 + 1e-9:
        raise invalid(
            "weak_labels.groups", [f for f, _ in groups], "fractions that sum to at most 1"
        )
    return default, groups


def _checked(name: str, params: dict[str, Any], where: str) -> dict[str, Any]:
    allowed = generator_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"invalid {where} parameter {unknown[0]!r} for weak labels {name!r}: allowed "
            f"{', '.join(allowed) or 'none'}"
        )
    return params


def assign_groups(seed: int, num_clients: int, fractions: Sequence[float]) -> np.ndarray:
    """Group index of every partition id (``-1``: no group), seeded by ``seed``.

    Group ``g`` takes ``round(cumsum[g] * K) - round(cumsum[g-1] * K)`` clients of a seeded
    permutation of the ids, so the counts add up and never exceed ``K``.
    """
    out = np.full(num_clients, -1, dtype=np.int64)
    perm = np.random.default_rng([int(seed), 0x3EA1]).permutation(num_clients)
    bounds = [int(round(c * num_clients)) for c in np.cumsum([0.0, *fractions])]
    for g in range(len(fractions)):
        out[perm[bounds[g] : min(bounds[g + 1], num_clients)]] = g
    return out


def client_specs(cfg: Mapping[str, Any]) -> list[tuple[int, WeakSpec]]:
    """``(group index, spec)`` of every partition id (group ``-1``: the default spec)."""
    default, groups = parse_specs(cfg)
    groups_of = assign_groups(int(cfg["seed"]), int(cfg["num_clients"]), [f for f, _ in groups])
    return [(int(g), groups[g][1] if g >= 0 else default) for g in groups_of]


def local_of(cfg: Mapping[str, Any], spec: WeakSpec) -> tuple[str, dict[str, Any]]:
    """The local method (name, parameters) a client with ``spec`` trains with."""
    if spec.local is None:
        local = _plain(cfg["local"])
        return str(local["name"]), {k: v for k, v in local.items() if k != "name"}
    from fedsim.config import CONF_DIR
    from fedsim.registries import LOCAL

    name = str(spec.local["name"])
    path = CONF_DIR / "local" / f"{name}.yaml"
    LOCAL.get(name)  # unknown name: one line listing the valid ones
    base = _plain(OmegaConf.load(path)) if path.is_file() else {"name": name}
    base.update({k: v for k, v in spec.local.items() if k != "name"})
    return name, {k: v for k, v in base.items() if k != "name"}


def generate(
    spec: WeakSpec,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    partition_id: int,
    x: np.ndarray | None = None,
) -> WeakLabels:
    """Client ``partition_id``'s weak labels (seeded by ``seed`` and the partition id)."""
    rng = np.random.default_rng(derive_seed(seed, partition_id, 0x3EA))
    return make_weak_labels(spec.name, labels, num_classes, rng, spec.params, x=x)


def client_locals(cfg: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The local method (name, parameters) of every partition id."""
    return [local_of(cfg, spec) for _, spec in client_specs(cfg)]


def check_weak_labels(cfg: Mapping[str, Any]) -> None:
    """Check ``cfg.weak_labels`` before any work: names, parameters and their values (a dry run
    of each generator on a few fake labels).

    Whether each client group's local method can use its kind of labels is the learners' own
    check (``clients.learners``, registered in :data:`fedsim.registries.CONFIG_CHECKS`), over
    :func:`used_specs`.
    """
    default, groups = parse_specs(cfg)
    fake = np.arange(8) % 4
    for spec in [default, *(s for _, s in groups)]:
        x = np.zeros((8, 1, 2, 2), dtype=np.uint8)
        make_weak_labels(spec.name, fake, 1000, np.random.default_rng(0), spec.params, x=x)


def used_specs(cfg: Mapping[str, Any]) -> list[tuple[WeakSpec, str]]:
    """``(spec, label kind)`` of every client group that has at least one client (the default
    spec first, when some client is in no group)."""
    default, groups = parse_specs(cfg)
    groups_of = assign_groups(int(cfg["seed"]), int(cfg["num_clients"]), [f for f, _ in groups])
    used = {int(g) for g in groups_of}
    return [
        (spec, str(WEAK_LABELS.meta(spec.name)["kind"]))
        for g, spec in [(-1, default), *enumerate(s for _, s in groups)]
        if g in used
    ]


def write_label_quality(
    path: Path, cfg: Mapping[str, Any], weak: Sequence[WeakLabels], groups: Sequence[int]
) -> None:
    """Write one row per client: its group, generator, kind, local method and realised quality."""
    specs = client_specs(cfg)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(QUALITY_COLUMNS)
        for pid, (wl, g) in enumerate(zip(weak, groups, strict=True)):
            spec = specs[pid][1]
            s = wl.stats
            writer.writerow(
                [
                    pid,
                    g,
                    spec.name,
                    wl.kind,
                    local_of(cfg, spec)[0],
                    int(s["n"]),
                    int(s["labeled"]),
                    f"{s['noise_rate']:.4f}",
                    f"{s['mean_candidates']:.4f}",
                    f"{s['coverage']:.4f}",
                ]
            )


def stateful_local_methods(cfg: Mapping[str, Any]) -> list[str]:
    """The local methods of ``cfg`` that keep per-client state across rounds (their class
    declares ``keeps_client_state``), sorted: checkpoints do not hold that state."""
    from fedsim.registries import LOCAL

    names = sorted({local_of(cfg, spec)[0] for spec, _ in used_specs(cfg)})
    return [n for n in names if getattr(LOCAL.get(n), "keeps_client_state", False)]
