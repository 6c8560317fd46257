"""The ``Grid`` of ``engine=fast``: Flower's :class:`~flwr.serverapp.Grid` interface over a pool of
Ray actors that each run many virtual clients per call, and the scheduling of those calls.

A module of its own so that :mod:`fedsim.engine.fast` imports no Flower until Ray is up (Flower's
import costs the driver about 0.4 s).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger("fedsim")


class WorkerStartError(RuntimeError):
    """A worker of ``engine=fast`` could not load the data or the ClientApp."""


#: Used when ``engine.chunks_per_actor`` is absent (conf/engine/fast.yaml sets it).
DEFAULT_CHUNKS_PER_ACTOR = 2


#: Calls an actor may hold at once: one running, one queued behind it, so that an actor that
#: finishes a call starts the next at once instead of waiting for the driver's next poll.
MAX_CALLS_PER_ACTOR = 2

#: The load an actor that is still starting counts as (see :class:`FastGrid`'s ``starting``):
#: :func:`pick_actor` then hands it nothing while another actor can take a call.
STARTING_LOAD = 1 << 62


def pick_actor(
    load: list[int], calls: list[int], max_calls: int = MAX_CALLS_PER_ACTOR
) -> int | None:
    """The actor to hand the next call to, or None to wait for a call to end.

    The next call goes to the actor with the fewest clients in flight (``load``; ties: fewer
    calls, then the lower index), and only if it holds fewer than ``max_calls`` calls. Handing
    it to any actor with a free slot instead queues small end-of-round calls behind a large one
    while another actor runs dry: 10 equal clients on 2 actors then take 6 client-times
    instead of 5.

    >>> pick_actor([3, 4], [1, 2])
    0
    >>> pick_actor([4, 3], [2, 2]) is None  # the least-loaded actor is full: wait
    True
    """
    if not load:
        return None
    best = min(range(len(load)), key=lambda i: (load[i], calls[i], i))
    return best if calls[best] < max_calls else None


def guided_chunks(n: int, actors: int, chunks_per_actor: int) -> list[int]:
    """Call sizes for ``n`` clients on ``actors`` actors, by guided self-scheduling: each call
    takes ``ceil(remaining / (chunks_per_actor * actors))`` clients, so calls shrink toward a
    single client and the actors end a round within about one client of each other.

    >>> guided_chunks(50, 2, 2)
    [13, 10, 7, 5, 4, 3, 2, 2, 1, 1, 1, 1]
    """
    if n < 0 or actors < 1 or chunks_per_actor < 1:
        raise ValueError(
            f"guided_chunks({n}, {actors}, {chunks_per_actor}): need n >= 0, others >= 1"
        )
    sizes: list[int] = []
    left = n
    while left:
        size = -(-left // (chunks_per_actor * actors))
        sizes.append(size)
        left -= size
    return sizes


class FastGrid(Grid):
    """A :class:`~flwr.serverapp.Grid` whose nodes are virtual clients on a Ray actor pool.

    Parameters
    ----------
    actors
        Ray actor handles of :class:`~fedsim.engine.worker.ClientWorker`.
    contexts
        One Context per node id (the node's ``partition-id`` in its node config).
    chunks_per_actor
        Each call takes ``1 / (chunks_per_actor * actors)`` of the round's clients not yet handed
        out (see :func:`guided_chunks`); the actor with the fewest clients in flight takes the
        next call, up to two calls each (see :func:`pick_actor`).
    starting
        Optional, one Ray object ref per actor that resolves once the actor can take calls (its
        ``load``). Until then the actor gets no call, so that the first round starts on the
        actors that are ready while the others still import their libraries; the first push
        waits until one actor is ready (the round's timeout starts after it). A ref that
        raises is a worker that failed to start: the grid raises :class:`WorkerStartError`.
    """

    def __init__(
        self,
        actors: list[Any],
        contexts: dict[int, Context],
        chunks_per_actor: int = DEFAULT_CHUNKS_PER_ACTOR,
        starting: Sequence[Any] = (),
    ) -> None:
        self._actors = list(actors)
        if starting and len(starting) != len(self._actors):
            raise ValueError(f"{len(starting)} starting refs for {len(self._actors)} actors")
        # Per actor: calls in flight and the clients in them (see :func:`pick_actor`).
        self._calls = [0] * len(self._actors)
        self._load = [0] * len(self._actors)
        self._starting: dict[Any, int] = {ref: i for i, ref in enumerate(starting)}
        for i in self._starting.values():
            self._calls[i], self._load[i] = MAX_CALLS_PER_ACTOR, STARTING_LOAD
        self._contexts = contexts
        self._chunks_per_actor = max(1, chunks_per_actor)
        self._queue: deque[Message] = deque()
        self._chunk_sizes: deque[int] = deque()
        self._inflight: dict[Any, tuple[int, list[Message]]] = {}  # ref -> (actor index, messages)
        self._replies: dict[str, Message] = {}
        self._run: Any = None

    # -- Grid API --------------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"no node {msg.metadata.dst_node_id} in this federation")
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self._queue.append(msg)
            ids.append(msg.metadata.message_id)
        sizes = guided_chunks(len(self._queue), max(1, len(self._actors)), self._chunks_per_actor)
        self._chunk_sizes = deque(sizes)
        if self._starting and len(self._starting) == len(self._actors):
            self._collect(block=None)  # no actor is ready yet: wait for the first
        self._dispatch()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._collect()
        out = [self._replies.pop(mid) for mid in message_ids if mid in self._replies]
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                self._collect(block=0.05)
        return replies

    def wait_for_replies(self, timeout: float) -> None:
        """Block until a call in flight ends or ``timeout`` seconds pass (not in Flower's Grid
        API; :func:`server.messaging.exchange` uses it instead of polling)."""
        if not self._inflight and not self._starting:
            # Nothing can arrive (every reply already came in): wait for the engine to stop
            # rather than spin, ending as soon as it does.
            from fedsim.engine.stop import ENGINE_STOP

            ENGINE_STOP.wait(timeout)
            return
        self._collect(block=timeout)

    def idle(self) -> bool:
        """Whether no call is in flight (not in Flower's Grid API: the session keeps the
        actors of a run that ended idle for its next run)."""
        return not self._inflight

    # -- scheduling -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._queue:
            i = pick_actor(self._load, self._calls)
            if i is None:
                return
            size = self._chunk_sizes.popleft() if self._chunk_sizes else len(self._queue)
            chunk = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            batch = [(m, self._contexts[m.metadata.dst_node_id]) for m in chunk]
            ref = self._actors[i].run_batch.remote(batch)
            self._inflight[ref] = (i, chunk)
            self._calls[i] += 1
            self._load[i] += len(chunk)

    def _collect(self, block: float | None = 0.0) -> None:
        """Take the calls that ended (and the actors that became ready), waiting up to
        ``block`` seconds for the first (None: without limit)."""
        import ray
        from flwr.common.constant import ErrorCode

        from fedsim.engine.worker import from_wire

        if not self._inflight and not self._starting:
            return
        refs = [*self._inflight, *self._starting]
        # Wake at the first call that ends, then take every other one already done. (Asking
        # ray.wait for all of them with a timeout returns only at the timeout when the results
        # sit in the object store: about 50 ms late at each round's end.)
        ready = refs
        if block is None or block:
            ready, _ = ray.wait(refs, num_returns=1, timeout=block)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in [r for r in ready if r in self._starting]:
            i = self._starting.pop(ref)
            try:
                ray.get(ref)
            except Exception as ex:
                raise WorkerStartError(f"engine=fast: worker {i} failed to start: {ex}") from ex
            self._calls[i], self._load[i] = 0, 0
        done = [(ref, *self._inflight.pop(ref)) for ref in ready if ref in self._inflight]
        for _, i, chunk in done:  # an actor that finished takes its next chunk before we unpack
            self._calls[i] -= 1
            self._load[i] -= len(chunk)
        self._dispatch()
        for ref, _, chunk in done:
            try:
                results = ray.get(ref)
            except Exception as ex:  # the actor died or the call failed outside the ClientApp
                log.error("engine=fast: a worker call failed: %s", ex)
                results = [
                    (
                        Message(
                            Error(code=ErrorCode.UNKNOWN, reason=f"{type(ex)}:<'{ex}'>"), reply_to=m
                        ),
                        self._contexts[m.metadata.dst_node_id],
                    )
                    for m in chunk
                ]
                for r, _ in results:
                    r.metadata.__dict__["_message_id"] = str(uuid4())
            for reply, context in results:
                from_wire(reply)
                self._contexts[reply.metadata.src_node_id] = context
                self._replies[reply.metadata.reply_to_message_id] = reply
