"""Checks of client replies before aggregation (pure functions)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from fedsim.constants import ARRAYS_KEY, NUM_EXAMPLES_KEY
from fedsim.records import dtype_name, to_numpy


def check_train_reply(
    reply: Message, reference: ArrayRecord
) -> tuple[str | None, dict[str, np.ndarray]]:
    """``(problem, decoded arrays)``: why a train reply must not be aggregated (None when it is
    well formed), and its arrays decoded once (empty when refused).

    A reply is refused when it is an error, lacks the model or the example count, or when its
    arrays differ from ``reference`` in names, shapes or dtypes, or hold NaN/inf.
    """
    if reply.has_error():
        return f"client error: {reply.error.reason}", {}
    content = reply.content
    records = content.array_records  # Flower builds these views anew on each access
    if ARRAYS_KEY not in records:
        return f"reply has no {ARRAYS_KEY!r} ArrayRecord", {}
    if not any(NUM_EXAMPLES_KEY in m for m in content.metric_records.values()):
        return f"reply has no {NUM_EXAMPLES_KEY!r} metric", {}
    arrays = records[ARRAYS_KEY]
    if list(arrays.keys()) != list(reference.keys()):
        return (
            f"reply has {len(arrays)} arrays named differently from the model's {len(reference)}",
            {},
        )
    decoded: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        ref = reference[name]
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
            return (
                f"array {name!r} is {arr.dtype}{list(arr.shape)}, expected {ref.dtype}{list(ref.shape)}",
                {},
            )
        try:
            values = to_numpy(arr)
        except Exception as ex:  # undecodable bytes
            return f"array {name!r} cannot be decoded: {ex}", {}
        if tuple(values.shape) != tuple(ref.shape) or dtype_name(values.dtype) != ref.dtype:
            return (
                f"array {name!r} holds {values.dtype}{list(values.shape)}, not what it declares",
                {},
            )
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"array {name!r} holds NaN or inf", {}
        decoded[name] = values
    return None, decoded


def train_reply_problem(reply: Message, reference: ArrayRecord) -> str | None:
    """Why a train reply must not be aggregated, or None when it is well formed
    (see :func:`check_train_reply`)."""
    return check_train_reply(reply, reference)[0]
