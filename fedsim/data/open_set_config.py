"""The ``open_set`` config group's checks and the known-class choice (OS-FAL spec 1.2, 6); the
pools themselves are :mod:`fedsim.data.open_set`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedsim.errors import ConfigError, invalid

__all__ = [
    "OPEN_SET_KEYS",
    "OPEN_SET_MODES",
    "OPEN_SET_STREAM",
    "check_open_set",
    "known_classes",
    "open_set_mode",
    "mode_keys",
]

OPEN_SET_MODES = ("none", "class_split", "cross_dataset")

#: The second entry of every seed sequence drawn here (``default_rng([seed, 0x05E7, i])``).
OPEN_SET_STREAM = 0x05E7

_COMMON = (
    "name",
    "mode",
    "partition",
    "unknown_alpha",
    "detection_test",
    "log_picks",
    "detector",
    "detector_epochs",
)
_BUDGET = ("initial_ratio", "query_ratio", "cycles")
_MODE_KEYS: dict[str, tuple[str, ...]] = {
    "class_split": ("num_known", "known_classes", "class_order", "split_seed"),
    "cross_dataset": ("unknown_dataset", "unknown_ratio"),
}
#: Every key of the ``open_set`` group.
OPEN_SET_KEYS = _COMMON + _MODE_KEYS["class_split"] + _MODE_KEYS["cross_dataset"] + _BUDGET

# --- configuration --------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))


def mode_keys(mode: str) -> tuple[str, ...]:
    """The keys of the ``open_set`` group in ``mode`` (``none``: only ``name`` and ``mode``)."""
    return ("name", "mode") if mode == "none" else _COMMON + _MODE_KEYS[mode] + _BUDGET


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
    "detector": (lambda v: v in ("federated", "local"), "one of federated, local"),
    "detector_epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "initial_ratio": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "query_ratio": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "cycles": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}


def check_open_set(spec: Mapping[str, Any] | None, num_classes: int) -> None:
    """Check an ``open_set`` node against a dataset of ``num_classes`` classes.

    Mode ``none`` (or no node) only checks that every key belongs to the group; the other modes
    also refuse the other mode's keys, need every key of their mode (the group's yaml files,
    ``conf/open_set/*.yaml``, are the one source of defaults) and check every value.

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
    allowed = OPEN_SET_KEYS if mode == "none" else mode_keys(mode)
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
    missing = [key for key in allowed if key not in spec and key not in ("name", "mode")]
    if missing:
        raise ConfigError(
            f"open_set mode {mode!r} is missing key(s) {', '.join(missing)}: select the group "
            f"(open_set={mode}, whose conf/open_set/{mode}.yaml sets every key) or give them all"
        )
    if mode == "class_split":
        _check_known(spec, num_classes)
    for key in allowed:
        if key in _RULES and not _RULES[key][0](value := spec[key]):
            raise invalid(f"open_set.{key}", value, _RULES[key][1])


def _check_known(spec: Mapping[str, Any], num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(
            f"open_set mode 'class_split' needs at least 2 classes, got {num_classes}"
        )
    k = spec["num_known"]
    if not _is_int(k) or not 1 <= k <= num_classes - 1:
        raise invalid("open_set.num_known", k, f"an integer in [1, {num_classes - 1}]")
    given = spec["known_classes"]
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
    given = spec["known_classes"]
    if given is not None:
        return sorted(int(c) for c in given)
    k = int(spec["num_known"])
    if spec["class_order"] == "natural":
        return list(range(k))
    perm = np.random.default_rng(int(spec["split_seed"])).permutation(num_classes)
    return sorted(int(c) for c in perm[:k])
