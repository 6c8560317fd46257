"""``engine=fast``: the same ServerApp and ClientApp, driven through Flower's ``Grid`` interface by
our own implementation on a pool of long-lived Ray actors.

The stock runtime runs one ClientApp call per Ray task round trip, polls its queues every 0.1 s and
serialises the model once per client. Here each actor keeps the dataset (put once in Ray's object
store) and a model instance resident, and the grid hands it many virtual clients per call: the
round's messages share one payload, which is serialised once per call. Client contexts live in the
driver and travel with each call, so ``Context.state`` persists across rounds as in the stock
runtime; a ClientApp exception comes back as a Flower error reply.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import fields
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from fedsim.config import to_run_config
from fedsim.engine import ENGINES
from fedsim.errors import ConfigError

log = logging.getLogger("fedsim")


def pool_size(client_cpus: float, client_gpus: float) -> int:
    """Actors that fit in the Ray cluster: per node min(CPUs/client_cpus, GPUs/client_gpus)."""
    import ray

    total = 0
    for node in ray.nodes():
        res = node.get("Resources") or {}
        if not node.get("Alive", True) or not res:
            continue
        n = int(res.get("CPU", 0) // client_cpus)
        if client_gpus > 0:
            n = min(n, int(res.get("GPU", 0) // client_gpus))
        total += n
    return total


class FastGrid(Grid):
    """A :class:`~flwr.serverapp.Grid` whose nodes are virtual clients on a Ray actor pool.

    Parameters
    ----------
    actors
        Ray actor handles of :class:`~fedsim.engine.worker.ClientWorker`.
    contexts
        One Context per node id (the node's ``partition-id`` in its node config).
    chunks_per_actor
        A round's messages are cut into about this many calls per actor (load balancing vs. per-call
        overhead); idle actors take the next chunk.
    """

    def __init__(self, actors: list[Any], contexts: dict[int, Context], chunks_per_actor: int = 4) -> None:
        self._actors = list(actors)
        self._idle: deque[Any] = deque(self._actors)
        self._contexts = contexts
        self._chunks_per_actor = max(1, chunks_per_actor)
        self._queue: deque[Message] = deque()
        self._chunk = 1
        self._inflight: dict[Any, tuple[Any, list[Message]]] = {}  # ref -> (actor, messages)
        self._replies: dict[str, Message] = {}
        self._run: Any = None

    # -- Grid API --------------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

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
        workers = max(1, len(self._actors))
        self._chunk = max(1, math.ceil(len(self._queue) / (workers * self._chunks_per_actor)))
        self._dispatch()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._collect()
        out = [self._replies.pop(mid) for mid in message_ids if mid in self._replies]
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
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

    # -- scheduling -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._queue and self._idle:
            actor = self._idle.popleft()
            chunk = [self._queue.popleft() for _ in range(min(self._chunk, len(self._queue)))]
            batch = [(m, self._contexts[m.metadata.dst_node_id]) for m in chunk]
            ref = actor.run_batch.remote(batch)
            self._inflight[ref] = (actor, chunk)

    def _collect(self, block: float = 0.0) -> None:
        import ray
        from flwr.common.constant import ErrorCode

        if not self._inflight:
            return
        ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=block)
        if not ready and block:
            ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=block)
        for ref in ready:
            actor, chunk = self._inflight.pop(ref)
            try:
                results = ray.get(ref)
            except Exception as ex:  # the actor died or the call failed outside the ClientApp
                log.error("engine=fast: a worker call failed: %s", ex)
                results = [
                    (Message(Error(code=ErrorCode.UNKNOWN, reason=f"{type(ex)}:<'{ex}'>"), reply_to=m),
                     self._contexts[m.metadata.dst_node_id])
                    for m in chunk
                ]
                for r, _ in results:
                    r.metadata.__dict__["_message_id"] = str(uuid4())
            for reply, context in results:
                self._contexts[reply.metadata.src_node_id] = context
                self._replies[reply.metadata.reply_to_message_id] = reply
            self._idle.append(actor)
        self._dispatch()


def _dataset_payload(cfg: DictConfig) -> dict[str, Any]:
    from fedsim.data import load_dataset

    data = load_dataset(str(cfg.dataset.name), root=str(cfg.dataset.root), download=bool(cfg.dataset.download))
    values: dict[str, Any] = {}
    for f in fields(data):
        v = getattr(data, f.name)
        values[f.name] = v.numpy() if hasattr(v, "numpy") else v
    return {"fields": values, "root": str(cfg.dataset.root), "download": bool(cfg.dataset.download)}


def _ray_init(cfg: DictConfig) -> bool:
    """Start (or join) Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    eng = cfg.engine
    pythonpath = os.pathsep.join(p for p in sys.path if p)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if cfg.get("verbose") else logging.WARNING,
        "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
    }
    if eng.get("ray_address"):
        args["address"] = str(eng.ray_address)
    else:
        if eng.get("num_cpus") is not None:
            args["num_cpus"] = int(eng.num_cpus)
        if eng.get("num_gpus") is not None:
            args["num_gpus"] = int(eng.num_gpus)
    ray.init(**args)
    return True


@ENGINES.register("fast")
def run_fast(cfg: DictConfig) -> None:
    """Run the fedsim apps for ``cfg`` on fedsim's actor-pool grid."""
    import ray
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.engine.worker import ClientWorker
    from server.app import app as server_app

    started = _ray_init(cfg)
    actors: list[Any] = []
    try:
        cpus, gpus = float(cfg.engine.client_cpus), float(cfg.engine.client_gpus)
        n_actors = pool_size(cpus, gpus)
        if n_actors < 1:
            raise ConfigError(
                f"no Ray node can host a client with engine.client_cpus={cpus} and "
                f"engine.client_gpus={gpus}: Ray sees {ray.cluster_resources()}"
            )
        n_actors = min(n_actors, int(cfg.num_clients))
        payload = ray.put(_dataset_payload(cfg))
        remote = ray.remote(ClientWorker).options(num_cpus=cpus, num_gpus=gpus)
        actors = [remote.remote(payload) for _ in range(n_actors)]
        ray.get([a.ping.remote() for a in actors])

        run_config = to_run_config(cfg)
        rng = random.Random(int(cfg.seed))
        run_id = rng.getrandbits(63)
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        n = int(cfg.num_clients)
        node_ids: list[int] = []
        while len(node_ids) < n:
            nid = rng.getrandbits(63)
            if nid not in node_ids and nid != SUPERLINK_NODE_ID:
                node_ids.append(nid)
        contexts = {
            nid: Context(
                run_id=run_id, node_id=nid,
                node_config={"partition-id": pid, "num-partitions": n},
                state=RecordDict(), run_config=dict(run_config),
            )
            for pid, nid in enumerate(node_ids)
        }
        grid = FastGrid(actors, contexts, chunks_per_actor=int(cfg.engine.get("chunks_per_actor", 4)))
        context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
        server_app(grid, context)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
