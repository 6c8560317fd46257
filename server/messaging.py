"""Sending messages to nodes and collecting their replies, with a deadline and a stop signal."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedsim.engine.stop import ENGINE_STOP

__all__ = ["ENGINE_STOP", "EngineStopped", "exchange"]


class EngineStopped(RuntimeError):
    """The simulation engine stopped while the server was waiting for replies."""


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float,
    on_reply: Callable[[int, Message], None] | None = None,
) -> list[Message | None]:
    """Push ``messages`` and pull replies until all arrived or ``timeout`` seconds passed.

    Returns one entry per message, in order: its reply, or None if none came in time. Replies are
    matched by the id of the message they answer (an error reply made by the SuperLink for an
    unreachable node does not carry that node's id as its source). ``on_reply(i, reply)`` is
    called as each reply arrives (``i``: its message's position), so that per-reply work such as
    validation overlaps with the clients still training.

    A grid with a ``wait_for_replies(timeout)`` method (``engine=fast``'s) is waited on, so that
    a reply is taken the moment it arrives. Other grids are polled quickly at first (replies of
    small clients come within milliseconds), backing off to 0.1 s. Raises
    :class:`EngineStopped` if :data:`ENGINE_STOP` is set meanwhile.
    """
    ids = [mid for mid in grid.push_messages(messages)]
    index = {mid: i for i, mid in enumerate(ids) if mid}
    pending = set(index)
    replies: list[Message | None] = [None] * len(ids)
    deadline = time.monotonic() + timeout
    interval = 0.001
    wait = getattr(grid, "wait_for_replies", None)
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(list(pending)))
        if got:
            for m in got:
                mid = m.metadata.reply_to_message_id
                if mid in pending:
                    replies[index[mid]] = m
                    pending.discard(mid)
                    if on_reply is not None:
                        on_reply(index[mid], m)
            interval = 0.001
            continue
        if ENGINE_STOP.is_set():
            raise EngineStopped("the simulation engine stopped while the server awaited replies")
        if wait is not None:  # the grid can block until a reply comes: no polling latency
            wait(min(0.1, max(0.0, deadline - time.monotonic())))
            continue
        time.sleep(interval)
        interval = min(interval * 2, 0.1)
    return replies


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float) -> list[Message]:
    """The replies that came within ``timeout`` seconds (see :func:`exchange`)."""
    return [r for r in exchange(grid, messages, timeout=timeout) if r is not None]
