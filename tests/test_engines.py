"""``engine=fast`` and ``engine=flower`` drive the same apps to the same per-round metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.engine.fast import FastGrid
from fedsim.outputs import read_metrics
from fedsim.runner import run

TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}


def _metrics(tmp: Path, engine: str, overrides: list[str]) -> list[dict]:
    cfg = compose(["progress=false", f"engine={engine}", *overrides])
    cfg.output_dir = str(tmp / engine)
    run(cfg)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(tmp / engine)]


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
        [  # weak labels with a learner whose per-sample state must survive rounds (PRODEN)
            "rounds=3",
            "num_clients=6",
            "clients_per_round=4",
            "weak_labels=partial",
            "weak_labels.q=0.3",
            "local=proden",
            "checkpoint_every=0",
        ],
    ],
    ids=["fedavgm", "partial-labels-proden"],
)
def test_fast_and_flower_engines_give_identical_metrics(
    tmp_path: Path, overrides: list[str]
) -> None:
    fast = _metrics(tmp_path, "fast", overrides)
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


def test_chunks_split_evenly() -> None:
    from fedsim.engine.fast import _split

    assert [len(r) for r in _split(10, 8)] == [2, 2, 1, 1, 1, 1, 1, 1]
    assert [len(r) for r in _split(50, 8)] == [7, 7, 6, 6, 6, 6, 6, 6]
    parts = _split(1000, 8)
    assert [len(r) for r in parts] == [125] * 8
    assert [i for r in parts for i in r] == list(range(1000))  # contiguous, in order, complete
