"""``engine=fast``: the same ServerApp and ClientApp, driven through Flower's ``Grid`` interface by
our own implementation on a pool of long-lived Ray actors.

The stock runtime runs one ClientApp call per Ray task round trip, polls its queues every 0.1 s and
serialises the model once per client. Here each actor keeps the dataset (put once in Ray's object
store) and a model instance resident, and the grid hands it many virtual clients per call: the
round's messages share one payload, which is serialised once per call. Client contexts live in the
driver and travel with each call, so ``Context.state`` persists across rounds as in the stock
runtime; a ClientApp exception comes back as a Flower error reply. The grid itself is in
:mod:`fedsim.engine.grid`; this module imports no Flower until Ray is up.
"""

from __future__ import annotations

import gc
import logging
import random
from dataclasses import fields
from typing import Any

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


def _dataset_payload(cfg: DictConfig) -> dict[str, Any]:
    from fedsim.data import load_dataset

    data = load_dataset(
        str(cfg.dataset.name), root=str(cfg.dataset.root), download=bool(cfg.dataset.download)
    )
    values: dict[str, Any] = {}
    for f in fields(data):
        v = getattr(data, f.name)
        values[f.name] = v.numpy() if hasattr(v, "numpy") else v
    return {"fields": values, "root": str(cfg.dataset.root), "download": bool(cfg.dataset.download)}


#: Seconds :meth:`ActorPool.answers` waits for idle actors to answer a ping.
PING_TIMEOUT_S = 10.0


class ActorPool:
    """The Ray actors of ``engine=fast`` (:class:`~fedsim.engine.worker.ClientWorker`), kept
    for the runs of an :class:`~fedsim.engine.session.EngineSession` while their resources stay
    the same.

    Parameters
    ----------
    client_cpus, client_gpus
        Ray resources per actor (``engine.client_cpus``, ``engine.client_gpus``).

    Notes
    -----
    Actors are created by :meth:`take` without waiting for them, so that they import their
    libraries while the driver loads the data (both take seconds). Ray is initialised by the
    session in the caller's thread: Ray's driver API must stay in the thread that started it.
    """

    def __init__(self, client_cpus: float, client_gpus: float) -> None:
        self.client_cpus = client_cpus
        self.client_gpus = client_gpus
        self.actors: list[Any] = []

    def fits(self, client_cpus: float, client_gpus: float) -> bool:
        """Whether the actors have these resources each."""
        return (self.client_cpus, self.client_gpus) == (client_cpus, client_gpus)

    def take(self, num_clients: int) -> list[Any]:
        """The actors for a run of ``num_clients`` clients: as many as fit in the cluster (at
        most one per client), creating those missing (not awaited).

        Raises
        ------
        ConfigError
            If no Ray node can host one actor.
        """
        import ray

        from fedsim.engine.worker import ClientWorker  # after Ray's start: numpy, 0.06-0.1 s

        cpus, gpus = self.client_cpus, self.client_gpus
        n_actors = pool_size(cpus, gpus)
        if n_actors < 1:
            raise ConfigError(
                f"no Ray node can host a client with engine.client_cpus={cpus} and "
                f"engine.client_gpus={gpus}: Ray sees {ray.cluster_resources()}"
            )
        n_actors = min(n_actors, num_clients)
        remote = ray.remote(ClientWorker).options(num_cpus=cpus, num_gpus=gpus)
        while len(self.actors) < n_actors:
            actor: Any = remote.remote()
            actor.ping.remote()  # imports the ClientApp now, before the run's first call
            self.actors.append(actor)
        return self.actors[:n_actors]

    def answers(self, timeout: float = PING_TIMEOUT_S) -> bool:
        """Whether every actor answers a ping within ``timeout`` seconds (idle actors answer in
        milliseconds; a dead one raises)."""
        import ray

        try:
            ready, _ = ray.wait(
                [a.ping.remote() for a in self.actors],
                num_returns=len(self.actors),
                timeout=timeout,
            )
            ray.get(ready)
        except Exception:
            return False
        return len(ready) == len(self.actors)

    def close(self) -> None:
        """Stop the actors (idempotent)."""
        import ray

        actors, self.actors = self.actors, []
        for a in actors:
            ray.kill(a)


class FastRun:
    """The actors of one run (what :func:`run_fast` takes as ``prestarted``).

    ``reusable`` is set by :func:`run_fast` when the run ended with no call in flight, so
    that the session may give the actors to its next run.
    """

    def __init__(self, actors: list[Any]) -> None:
        self.actors = actors
        self.reusable = False


@ENGINES.register("fast")
def run_fast(cfg: DictConfig, prestarted: FastRun | None = None) -> None:
    """Run the fedsim apps for ``cfg`` on fedsim's actor-pool grid.

    ``prestarted``: the run's actors, from :meth:`EngineSession.begin
    <fedsim.engine.session.EngineSession.begin>`; None: a one-run session provides them.
    """
    import ray
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.engine.grid import DEFAULT_CHUNKS_PER_ACTOR, FastGrid
    from fedsim.engine.stop import ENGINE_STOP
    from fedsim.plugins import SERVER_APP, load_object

    if prestarted is None:
        from fedsim.engine.session import EngineSession, open_session

        session = open_session()
        if session is None:
            with EngineSession(cfg.engine, verbose=bool(cfg.get("verbose"))):
                return run_fast(cfg)
        handle = session.begin(cfg)
        failed = True
        try:
            run_fast(cfg, handle)
            failed = False
        finally:
            session.end(handle, failed=failed)
        return
    ENGINE_STOP.clear()  # another engine may have set it when it stopped in this process
    pre = prestarted
    frozen = False
    try:
        # The actors load the data after their ping (an actor runs its calls in order) while
        # the ServerApp starts; the grid hands calls only to actors that have loaded, so round 1
        # starts on the first ready actor while the other still imports its libraries.
        actors = pre.actors
        run_config = to_run_config(cfg)
        payload = ray.put(_dataset_payload(cfg))
        loads = [a.load.remote(payload, dict(run_config)) for a in actors]
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
                run_id=run_id,
                node_id=nid,
                node_config={"partition-id": pid, "num-partitions": n},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for pid, nid in enumerate(node_ids)
        }
        grid = FastGrid(
            actors,
            contexts,
            chunks_per_actor=int(cfg.engine.get("chunks_per_actor", DEFAULT_CHUNKS_PER_ACTOR)),
            starting=loads,
        )
        context = Context(
            run_id=run_id,
            node_id=0,
            node_config={},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        # Everything built so far (modules, data, Ray's state) lives for the whole run: moved
        # out of the collector's sight, it is not traversed again by each full collection (one
        # took 159 ms of the server's time in round 3 at 200 clients, stalling the round's end).
        gc.freeze()
        frozen = True
        load_object(SERVER_APP)(grid, context)
        pre.reusable = grid.idle()
    finally:
        if frozen:
            gc.unfreeze()
