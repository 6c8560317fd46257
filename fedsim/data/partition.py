"""Split a labelled training set across simulated clients.

The partitioners here are hand-written rather than taken from ``flwr-datasets``: they operate on a
plain in-memory label array (``numpy``) and return index arrays, so fedsim needs neither Hugging
Face ``datasets`` nor ``pyarrow``, and the same code partitions any dataset fedsim can load (or a
long-tailed subset of one). Each partitioner is registered in :data:`PARTITIONERS` as a function
``(labels, num_clients, rng, *, <its params>) -> list[np.ndarray]`` whose result is a list of
sorted ``int64`` index arrays, one per client, that are disjoint and together cover every index.
Use :func:`partition_dataset` to call one by name with a seed and a parameter mapping.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedsim.errors import ConfigError, invalid
from fedsim.registry import Registry

__all__ = ["PARTITIONERS", "partition_dataset", "partition_params"]

Partitioner = Callable[..., list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partition")


# --- validation helpers ---------------------------------------------------------------------------


def _positive_float(key: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise invalid(key, value, "a finite number > 0")
    return float(value)


def _int_at_least(key: str, value: Any, low: int) -> int:
    ok = not isinstance(value, bool) and (
        isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())
    )
    if not ok or value < low:
        raise invalid(key, value, f"an integer >= {low}")
    return int(value)


def _check_common(labels: np.ndarray, num_clients: Any) -> tuple[np.ndarray, int]:
    """Validate the label array and the client count shared by every partitioner."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be a 1-D array, got shape {labels.shape}")
    k = _int_at_least("num_clients", num_clients, 1)
    if k > labels.shape[0]:
        raise invalid(
            "num_clients", k, f"at most the {labels.shape[0]} samples (more clients than samples)"
        )
    return labels, k


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --- partitioners ---------------------------------------------------------------------------------


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """IID split: a seeded shuffle cut into ``num_clients`` near-equal parts."""
    labels, k = _check_common(labels, num_clients)
    return _finish(np.array_split(rng.permutation(labels.shape[0]), k))


@PARTITIONERS.register("dirichlet")
def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    min_partition_size: int = 10,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label skew: each class is split across clients in Dirichlet(alpha) proportions.

    Parameters
    ----------
    alpha
        Concentration; small values give clients few dominant classes, large ones approach IID.
    min_partition_size
        Every client must get at least this many samples; the whole draw is repeated until so.
    max_tries
        Number of draws before giving up with a :class:`ConfigError`.
    """
    labels, k = _check_common(labels, num_clients)
    alpha = _positive_float("partition.alpha", alpha)
    min_size = _int_at_least("partition.min_partition_size", min_partition_size, 0)
    tries = _int_at_least("partition.max_tries", max_tries, 1)
    n = labels.shape[0]
    if min_size * k > n:
        raise invalid(
            "partition.min_partition_size",
            min_size,
            f"at most {n // k} ({n} samples over {k} clients)",
        )
    classes = np.unique(labels)
    for _ in range(tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(props)[:-1] * idx.shape[0]).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(p.shape[0] for p in merged) >= min_size:
            return _finish(merged)
    raise ConfigError(
        f"partition 'dirichlet': min_partition_size={min_size} could not be met in {tries} draws "
        f"at alpha={alpha} with num_clients={k} and {n} samples; lower "
        "partition.min_partition_size, raise partition.alpha or use fewer clients"
    )


@PARTITIONERS.register("shards")
def shards(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al., 2017): label-sorted shards dealt at random.

    The label-sorted indices (random order within a class) are cut into
    ``num_clients * classes_per_client`` shards whose sizes differ by at most one, and each client
    gets ``classes_per_client`` shards chosen at random.
    """
    labels, k = _check_common(labels, num_clients)
    s = _int_at_least("partition.classes_per_client", classes_per_client, 1)
    n = labels.shape[0]
    if k * s > n:
        raise invalid(
            "partition.classes_per_client",
            s,
            f"at most {n // k} ({n} samples, {k} clients: one sample per shard at least)",
        )
    shuffled = rng.permutation(n)
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(order, k * s)
    deal = rng.permutation(k * s)
    return _finish(
        [np.concatenate([pieces[j] for j in deal[i * s : (i + 1) * s]]) for i in range(k)]
    )


@PARTITIONERS.register("quantity_skew")
def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 1.0,
    min_partition_size: int = 1,
) -> list[np.ndarray]:
    """Quantity skew: client sizes follow Dirichlet(alpha) proportions, samples assigned IID.

    Every client first gets ``min_partition_size`` samples; the rest is shared out in the drawn
    proportions with largest-remainder rounding, so sizes add up to the dataset size exactly.
    """
    labels, k = _check_common(labels, num_clients)
    alpha = _positive_float("partition.alpha", alpha)
    min_size = _int_at_least("partition.min_partition_size", min_partition_size, 0)
    n = labels.shape[0]
    if min_size * k > n:
        raise invalid(
            "partition.min_partition_size",
            min_size,
            f"at most {n // k} ({n} samples over {k} clients)",
        )
    props = rng.dirichlet(np.full(k, alpha))
    rest = n - min_size * k
    exact = props * rest
    extra = np.floor(exact).astype(np.int64)
    leftover = rest - int(extra.sum())
    if leftover > 0:
        extra[np.argsort(-(exact - extra), kind="stable")[:leftover]] += 1
    sizes = min_size + extra
    cuts = np.cumsum(sizes)[:-1]
    return _finish(np.split(rng.permutation(n), cuts))


# --- entry point ----------------------------------------------------------------------------------


def partition_params(name: str) -> dict[str, Any]:
    """The parameters a partitioner accepts, with their defaults."""
    sig = inspect.signature(PARTITIONERS.get(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def partition_dataset(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    params: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Partition ``labels`` across ``num_clients`` clients with a registered partitioner.

    Parameters
    ----------
    name
        Registered partitioner name (see ``PARTITIONERS.names()``).
    labels
        1-D integer labels of the training set.
    num_clients
        Number of partitions.
    seed
        Seed for ``numpy.random.default_rng``; the same seed gives the same partitions.
    params
        The partitioner's keyword parameters (e.g. ``{"alpha": 0.3}``); missing ones default.

    Returns
    -------
    list[numpy.ndarray]
        One sorted ``int64`` index array per client; disjoint, together covering every index.

    Raises
    ------
    ConfigError
        Unknown partitioner or parameter, invalid values, or an unsatisfiable constraint.
    """
    fn = PARTITIONERS.get(name)
    allowed = partition_params(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        names = ", ".join(sorted(allowed)) if allowed else "none"
        raise ConfigError(
            f"unknown parameter partition.{unknown[0]} for partition {name!r}: "
            f"allowed parameters are {names}"
        )
    labels, k = _check_common(labels, num_clients)
    parts = fn(labels, k, np.random.default_rng(seed), **params)
    _verify(parts, labels.shape[0], k, name)
    return parts


def _verify(parts: list[np.ndarray], n: int, k: int, name: str) -> None:
    """Internal sanity check: ``k`` disjoint arrays covering ``0 .. n - 1``."""
    counts = np.bincount(np.concatenate(parts), minlength=n) if parts else np.zeros(n)
    if len(parts) != k or counts.shape[0] != n or not np.all(counts == 1):
        raise RuntimeError(f"partitioner {name!r} returned partitions that are not a cover")
