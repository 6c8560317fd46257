"""``engine=fast`` and ``engine=flower`` drive the same apps to the same per-round metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.engine.grid import FastGrid
from fedsim.outputs import read_metrics
from fedsim.runner import run

TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}


def _metrics(tmp: Path, engine: str, overrides: list[str]) -> list[dict]:
    cfg = compose(["progress=false", f"engine={engine}", *overrides])
    cfg.output_dir = str(tmp / engine)
    run(cfg)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(tmp / engine)]


@pytest.mark.slow  # 27 s; both engines end to end (make test-all)
@pytest.mark.parametrize(
    "overrides",
    [
        [
            "rounds=4",
            "num_clients=12",
            "clients_per_round=5",
            "strategy=fedavgm",
            "checkpoint_every=0",
            "federated_eval_every=2",
        ],
        pytest.param(  # weak labels, a learner whose per-sample state must survive rounds
            [
                "rounds=3",
                "num_clients=6",
                "clients_per_round=4",
                "weak_labels=partial",
                "weak_labels.q=0.3",
                "local=proden",
                "checkpoint_every=0",
            ],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["fedavgm", "partial-labels-proden"],
)
def test_fast_and_flower_engines_give_identical_metrics(
    tmp_path: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    import server.app

    frozen_while_serving: list[int] = []
    serve = server.app.app

    def watched(grid: object, context: object) -> None:
        frozen_while_serving.append(gc.get_freeze_count())
        serve(grid, context)  # type: ignore[arg-type]

    monkeypatch.setattr(server.app, "app", watched)
    fast = _metrics(tmp_path, "fast", overrides)
    # start-up objects are frozen out of the collector during the rounds, and only then
    assert len(frozen_while_serving) == 1 and frozen_while_serving[0] > 0
    assert gc.get_freeze_count() == 0
    monkeypatch.undo()
    flower = _metrics(tmp_path, "flower", overrides)
    assert len(fast) == int(overrides[0].split("=")[1])
    assert fast == flower


def test_fast_grid_is_a_flower_grid() -> None:
    from flwr.serverapp import Grid

    assert issubclass(FastGrid, Grid)


def test_worker_turns_a_client_exception_into_an_error_reply() -> None:
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.common.constant import ErrorCode
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.config import to_run_config
    from fedsim.engine.worker import ClientWorker
    from fedsim.models import build_model
    from fedsim.records import array_record

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    cfg = compose([])
    model = build_model(
        "mlp", num_classes=10, in_channels=1, image_size=8, params={"hidden": [200, 200]}
    )
    content = RecordDict(
        {"arrays": array_record(model.state_dict()), "config": ConfigRecord({"server-round": 1})}
    )
    ok = Message(content, dst_node_id=5, message_type=MessageType.TRAIN)
    bad = Message(content, dst_node_id=6, message_type=MessageType.TRAIN)
    for m in (ok, bad):
        m.metadata.__dict__["_message_id"] = f"id-{m.metadata.dst_node_id}"

    def ctx(pid: int) -> Context:
        return Context(
            run_id=1,
            node_id=pid,
            node_config={"partition-id": pid, "num-partitions": 10},
            state=RecordDict(),
            run_config=to_run_config(cfg),
        )

    replies = ClientWorker().run_batch(
        [(ok, ctx(3)), (bad, ctx(99))]
    )  # partition 99 does not exist
    (good, _), (err, _) = replies
    assert not good.has_error() and good.content.metric_records["metrics"]["num-examples"] > 0
    assert err.has_error() and err.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "partition-id 99" in err.error.reason
    assert err.metadata.reply_to_message_id == "id-6"


def test_guided_chunks_shrink_to_one_client() -> None:
    from fedsim.engine.grid import guided_chunks

    # 50 clients, 2 actors, divisor 2*2=4: ceil(50/4)=13, ceil(37/4)=10, ceil(27/4)=7, ...
    assert guided_chunks(50, 2, 2) == [13, 10, 7, 5, 4, 3, 2, 2, 1, 1, 1, 1]
    assert guided_chunks(10, 2, 2) == [3, 2, 2, 1, 1, 1]
    assert guided_chunks(3, 4, 2) == [1, 1, 1]
    assert guided_chunks(0, 2, 2) == []
    assert guided_chunks(7, 1, 1) == [7]  # one actor, one call per round
    for n, actors, per in [(1000, 2, 2), (200, 3, 4), (17, 8, 1)]:
        sizes = guided_chunks(n, actors, per)
        assert sum(sizes) == n and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    with pytest.raises(ValueError):
        guided_chunks(5, 0, 2)


def _makespan(n: int, actors: int, per: int) -> tuple[float, list[int]]:
    """Event simulation of FastGrid's dispatch (guided chunks, pick_actor) for ``n`` clients
    that each take one time unit: when the round ends, and how many clients each actor ran."""
    import heapq

    from fedsim.engine.grid import guided_chunks, pick_actor

    sizes = guided_chunks(n, actors, per)
    load, calls, ran = [0] * actors, [0] * actors, [0] * actors
    free_at = [0.0] * actors  # when the actor's queued calls end
    ends: list[tuple[float, int, int]] = []  # (end time, actor, clients)
    now, end = 0.0, 0.0

    def dispatch() -> None:
        while sizes and (i := pick_actor(load, calls)) is not None:
            k = sizes.pop(0)
            free_at[i] = max(free_at[i], now) + k
            heapq.heappush(ends, (free_at[i], i, k))
            load[i] += k
            calls[i] += 1
            ran[i] += k

    dispatch()
    while ends:
        now, i, k = heapq.heappop(ends)
        load[i] -= k
        calls[i] -= 1
        end = max(end, now)
        dispatch()
    return end, ran


def test_pick_actor_ends_a_round_within_one_client() -> None:
    from fedsim.engine.grid import pick_actor

    assert pick_actor([3, 4], [1, 2]) == 0  # fewest clients in flight
    assert pick_actor([2, 2], [2, 1]) == 1  # tie: fewer calls
    assert pick_actor([0, 0], [0, 0]) == 0  # tie: lower index
    assert pick_actor([4, 3], [2, 2]) is None  # least loaded is full: wait for a call to end
    assert pick_actor([1, 5], [2, 1]) is None  # a free slot elsewhere is not taken
    assert pick_actor([], []) is None
    # 10 equal clients on 2 actors, calls [3, 2, 2, 1, 1, 1]: 5 each. (Handing each call to
    # whichever actor has a free slot ran 6 on one actor and 4 on the other.)
    assert _makespan(10, 2, 2) == (5.0, [5, 5])
    for n, actors, per in [(50, 2, 2), (200, 2, 2), (1000, 2, 2), (37, 3, 2), (100, 4, 1)]:
        end, ran = _makespan(n, actors, per)
        assert sum(ran) == n
        assert end <= -(-n // actors) + 1, (n, actors, per, end, ran)


def test_replies_travel_as_numpy_views_and_come_back_as_bytes() -> None:
    import pickle

    import numpy as np
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.engine.worker import from_wire, to_wire
    from fedsim.records import array_record

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.int64)}
    msg = Message(
        RecordDict({"arrays": array_record(state), "metrics": MetricRecord({"n": 3})}),
        dst_node_id=5,
        message_type="train",
    )
    original = {k: v.data for k, v in msg.content.array_records["arrays"].items()}
    to_wire(msg)
    assert all(isinstance(a.data, np.ndarray) for a in msg.content.array_records["arrays"].values())
    back = pickle.loads(pickle.dumps(msg, protocol=5))
    from_wire(back)
    arrays: ArrayRecord = back.content.array_records["arrays"]
    assert {k: v.data for k, v in arrays.items()} == original
    assert all(type(v.data) is bytes for v in arrays.values())
    from fedsim.records import FastViews

    assert type(back.content) is FastViews  # the server reads the reply's views cheaply
    np.testing.assert_array_equal(arrays["w"].numpy(), state["w"])
    np.testing.assert_array_equal(arrays["b"].numpy(), state["b"])


class _WaitingGrid:
    """A grid stub whose replies arrive only through ``wait_for_replies`` (as FastGrid's)."""

    def __init__(self, replies_after_waits: int) -> None:
        self.waits = 0
        self.after = replies_after_waits
        self.ids: list[str] = []

    def push_messages(self, messages: list[object]) -> list[str]:
        self.ids = [f"m{i}" for i in range(len(messages))]
        return self.ids

    def pull_messages(self, ids: list[str]) -> list[object]:
        if self.waits < self.after:
            return []
        from types import SimpleNamespace

        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids]

    def wait_for_replies(self, timeout: float) -> None:
        assert 0 < timeout <= 0.1
        self.waits += 1


def test_exchange_blocks_on_a_grid_that_can_wait() -> None:
    from server.messaging import ENGINE_STOP, exchange

    was_stopped = ENGINE_STOP.is_set()  # an engine run earlier in this process sets it
    ENGINE_STOP.clear()
    grid = _WaitingGrid(replies_after_waits=3)
    try:
        replies = exchange(grid, ["a", "b"], timeout=5.0)  # type: ignore[arg-type]
    finally:
        if was_stopped:
            ENGINE_STOP.set()
    assert grid.waits == 3  # waited, rather than slept, until the replies came
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0", "m1"]  # in message order


def test_fast_grid_with_nothing_in_flight_waits_for_the_stop_signal() -> None:
    import threading

    from server.messaging import ENGINE_STOP

    was_stopped = ENGINE_STOP.is_set()
    ENGINE_STOP.clear()
    grid = FastGrid([], {})
    waiter = threading.Thread(target=grid.wait_for_replies, args=(600.0,), daemon=True)
    try:
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()  # blocks: nothing is in flight and the engine runs
        ENGINE_STOP.set()
        waiter.join(30.0)
        assert not waiter.is_alive()  # the stop signal ends the wait (a 600 s sleep would not)
    finally:
        if not was_stopped:
            ENGINE_STOP.clear()


def test_ray_init_args_inline_results_only_on_a_local_ray() -> None:
    from fedsim.engine import ray_init_args

    local = ray_init_args({"num_cpus": 2, "inline_bytes": 4194304}, verbose=False)
    assert local["num_cpus"] == 2
    assert local["_system_config"]["max_direct_call_object_size"] == 4194304
    assert local["_system_config"]["task_rpc_inlined_bytes_limit"] >= 4194304
    joined = ray_init_args({"ray_address": "auto", "inline_bytes": 4194304}, verbose=False)
    assert "_system_config" not in joined  # a running cluster keeps its own settings
    assert "_system_config" not in ray_init_args({"inline_bytes": None}, verbose=False)


def test_engine_modules_import_no_flower_before_ray_starts() -> None:
    """``run(cfg)`` starts Ray and creates the actors before anything imports Flower (about
    0.4 s) or numpy (0.06-0.1 s), so Ray's processes and the actors start that much sooner."""
    import subprocess
    import sys

    code = (
        "import sys; import fedsim.engine, fedsim.engine.worker, fedsim.engine.localray; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'numpy', 'ray', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pool_size_fits_cpus_and_gpu_fractions_per_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """One actor per ``client_cpus`` CPUs and per ``client_gpus`` of a GPU, node by node: a
    node's GPUs cannot lend to another node's CPUs, and dead nodes count for nothing."""
    import ray

    from fedsim.engine.fast import pool_size

    nodes = [
        {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
        {"Alive": True, "Resources": {"CPU": 3.0, "GPU": 4.0}},
        {"Alive": True, "Resources": {"CPU": 8.0}},  # no GPU
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert pool_size(1.0, 0.0) == 16 + 3 + 8
    assert pool_size(1.0, 0.25) == 8 + 3 + 0  # 2 GPUs / 0.25; 3 CPUs; no GPU
    assert pool_size(2.0, 0.5) == 4 + 1 + 0
    assert pool_size(1.0, 1.0) == 2 + 3 + 0
