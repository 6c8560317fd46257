"""``engine=fast`` starts round 1 on the actors that are ready: FastGrid's ``starting`` refs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fedsim.engine.grid import FastGrid, WorkerStartError
from fedsim.engine.session import EngineSession


@pytest.fixture(scope="module")
def local_ray(engine_session: EngineSession) -> Iterator[None]:
    from fedsim.engine.localray import start_ray, stop_ray

    engine_session.close()  # a Ray of its own, with no session actors on its CPUs
    started = start_ray({"num_cpus": 2, "lean_ray": True}, verbose=False)
    try:
        yield
    finally:
        if started:
            stop_ray()


def _gate() -> Any:
    """A Ray actor that holds back whoever waits on it until the test opens it."""
    import ray

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self) -> None:
            import asyncio

            self.event = asyncio.Event()

        async def wait(self) -> bool:
            await self.event.wait()
            return True

        async def open(self) -> None:
            self.event.set()

    return Gate.remote()


def _echo_worker() -> Any:
    """A stand-in for ClientWorker: ``load`` returns once ``gate`` opens (at once without one)
    or raises, and each reply names the worker that made it."""
    import ray

    @ray.remote(num_cpus=1)
    class Echo:
        def __init__(self, name: str) -> None:
            self.name = name

        def load(self, gate: Any = None, fail: bool = False) -> bool:
            if gate is not None:
                ray.get(gate.wait.remote())
            if fail:
                raise ValueError(f"{self.name} cannot load")
            return True

        def run_batch(self, batch: list[Any]) -> list[Any]:
            from flwr.app import ConfigRecord, Message, RecordDict
            from flwr.supercore.task_identity import TaskIdentity

            from fedsim.engine.worker import to_wire

            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
            out = []
            for message, context in batch:
                reply = Message(
                    RecordDict({"who": ConfigRecord({"name": self.name})}), reply_to=message
                )
                reply.metadata.__dict__["_message_id"] = f"r-{message.metadata.message_id}"
                to_wire(reply)
                out.append((reply, context))
            return out

    return Echo


def _grid(actors: list[Any], starting: list[Any]) -> FastGrid:
    from flwr.app import Context, RecordDict

    contexts = {
        nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
        for nid in (11, 12, 13, 14)
    }
    return FastGrid(actors, contexts, chunks_per_actor=2, starting=starting)


def _messages(grid: FastGrid) -> list[Any]:
    from flwr.app import RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    return [grid.create_message(RecordDict(), "train", nid, "1") for nid in (11, 12, 13, 14)]


def test_round_one_runs_on_the_ready_actor_while_the_other_loads(local_ray: None) -> None:
    import ray

    echo = _echo_worker()
    gate = _gate()
    slow, fast = echo.remote("slow"), echo.remote("fast")
    starting = [slow.load.remote(gate), fast.load.remote()]
    grid = _grid([slow, fast], starting)
    replies = list(grid.send_and_receive(_messages(grid), timeout=60))
    assert len(replies) == 4
    # Every client ran on the actor that had loaded; the other is still held at the gate.
    assert {r.content["who"]["name"] for r in replies} == {"fast"}
    ready, _ = ray.wait([starting[0]], timeout=0)
    assert not ready
    # Once it has loaded, the late actor takes calls too.
    gate.open.remote()
    assert ray.get(starting[0]) is True
    replies = list(grid.send_and_receive(_messages(grid), timeout=60))
    assert len(replies) == 4
    assert "slow" in {r.content["who"]["name"] for r in replies}
    for actor in (slow, fast, gate):
        ray.kill(actor)


def test_a_worker_that_fails_to_load_stops_the_round(local_ray: None) -> None:
    import ray

    echo = _echo_worker()
    a, b = echo.remote("a"), echo.remote("b")
    grid = _grid([a, b], [a.load.remote(fail=True), b.load.remote(fail=True)])
    with pytest.raises(WorkerStartError, match="cannot load"):
        grid.send_and_receive(_messages(grid), timeout=60)
    ray.kill(a)
    ray.kill(b)


def test_starting_refs_must_match_the_actors() -> None:
    with pytest.raises(ValueError, match="1 starting refs for 2 actors"):
        FastGrid([object(), object()], {}, starting=[object()])
