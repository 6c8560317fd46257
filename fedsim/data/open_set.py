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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from fedsim.data.datasets import DatasetArrays, _channel_stats
from fedsim.data.partition import partition_dataset
from fedsim.errors import ConfigError, invalid

__all__ = [
    "DEFAULTS",
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

OPEN_SET_MODES = ("none", "class_split", "cross_dataset")

#: The second entry of every seed sequence drawn here (``default_rng([seed, 0x05E7, i])``).
OPEN_SET_STREAM = 0x05E7

_COMMON = ("name", "mode", "partition", "unknown_alpha", "detection_test", "log_picks")
_BUDGET = ("initial_ratio", "query_ratio", "cycles")
_MODE_KEYS: dict[str, tuple[str, ...]] = {
    "class_split": ("num_known", "known_classes", "class_order", "split_seed"),
    "cross_dataset": ("unknown_dataset", "unknown_ratio"),
}
#: Every key of the ``open_set`` group.
OPEN_SET_KEYS = _COMMON + _MODE_KEYS["class_split"] + _MODE_KEYS["cross_dataset"] + _BUDGET

#: The value of a key the node leaves out (OS-FAL spec 6).
DEFAULTS: dict[str, Any] = {
    "num_known": 6,
    "known_classes": None,
    "class_order": "natural",
    "split_seed": 1,
    "unknown_dataset": "fashion_mnist",
    "unknown_ratio": 0.4,
    "partition": "joint",
    "unknown_alpha": 0.5,
    "detection_test": False,
    "log_picks": False,
    "initial_ratio": 0.02,
    "query_ratio": 0.03,
    "cycles": 6,
}


# --- configuration --------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _get(spec: Mapping[str, Any], key: str) -> Any:
    return spec[key] if key in spec else DEFAULTS[key]


def open_set_mode(spec: Mapping[str, Any] | None) -> str:
    """The configured mode: ``mode``, else ``name``, else ``"none"`` (also for no node).

    Raises
    ------
    ConfigError
        When the mode is not one of :data:`OPEN_SET_MODES`.
    """
    if spec is None:
        return "none"
    mode = spec.get("mode")
    if mode is None:
        mode = spec.get("name", "none")
    if mode not in OPEN_SET_MODES:
        raise invalid("open_set.mode", mode, "one of " + ", ".join(OPEN_SET_MODES))
    return str(mode)


def _num_known(spec: Mapping[str, Any]) -> Any:
    """``num_known``; left out with ``known_classes`` given, it is their count."""
    given = spec.get("known_classes")
    if "num_known" not in spec and isinstance(given, Sequence) and not isinstance(given, str):
        return len(given)
    return _get(spec, "num_known")


#: key -> (accepts the value, what is allowed); num_known and known_classes depend on C.
_RULES: dict[str, tuple[Any, str]] = {
    "class_order": (lambda v: v in ("natural", "seeded"), "one of natural, seeded"),
    "split_seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "unknown_dataset": (lambda v: isinstance(v, str) and v != "", "a dataset name (a string)"),
    "unknown_ratio": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "partition": (lambda v: v in ("joint", "separate"), "one of joint, separate"),
    "unknown_alpha": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "detection_test": (lambda v: isinstance(v, bool), "true or false"),
    "log_picks": (lambda v: isinstance(v, bool), "true or false"),
    "initial_ratio": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "query_ratio": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "cycles": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}


def check_open_set(spec: Mapping[str, Any] | None, num_classes: int) -> None:
    """Check an ``open_set`` node against a dataset of ``num_classes`` classes.

    Mode ``none`` (or no node) only checks that every key belongs to the group; the other modes
    also refuse the other mode's keys and check every value, a left-out key taking
    :data:`DEFAULTS`.

    Parameters
    ----------
    spec
        The ``open_set`` node as a mapping (``None``: the group is absent).
    num_classes
        Classes of the configured dataset (C).

    Raises
    ------
    ConfigError
        One line naming the first bad key and what it allows.
    """
    mode = open_set_mode(spec)
    if spec is None:
        return
    allowed = OPEN_SET_KEYS if mode == "none" else _COMMON + _MODE_KEYS[mode] + _BUDGET
    for key in spec:
        if key not in allowed:
            keys = ", ".join(allowed)
            raise ConfigError(
                f"open_set.{key} does not apply to mode {mode!r}: its keys are {keys}"
                if key in OPEN_SET_KEYS
                else f"unknown key open_set.{key}: allowed keys are {keys}"
            )
    if not isinstance(spec.get("name", ""), str):
        raise invalid("open_set.name", spec["name"], "a string")
    if mode == "none":
        return
    if mode == "class_split":
        _check_known(spec, num_classes)
    for key in allowed:
        if key in _RULES and not _RULES[key][0](value := _get(spec, key)):
            raise invalid(f"open_set.{key}", value, _RULES[key][1])


def _check_known(spec: Mapping[str, Any], num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(
            f"open_set mode 'class_split' needs at least 2 classes, got {num_classes}"
        )
    k = _num_known(spec)
    if not _is_int(k) or not 1 <= k <= num_classes - 1:
        raise invalid("open_set.num_known", k, f"an integer in [1, {num_classes - 1}]")
    given = _get(spec, "known_classes")
    if given is None:
        return
    items = list(given) if isinstance(given, Sequence) and not isinstance(given, str) else None
    if items is None or not all(_is_int(c) and 0 <= c < num_classes for c in items):
        allowed = f"null or a list of distinct integers in [0, {num_classes - 1}]"
        raise invalid("open_set.known_classes", given, allowed)
    if len(set(items)) != len(items):
        raise invalid("open_set.known_classes", items, "distinct classes (one is repeated)")
    if len(items) != k:
        allowed = f"a list of open_set.num_known={k} classes (set num_known to its length)"
        raise invalid("open_set.known_classes", items, allowed)


def known_classes(spec: Mapping[str, Any] | None, num_classes: int) -> list[int]:
    """The sorted source classes that are known.

    class_split: ``known_classes`` if given; else ``natural`` gives ``0 .. K-1`` and ``seeded``
    the first K of ``default_rng(split_seed).permutation(num_classes)``, sorted. The other modes
    know every class.

    Raises
    ------
    ConfigError
        When the node is invalid (:func:`check_open_set`).
    """
    check_open_set(spec, num_classes)
    if spec is None or open_set_mode(spec) != "class_split":
        return list(range(num_classes))
    given = _get(spec, "known_classes")
    if given is not None:
        return sorted(int(c) for c in given)
    k = int(_num_known(spec))
    if _get(spec, "class_order") == "natural":
        return list(range(k))
    perm = np.random.default_rng(int(_get(spec, "split_seed"))).permutation(num_classes)
    return sorted(int(c) for c in perm[:k])


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
    detect = bool(_get(spec, "detection_test"))
    if mode == "class_split":
        return _class_split(data, known_classes(spec, c), seed, detect)
    if unknown is None:
        raise ValueError("build_open_set: mode 'cross_dataset' needs the unknown dataset")
    ratio = float(_get(spec, "unknown_ratio"))
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
    if not _is_number(unknown_alpha) or unknown_alpha <= 0:
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
