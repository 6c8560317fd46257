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
    labels = data.train_y.numpy()
    seed = spec["seed"]
    rho = spec["longtail_rho"]
    keep = np.arange(len(labels))
    subset = spec.get("max_train_samples")
    if subset is not None and subset < len(keep):
        keep = np.sort(np.random.default_rng([seed, 2]).permutation(len(keep))[:subset])
    keep, val = validation_split(labels, keep, spec["val_fraction"], seed)  # before the long tail
    if rho != 1.0:
        kept = longtail_indices(labels[keep], rho, np.random.default_rng([seed, 1]))
        keep = keep[kept]
    keep, server = split_server_set(spec["ssfl"], labels, keep, seed)  # labels_at_server
    params = {k: v for k, v in spec["partition"].items() if k != "name"}
    local = partition_dataset(
        spec["partition"]["name"], labels[keep], spec["num_clients"], seed, params
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
        weak.append(generate(ws, labels[part], data.num_classes, seed, pid, x=x))
    return Federation(
        data=data,
        train_indices=keep,
        partitions=partitions,
        weak=tuple(weak),
        weak_groups=tuple(g for g, _ in specs),
        server_indices=server,
        val_indices=val,
    )
