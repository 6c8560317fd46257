"""The simulated federation's data: one dataset in memory per process, partitioned by the config.

Every process (the server, each Ray actor, each SuperNode) computes the same partition from the
config alone, since the partition is seeded. The arrays are loaded once per process and clients
index into them; nothing is reloaded per client or per round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fedsim.data import DatasetArrays, load_dataset, longtail_indices, partition_dataset
from fedsim.data.client_data import ClientData
from fedsim.data.validation import validation_split
from fedsim.data.weak_clients import client_specs, generate, weak_config
from fedsim.data.weak_labels import WeakLabels
from fedsim.osal import open_set_spec
from fedsim.ssfl import split_server_set, ssfl_config


@dataclass(frozen=True)
class Federation:
    """A dataset with its train split partitioned over clients.

    Attributes
    ----------
    data
        The whole dataset (uint8 tensors shared by all clients of this process).
    train_indices
        Indices into ``data.train_x`` kept after the optional long-tail subsampling.
    partitions
        One sorted index array per client, indexing ``data.train_x`` directly.
    weak
        Each client's weak labels (``weak_labels`` config group; ``clean`` by default).
    weak_groups
        Each client's ``weak_labels.groups`` index (``-1``: the group's default).
    server_indices
        The server's labeled set (``ssfl=labels_at_server``; indices into ``data.train_x``, not
        in any partition), else empty.
    val_indices
        The server's validation set (``dataset.val_fraction`` of the training split, clean
        labels; indices into ``data.train_x``, in no partition and not in ``server_indices``).
    """

    data: DatasetArrays
    train_indices: np.ndarray
    partitions: tuple[np.ndarray, ...]
    weak: tuple[WeakLabels, ...] = ()
    weak_groups: tuple[int, ...] = ()
    server_indices: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    val_indices: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    #: open-set FAL (:mod:`fedsim.data.open_set`): each training sample's source class (hidden;
    #: diagnostics only), else ``None``; ``data.num_classes`` is then K and label K is "unknown"
    source_y: np.ndarray | None = None
    detection: tuple[torch.Tensor, np.ndarray] | None = None  # images, known mask

    def client_data(self, partition_id: int) -> ClientData:
        """The data held by client ``partition_id``, with its weak labels."""
        idx = torch.from_numpy(self.partitions[partition_id])
        y = self.data.train_y[idx]
        kind, candidates = "clean", None
        if self.weak:
            wl = self.weak[partition_id]
            kind, y = wl.kind, torch.from_numpy(wl.y)
            if wl.candidates is not None:
                candidates = torch.from_numpy(wl.candidates)
        return ClientData(
            x=self.data.train_x[idx],
            y=y,
            mean=self.data.mean,
            std=self.data.std,
            num_classes=self.data.num_classes,
            label_kind=kind,
            candidates=candidates,
            true_y=self.data.train_y[idx],
        )


def val_fraction(cfg: DictConfig) -> float:
    """``dataset.val_fraction`` (0 for a config saved before the key existed)."""
    return float(cfg.dataset.get("val_fraction", 0.0) or 0.0)


def _key(cfg: DictConfig) -> str:
    part = OmegaConf.to_container(cfg.partition, resolve=True)
    assert isinstance(part, dict)
    return json.dumps(
        {
            "dataset": [cfg.dataset.name, str(cfg.dataset.root), bool(cfg.dataset.download)],
            "partition": part,
            "num_clients": int(cfg.num_clients),
            "seed": int(cfg.seed),
            "longtail_rho": float(cfg.longtail_rho),
            "max_train_samples": cfg.get("max_train_samples"),
            "val_fraction": val_fraction(cfg),
            "weak_labels": weak_config(cfg),
            "ssfl": ssfl_config(cfg),
            "open_set": open_set_spec(cfg),
        },
        sort_keys=True,
    )


def build_federation(cfg: DictConfig) -> Federation:
    """The federation described by ``cfg`` (cached per process)."""
    return _build(_key(cfg))


@lru_cache(maxsize=4)
def _build(key: str) -> Federation:
    spec: dict[str, Any] = json.loads(key)
    name, root, download = spec["dataset"]
    data = load_dataset(name, root=root, download=download)
    seed = spec["seed"]
    subset = spec.get("max_train_samples")
    osd = _open_set(data, spec, root, download)
    if osd is not None:
        data = osd.data
    labels = data.train_y.numpy()
    source = labels if osd is None else osd.source_y  # what the splits stratify on
    rho = spec["longtail_rho"]
    keep = np.arange(len(labels))
    if subset is not None and subset < len(keep):
        keep = np.sort(np.random.default_rng([seed, 2]).permutation(len(keep))[:subset])
    keep, val = validation_split(source, keep, spec["val_fraction"], seed)  # before the long tail
    if osd is not None:  # the server validates the target: known classes only
        val = val[labels[val] < data.num_classes]
    if rho != 1.0:
        kept = longtail_indices(source[keep], rho, np.random.default_rng([seed, 1]))
        keep = keep[kept]
    keep, server = split_server_set(spec["ssfl"], labels, keep, seed)  # labels_at_server
    params = {k: v for k, v in spec["partition"].items() if k != "name"}
    if osd is None:
        local = partition_dataset(
            spec["partition"]["name"], labels[keep], spec["num_clients"], seed, params
        )
    else:
        from fedsim.data.open_set import partition_open_set

        local = partition_open_set(
            spec["partition"]["name"],
            params,
            source[keep],
            labels[keep] == data.num_classes,
            spec["num_clients"],
            seed,
            how=str(spec["open_set"]["partition"]),
            unknown_alpha=float(spec["open_set"]["unknown_alpha"]),
        )
    partitions = tuple(np.asarray(keep[p], dtype=np.int64) for p in local)
    # Weak labels: per client, seeded by (seed, partition id), after partitioning (spec section 4).
    wcfg = {"seed": seed, "num_clients": spec["num_clients"], "weak_labels": spec["weak_labels"]}
    specs = client_specs(wcfg)
    weak = []
    for pid, part in enumerate(partitions):
        ws = specs[pid][1]
        x = (
            data.train_x[torch.from_numpy(part)].numpy()
            if ws.params.get("noise_type") == "instance"
            else None
        )
        weak.append(_weak(ws, labels[part], data.num_classes, seed, pid, x, osd is not None))
    return Federation(
        data=data,
        train_indices=keep,
        partitions=partitions,
        weak=tuple(weak),
        weak_groups=tuple(g for g, _ in specs),
        server_indices=server,
        val_indices=val,
        source_y=None if osd is None else osd.source_y,
        detection=(
            None
            if osd is None or osd.detection_x is None or osd.detection_known is None
            else (osd.detection_x, osd.detection_known)
        ),
    )


def _open_set(data: DatasetArrays, spec: dict[str, Any], root: str, download: bool) -> Any:
    """The open-set view of ``data`` (:func:`fedsim.data.open_set.build_open_set`), or ``None``."""
    os_spec = spec.get("open_set")
    if os_spec is None:
        return None
    from fedsim.data.open_set import build_open_set

    unknown = None
    if str(os_spec.get("mode")) == "cross_dataset":
        unknown = load_dataset(str(os_spec["unknown_dataset"]), root=root, download=download)
    return build_open_set(
        data,
        os_spec,
        spec["seed"],
        unknown=unknown,
        pool_size=spec.get("max_train_samples") if unknown is not None else None,
    )


def _weak(
    ws: Any,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    pid: int,
    x: np.ndarray | None,
    open_set: bool,
) -> WeakLabels:
    """A client's weak labels; in an open-set pool only the known samples' labels are weakened
    (an unknown sample keeps label K: the oracle answers "unknown" truthfully)."""
    if not open_set:
        return generate(ws, labels, num_classes, seed, pid, x=x)
    known = labels < num_classes
    wl = generate(ws, labels[known], num_classes, seed, pid, x=None if x is None else x[known])
    y = labels.copy()
    y[known] = wl.y
    return WeakLabels(kind=wl.kind, y=y, candidates=None, stats=wl.stats)
