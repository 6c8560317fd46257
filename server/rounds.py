"""The message exchanges of a round: node discovery, one round of training (replies validated before
aggregation), federated evaluation. Plain functions the workflow calls; no component logic here."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import constants as C
from fedsim.records import DecodedArray, array_record, to_numpy
from server.messaging import exchange, send_and_receive
from server.validation import check_train_reply
from strategies.grid_view import SampledGrid

log = logging.getLogger("fedsim")


class TooFewReplies(RuntimeError):
    """Fewer than ``min_clients`` usable replies in a round."""

    def __init__(self, message: str, *, failures: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.failures = failures


def keep_dtypes(new: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``new`` with every array cast back to the dtype of the same array in ``reference``.

    The stock strategies average BatchNorm's integer ``num_batches_tracked`` with float weights
    and return a float, which the next round's reply check would refuse; the weighted mean is
    cast back to the integer dtype (as the reference code of FAL does).
    """
    fixed = {
        name: to_numpy(arr).astype(np.dtype(reference[name].dtype))
        for name, arr in new.items()
        if name in reference and arr.dtype != reference[name].dtype
    }
    if not fixed:
        return new
    return array_record({n: fixed[n] if n in fixed else to_numpy(a) for n, a in new.items()})


def discover_nodes(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Map partition ids to node ids by asking every node (node ids are random per run)."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of num_clients={num_clients} nodes connected")
        time.sleep(0.2)
    messages = [
        Message(RecordDict({}), dst_node_id=nid, message_type=MessageType.QUERY) for nid in node_ids
    ]
    node_of: dict[int, int] = {}
    for reply in send_and_receive(grid, messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed: {reply.error.reason}")
        pid = int(reply.content.config_records[C.QUERY_PARTITION][C.PARTITION_ID_KEY])  # type: ignore[arg-type]
        if pid in node_of:
            raise RuntimeError(f"two nodes claim partition-id {pid}")
        node_of[pid] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(node_of))
    if missing:
        raise RuntimeError(
            f"no node holds partition-id(s) {missing[:10]} of num_clients={num_clients}"
        )
    return node_of


def sampled_view(
    grid: Grid, node_of: dict[int, int], partitions: list[int]
) -> tuple[SampledGrid, dict[int, int]]:
    """The grid as a strategy should see it (only the nodes of ``partitions``), and node id ->
    partition id."""
    return SampledGrid(grid, [node_of[p] for p in partitions]), {n: p for p, n in node_of.items()}


def train_clients(
    grid: Grid,
    strategy: Strategy,
    server_round: int,
    arrays: ArrayRecord,
    *,
    node_of: dict[int, int],
    partitions: list[int],
    config: dict[str, Any],
    timeout: float,
    min_clients: int,
) -> tuple[ArrayRecord, dict[str, Any], list[dict[str, Any]]]:
    """Train ``partitions`` for one round and aggregate; the new arrays, the train metrics and the
    failed clients (``{"client", "reason"}``).

    Every reply is validated before aggregation; errors, timeouts and malformed updates are
    failures. Raises :class:`TooFewReplies` when fewer than ``min_clients`` are usable.
    """
    view, pid_of = sampled_view(grid, node_of, partitions)
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(config), view))
    problems: dict[int, str | None] = {}

    def check(i: int, reply: Message) -> None:  # as replies arrive, while others train
        problem, decoded = check_train_reply(reply, arrays)
        if problem is None:  # hand the strategy arrays it need not decode again
            record = cast(ArrayRecord, reply.content[C.ARRAYS_KEY])  # checked above
            for name, arr in record.items():
                DecodedArray.adopt(arr, decoded[name])
        problems[i] = problem

    answers = exchange(grid, messages, timeout=timeout, on_reply=check)
    good: list[Message] = []
    failed: list[dict[str, Any]] = []
    # Sorted by partition id: floating-point sums depend on the order.
    for i, msg, reply in sorted(
        zip(range(len(messages)), messages, answers, strict=True),
        key=lambda imr: pid_of.get(imr[1].metadata.dst_node_id, -1),
    ):
        pid = pid_of.get(msg.metadata.dst_node_id)
        if reply is None:
            failed.append({"client": pid, "reason": "no reply (round_timeout)"})
            continue
        problem = problems[i]
        if problem is None:
            good.append(reply)
        else:
            failed.append({"client": pid, "reason": problem})
            log.warning("round %d, client %s refused: %s", server_round, pid, problem)
    if len(good) < min_clients:
        raise TooFewReplies(
            f"round {server_round}: {len(good)} of {len(messages)} sampled clients replied "
            f"usably (min_clients={min_clients})",
            failures=failed,
        )
    new_arrays, metrics = strategy.aggregate_train(server_round, good)
    if new_arrays is None:
        raise RuntimeError(f"round {server_round}: strategy returned no model")
    return keep_dtypes(new_arrays, arrays), dict(metrics or {}), failed


def federated_evaluate(
    grid: Grid,
    strategy: Strategy,
    server_round: int,
    arrays: ArrayRecord,
    *,
    node_of: dict[int, int],
    partitions: list[int],
    timeout: float,
) -> dict[str, float]:
    """Clients evaluate the global model on their partitions (weighted means)."""
    view, pid_of = sampled_view(grid, node_of, partitions)
    messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), view))
    replies = send_and_receive(grid, messages, timeout=timeout)
    usable = sorted(
        (r for r in replies if not r.has_error()),
        key=lambda r: pid_of.get(r.metadata.src_node_id, -1),
    )  # floating-point sums depend on order
    metrics = strategy.aggregate_evaluate(server_round, usable)
    return {
        f"federated_{k}": float(v)  # type: ignore[arg-type]
        for k, v in dict(metrics or {}).items()
        if k != C.NUM_EXAMPLES_KEY
    }


def ask_all(
    grid: Grid,
    node_of: dict[int, int],
    message_type: str,
    content: dict[str, Any],
    *,
    timeout: float,
    what: str,
) -> dict[int, dict[str, Any]]:
    """Send one message of ``message_type`` with ``content`` (a ``config`` dict plus records; a
    value may be a function of the partition id) to every client; their metric records by
    partition id. Any error or missing reply raises."""
    pid_of = {nid: pid for pid, nid in node_of.items()}
    messages = []
    for pid in sorted(node_of):
        config = content.get(C.CONFIG_KEY, {})
        rd = RecordDict({C.CONFIG_KEY: ConfigRecord(config(pid) if callable(config) else config)})
        for key, rec in content.items():
            if key != C.CONFIG_KEY:
                rd[key] = rec(pid) if callable(rec) else rec
        messages.append(Message(rd, dst_node_id=node_of[pid], message_type=message_type))
    out: dict[int, dict[str, Any]] = {}
    for reply in send_and_receive(grid, messages, timeout=timeout):
        pid = pid_of.get(reply.metadata.src_node_id, -1)
        if reply.has_error():
            raise RuntimeError(f"{what}: client {pid} failed: {reply.error.reason}")
        out[pid] = dict(reply.content.metric_records[C.METRICS_KEY])
    missing = sorted(set(node_of) - set(out))
    if missing:
        raise RuntimeError(f"{what}: no reply from clients {missing}")
    return out
