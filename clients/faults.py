"""Fault injection: a ClientApp that misbehaves on purpose, to test how a setup copes.

Configured by the ``faults`` block of the config (partition ids per kind of fault, and the rounds
in which they strike; none by default). It works the same in simulation and in deployment, since
every ClientApp reads the config and knows its partition id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Fault kinds, in the order they are checked, and their ``faults.*`` list.
FAULT_KINDS = {
    "raise": "raise_clients",
    "nan": "nan_clients",
    "bad_shape": "bad_shape_clients",
    "slow": "slow_clients",
}


class InjectedFault(RuntimeError):
    """Raised by a ClientApp told to fail (``faults.raise_clients``)."""


def fault_for(faults: Mapping[str, Any] | None, partition_id: int, server_round: int) -> str | None:
    """The fault this client injects in this round, or None.

    Parameters
    ----------
    faults
        The config's ``faults`` block (may be None or empty).
    partition_id, server_round
        Who and when.
    """
    if not faults:
        return None
    rounds = list(faults.get("rounds") or [])
    if rounds and server_round not in rounds:
        return None
    for kind, key in FAULT_KINDS.items():
        if partition_id in list(faults.get(key) or []):
            return kind
    return None


def corrupt(arrays: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """A corrupted copy of a model's arrays: ``nan`` puts NaN in the first floating array;
    ``bad_shape`` drops the last array and gives the first one a wrong shape."""
    out = dict(arrays)
    first = next(k for k, v in out.items() if np.issubdtype(v.dtype, np.floating))
    if kind == "nan":
        bad = out[first].copy()
        bad.reshape(-1)[0] = np.nan
        out[first] = bad
    elif kind == "bad_shape":
        out.pop(list(out)[-1])
        out[first] = np.zeros(out[first].size + 1, dtype=out[first].dtype)
    else:
        raise ValueError(f"unknown corruption {kind!r}: allowed nan, bad_shape")
    return out
