"""Open-set pools for federated active learning (config group ``open_set``; OS-FAL spec 1 and 6).

A pool holds K *known* classes, labeled ``0 .. K-1`` in sorted order of their source class, and
*unknown* samples that all carry the label ``K``. The source class of every training sample is
kept apart in :attr:`OpenSetData.source_y` (diagnostics and the ``joint`` partition only).

- ``class_split``: one dataset; the known classes are ``known_classes`` if given, else the first
  ``num_known`` of ``class_order`` (``natural``: 0, 1, ...; ``seeded``: a permutation drawn from
  ``split_seed``, fixed across run seeds). The whole train split is kept.
- ``cross_dataset``: every class of the dataset is known; images of ``unknown_dataset`` are the
  unknowns. Their source class is ``C + <class in the unknown dataset>``.
- ``none``: closed-set FAL; nothing here is called.

Seeded streams (all ``numpy.random.default_rng``; ``seed`` is the run seed):

- ``[seed, OPEN_SET_STREAM, 0]``: the cross_dataset pool's known and unknown subsets;
- ``[seed, OPEN_SET_STREAM, 1]``: the unknown images of the detection test set;
- ``[seed, OPEN_SET_STREAM, 2]``: the ``separate`` partition's unknown proportions and deal;
- ``split_seed`` alone: the ``seeded`` class order (independent of the run seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fedsim.data.datasets import DatasetArrays, _channel_stats
from fedsim.data.partition import partition_dataset
from fedsim.errors import ConfigError, invalid

__all__ = [
    "OPEN_SET_KEYS",
    "OPEN_SET_MODES",
    "OPEN_SET_STREAM",
    "OpenSetData",
    "build_open_set",
    "check_open_set",
    "known_classes",
    "open_set_mode",
    "partition_open_set",
    "pool_stats",
]

from fedsim.data.open_set_config import (  # noqa: E402,F401  (re-exported)
    OPEN_SET_KEYS,
    OPEN_SET_MODES,
    OPEN_SET_STREAM,
    check_open_set,
    known_classes,
    open_set_mode,
)

# --- the pool -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSetData:
    """An open-set pool and its test sets.

    Attributes
    ----------
    data
        The derived dataset: ``num_classes`` = K; ``train_y`` in ``0 .. K`` (K = unknown); the
        test split holds the known classes only, remapped to ``0 .. K-1``. ``mean``/``std``: the
        dataset's for class_split, the pool's known images' for cross_dataset.
    source_y
        ``int64`` source class of every training sample (cross_dataset: ``C + c`` for an unknown
        of class ``c`` in the unknown dataset). Hidden from clients and strategies.
    known
        The known source classes, sorted; ``known[i]`` is label ``i``.
    num_source_classes
        C for class_split, C + the unknown dataset's classes for cross_dataset.
    detection_x
        uint8 images ``[M, C, H, W]`` of the detection test set (the known test images first,
        then the unknown ones), or ``None`` without ``detection_test``.
    detection_known
        ``bool [M]``: True for a known test image, or ``None``.
    """

    data: DatasetArrays
    source_y: np.ndarray
    known: tuple[int, ...]
    num_source_classes: int
    detection_x: torch.Tensor | None = None
    detection_known: np.ndarray | None = None

    @property
    def num_known(self) -> int:
        """K, the number of known classes."""
        return len(self.known)

    @property
    def is_unknown(self) -> np.ndarray:
        """``bool [N]``: True for an unknown training sample (label K)."""
        return self.data.train_y.numpy() == self.num_known


def _detection(
    known_x: torch.Tensor, unknown_x: torch.Tensor, seed: int
) -> tuple[torch.Tensor, np.ndarray]:
    """The known test images plus ``min(len(known_x), len(unknown_x))`` seeded unknown ones."""
    rng = np.random.default_rng([int(seed), OPEN_SET_STREAM, 1])
    m = min(len(known_x), len(unknown_x))
    pick = torch.from_numpy(np.sort(rng.permutation(len(unknown_x))[:m]))
    x = torch.cat([known_x, unknown_x[pick]]).contiguous()
    flags = np.concatenate([np.ones(len(known_x), bool), np.zeros(m, bool)])
    return x, flags


def build_open_set(
    data: DatasetArrays,
    spec: Mapping[str, Any],
    seed: int,
    *,
    unknown: DatasetArrays | None = None,
    pool_size: int | None = None,
) -> OpenSetData:
    """Build the open-set pool of ``data`` described by the ``open_set`` node ``spec``.

    class_split keeps the whole train split (and its tensor: no copy) and remaps its labels;
    ``pool_size`` is ignored (subset the pool afterwards as for closed-set runs).
    cross_dataset takes a pool of N = ``pool_size`` or ``len(data.train_y)`` images:
    ``round((1 - unknown_ratio) * N)`` known images of ``data`` and the rest from ``unknown``,
    each a uniform seeded subset of its train split (stream ``[seed, OPEN_SET_STREAM, 0]``),
    stored known first, then unknown, each part in its original order.

    Parameters
    ----------
    data, spec, seed
        The configured (known) dataset with C classes, the ``open_set`` node, the run seed.
    unknown
        The unknown dataset (cross_dataset only): same channels and image size as ``data``.
    pool_size
        The cross_dataset pool size N.

    Returns
    -------
    OpenSetData
        With the detection test set when ``detection_test`` is true (the known test images plus
        as many seeded unknown test images, or all of them when there are fewer, stream
        ``[seed, OPEN_SET_STREAM, 1]``).

    Raises
    ------
    ConfigError
        Invalid ``spec``, an incompatible ``unknown`` dataset or a pool larger than the data.
    ValueError
        For mode ``none``, or cross_dataset without ``unknown``.
    """
    c = data.num_classes
    check_open_set(spec, c)
    mode = open_set_mode(spec)
    if mode == "none":
        raise ValueError("build_open_set: open_set mode is 'none' (closed-set run)")
    detect = bool(spec["detection_test"])
    if mode == "class_split":
        return _class_split(data, known_classes(spec, c), seed, detect)
    if unknown is None:
        raise ValueError("build_open_set: mode 'cross_dataset' needs the unknown dataset")
    ratio = float(spec["unknown_ratio"])
    return _cross_dataset(data, unknown, ratio, pool_size, seed, detect)


def _class_split(data: DatasetArrays, known: list[int], seed: int, detect: bool) -> OpenSetData:
    c, k = data.num_classes, len(known)
    lut = np.full(c, k, dtype=np.int64)
    lut[known] = np.arange(k)
    source_y = data.train_y.numpy().astype(np.int64)
    test_y = data.test_y.numpy()
    in_test = lut[test_y] < k
    test_x = data.test_x[torch.from_numpy(in_test)].contiguous()
    out = replace(
        data,
        name=f"{data.name}/class_split",
        train_y=torch.from_numpy(lut[source_y]),
        test_x=test_x,
        test_y=torch.from_numpy(lut[test_y[in_test]]),
        num_classes=k,
    )
    det = _detection(test_x, data.test_x[torch.from_numpy(~in_test)], seed) if detect else None
    return OpenSetData(out, source_y, tuple(known), c, *(det or (None, None)))


def _cross_dataset(
    data: DatasetArrays,
    unknown: DatasetArrays,
    ratio: float,
    size: int | None,
    seed: int,
    det: bool,
) -> OpenSetData:
    c, shape = data.num_classes, tuple(data.train_x.shape[1:])
    if tuple(unknown.train_x.shape[1:]) != shape:
        allowed = f"a dataset of {data.name}'s image shape {shape}"
        got = tuple(unknown.train_x.shape[1:])
        raise invalid("open_set.unknown_dataset", unknown.name, f"{allowed} (got {got})")
    n = len(data.train_y) if size is None else int(size)
    n_kn = int(round((1.0 - ratio) * n))
    n_unk = n - n_kn
    if n < 1 or n_kn > len(data.train_y) or n_unk > len(unknown.train_y):
        raise ConfigError(
            f"open_set: a cross_dataset pool of {n} images needs {n_kn} of {data.name} (it has "
            f"{len(data.train_y)}) and {n_unk} of {unknown.name} (it has {len(unknown.train_y)}); "
            "lower max_train_samples or change open_set.unknown_ratio"
        )
    rng = np.random.default_rng([int(seed), OPEN_SET_STREAM, 0])
    kn = torch.from_numpy(np.sort(rng.permutation(len(data.train_y))[:n_kn]))
    unk = torch.from_numpy(np.sort(rng.permutation(len(unknown.train_y))[:n_unk]))
    known_x = data.train_x[kn]
    source_y = np.concatenate([data.train_y[kn].numpy(), c + unknown.train_y[unk].numpy()])
    source_y = source_y.astype(np.int64)
    mean, std = _channel_stats(known_x) if n_kn else (data.mean, data.std)
    out = replace(
        data,
        name=f"{data.name}+{unknown.name}",
        train_x=torch.cat([known_x, unknown.train_x[unk]]).contiguous(),
        train_y=torch.from_numpy(np.minimum(source_y, c)),
        mean=mean,
        std=std,
    )
    pair = _detection(data.test_x, unknown.test_x, seed) if det else None
    return OpenSetData(
        out, source_y, tuple(range(c)), c + unknown.num_classes, *(pair or (None, None))
    )


# --- partition and statistics ---------------------------------------------------------------------


def partition_open_set(
    name: str,
    params: Mapping[str, Any],
    source_y: np.ndarray,
    is_unknown: np.ndarray,
    num_clients: int,
    seed: int,
    *,
    how: str = "joint",
    unknown_alpha: float = 0.5,
) -> list[np.ndarray]:
    """Partition an open-set pool over clients (OS-FAL spec 1.3).

    ``joint``: the registered partitioner ``name`` runs on the source classes, unknown classes
    counting as ordinary ones. ``separate``: it runs on the known samples only (seed ``seed``);
    the unknown samples are shuffled and dealt in proportions drawn once from
    Dirichlet(``unknown_alpha`` * 1), sizes rounded by largest remainder, both from stream
    ``[seed, OPEN_SET_STREAM, 2]`` (dirichlet draw first, then the shuffle).

    Parameters
    ----------
    name, params
        The partitioner and its parameters (``partition`` node without ``name``).
    source_y
        Source class of every pool sample (positions ``0 .. N-1``).
    is_unknown
        ``bool [N]``: True for an unknown sample.
    num_clients, seed
        As for :func:`fedsim.data.partition.partition_dataset`.
    how
        ``joint`` or ``separate``.
    unknown_alpha
        The ``separate`` concentration of the unknown proportions.

    Returns
    -------
    list[numpy.ndarray]
        One sorted ``int64`` array of pool positions per client; disjoint, covering ``0 .. N-1``.

    Raises
    ------
    ConfigError
        A bad ``how`` or ``unknown_alpha``, or a partitioner error.
    """
    source_y = np.asarray(source_y)
    is_unknown = np.asarray(is_unknown, dtype=bool)
    if is_unknown.shape != source_y.shape:
        raise ValueError(f"is_unknown has shape {is_unknown.shape}, source_y {source_y.shape}")
    if how == "joint":
        return partition_dataset(name, source_y, num_clients, seed, params)
    if how != "separate":
        raise invalid("open_set.partition", how, "one of joint, separate")
    if (
        isinstance(unknown_alpha, bool)
        or not isinstance(unknown_alpha, int | float)
        or not 0 < unknown_alpha < float("inf")
    ):
        raise invalid("open_set.unknown_alpha", unknown_alpha, "a finite number > 0")
    kn = np.flatnonzero(~is_unknown)
    unk = np.flatnonzero(is_unknown)
    parts = [kn[p] for p in partition_dataset(name, source_y[kn], num_clients, seed, params)]
    rng = np.random.default_rng([int(seed), OPEN_SET_STREAM, 2])
    props = rng.dirichlet(np.full(num_clients, float(unknown_alpha)))
    exact = props * len(unk)
    sizes = np.floor(exact).astype(np.int64)
    leftover = len(unk) - int(sizes.sum())
    if leftover > 0:
        sizes[np.argsort(-(exact - sizes), kind="stable")[:leftover]] += 1
    dealt = np.split(rng.permutation(unk), np.cumsum(sizes)[:-1])
    return [
        np.sort(np.concatenate([p, d]).astype(np.int64)) for p, d in zip(parts, dealt, strict=True)
    ]


def pool_stats(y: np.ndarray, source_y: np.ndarray, K: int, num_source: int) -> dict[str, Any]:
    """One client's pool statistics (OS-FAL spec 1.3), for logging.

    Parameters
    ----------
    y, source_y
        The pool's labels in ``0 .. K`` (K = unknown) and source classes (``< num_source``).
    K, num_source
        The numbers of known and of source classes.

    Returns
    -------
    dict
        ``pool_size``, ``known`` (N^kn), ``unknown``, ``unknown_share`` (rho_u; 0 for an empty
        pool), ``label_histogram`` (K + 1 bins) and ``source_histogram`` (``num_source`` bins),
        histograms as lists of ints.
    """
    y = np.asarray(y, dtype=np.int64)
    source_y = np.asarray(source_y, dtype=np.int64)
    if y.shape != source_y.shape:
        raise ValueError(f"y has shape {y.shape}, source_y {source_y.shape}")
    n = int(y.shape[0])
    n_unk = int(np.count_nonzero(y == K))
    return {
        "pool_size": n,
        "known": n - n_unk,
        "unknown": n_unk,
        "unknown_share": n_unk / n if n else 0.0,
        "label_histogram": np.bincount(y, minlength=K + 1).tolist(),
        "source_histogram": np.bincount(source_y, minlength=num_source).tolist(),
    }
