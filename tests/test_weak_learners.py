"""Weak-supervision learners: training on toy data, capability refusal, and client state that
persists across rounds through the real ClientApp (run by the fast engine's worker)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from clients.learners import LOCAL, ClientData, build_learner
from clients.learners.common import strong_augment, weak_augment
from fedsim.config import compose, to_run_config
from fedsim.data import to_float
from fedsim.models import build_model

NOISY = ["gce", "sce", "coteaching", "dpc", "bldr"]
PARTIAL = ["proden", "cc", "rc", "upllrs"]
SEMI = ["fixmatch", "flexmatch"]


def _toy(n: int = 96, c: int = 3, seed: int = 0) -> tuple[ClientData, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randint(0, 30, (n, 1, 8, 8), generator=g)
    for k in range(c):  # class k: a bright band of rows
        x[y == k, :, 2 * k : 2 * k + 2, :] += 200
    data = ClientData(x=x.to(torch.uint8), y=y, mean=(0.3,), std=(0.3,), num_classes=c)
    return data, y


def _model(c: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", num_classes=c, in_channels=1, image_size=8, params={"hidden": [32]})


def _accuracy(model: torch.nn.Module, data: ClientData, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = model(to_float(data.x, data.mean, data.std)).argmax(1)
    return float((pred == y).float().mean())


def _fit(name: str, data: ClientData, params: dict[str, Any], rounds: int = 1) -> Any:
    model = _model(data.num_classes)
    learner = build_learner(name, {"epochs": 8, "batch_size": 16, "lr": 0.1, **params})
    state: dict[str, Any] = {}
    for r in range(rounds):
        torch.manual_seed(r)
        result = learner.train(
            model,
            data,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(r),
            state=state,
        )
    return model, result, state


@pytest.mark.parametrize("name", NOISY)
def test_noisy_label_learners_fit_labels_with_noise(name: str) -> None:
    data, y = _toy()
    noisy = y.clone()
    flip = torch.arange(len(y)) % 5 == 0  # 20% of the labels moved to the next class
    noisy[flip] = (y[flip] + 1) % 3
    data.y, data.label_kind = noisy, "noisy"
    params = {"reweight_start": 4} if name == "bldr" else {}
    model, result, _ = _fit(name, data, params)
    assert result.num_examples == len(y)
    assert _accuracy(model, data, y) >= 0.9  # against the true labels


@pytest.mark.parametrize("name", PARTIAL)
def test_partial_label_learners_fit_candidate_sets(name: str) -> None:
    data, y = _toy()
    cand = torch.zeros(len(y), 3, dtype=torch.bool)
    cand[torch.arange(len(y)), y] = True
    cand[torch.arange(len(y)), (y + 1) % 3] = torch.arange(len(y)) % 2 == 0  # half have 2
    data.y = torch.full_like(y, -1)
    data.candidates, data.label_kind = cand, "partial"
    model, result, state = _fit(name, data, {"warmup": 1} if name == "upllrs" else {})
    assert result.num_examples == len(y)
    assert _accuracy(model, data, y) >= 0.9
    key = {"proden": "proden.weights", "rc": "rc.weights", "upllrs": "upllrs.weights"}.get(name)
    if key:  # weights are a distribution over each candidate set
        w = torch.as_tensor(state[key])
        assert torch.allclose(w.sum(1), torch.ones(len(y)), atol=1e-5)
        assert float(w[~cand].abs().max()) == 0.0


@pytest.mark.parametrize("name", [*SEMI, "supervised"])
def test_semi_supervised_learners_use_the_right_samples(name: str) -> None:
    data, y = _toy(n=120)
    semi_y = torch.full_like(y, -1)
    labeled = torch.arange(len(y)) % 4 == 0
    semi_y[labeled] = y[labeled]
    data.y, data.label_kind = semi_y, "semi"
    params = {"mu": 2, "flip": False, "pad": 1} if name in SEMI else {}
    model, result, state = _fit(name, data, params)
    # supervised trains on (and is weighted by) the labeled part; FixMatch uses everything
    assert result.num_examples == (len(y) if name in SEMI else int(labeled.sum()))
    assert _accuracy(model, data, y) >= 0.85
    if name == "flexmatch":
        sel = torch.as_tensor(state["flexmatch.selected_label"])
        assert (sel[labeled] == -1).all() and (sel[~labeled] >= 0).any()


def test_strong_augmentation_on_one_channel_28px_uint8() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    s = strong_augment(x)
    w = weak_augment(x, pad=4)
    assert s.shape == x.shape and s.dtype == torch.uint8 and w.dtype == torch.uint8
    assert not torch.equal(s, x) and not torch.equal(w, x)
    assert strong_augment(x, per_image=False).shape == x.shape


def test_capability_flags() -> None:
    for name in NOISY:
        assert LOCAL.get(name).label_kinds == {"clean", "noisy"}
    for name in PARTIAL:
        assert LOCAL.get(name).label_kinds == {"clean", "partial"}
    for name in SEMI:
        assert LOCAL.get(name).label_kinds == {"clean", "semi"}
    assert "partial" not in LOCAL.get("supervised").label_kinds


# ---- through the ClientApp ------------------------------------------------------------------
def _round(cfg: Any, pid: int, server_round: int, context: Context | None) -> tuple[Any, Context]:
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.engine.worker import ClientWorker, from_wire
    from fedsim.records import array_record, torch_state

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    model = build_model(
        "mlp", num_classes=10, in_channels=1, image_size=8, params={"hidden": [200, 200]}
    )
    content = RecordDict(
        {
            "arrays": array_record(model.state_dict()),
            "config": ConfigRecord({"server-round": server_round}),
        }
    )
    msg = Message(content, dst_node_id=pid + 1, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"id-{server_round}"
    if context is None:
        context = Context(
            run_id=1,
            node_id=pid + 1,
            node_config={"partition-id": pid, "num-partitions": int(cfg.num_clients)},
            state=RecordDict(),
            run_config=to_run_config(cfg),
        )
    ((reply, ctx),) = ClientWorker().run_batch([(msg, context)])
    from_wire(reply)  # what FastGrid does with each reply
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return torch_state(reply.content.array_records["arrays"]), ctx


def _state(ctx: Context) -> dict[str, np.ndarray]:
    rec = ctx.state.array_records.get("learner-arrays")
    return {k: v.numpy() for k, v in rec.items()} if rec is not None else {}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["weak_labels=partial", "local=proden"], "proden.weights"),
        (["weak_labels=partial", "local=rc"], "rc.weights"),
        (["weak_labels=partial", "local=upllrs", "local.warmup=0"], "upllrs.unreliable"),
        (["weak_labels=noisy", "local=coteaching"], "coteaching.peer.classifier.weight"),
        (["weak_labels=noisy", "local=bldr", "local.reweight_start=1"], "bldr.w"),
        (
            [
                "weak_labels=semi",
                "weak_labels.labeled_ratio=0.3",
                "local=flexmatch",
                "local.mu=1",
                "local.flip=false",
                "local.pad=1",
            ],
            "flexmatch.selected_label",
        ),
    ],
)
def test_learner_state_persists_across_rounds_in_the_client_context(
    overrides: list[str], key: str
) -> None:
    cfg = compose(overrides)
    _, ctx = _round(cfg, 2, 1, None)
    first = _state(ctx)
    assert key in first
    if ctx.state.config_records.get("learner-config") is not None and key != "rc.weights":
        assert int(ctx.state.config_records["learner-config"].get("epochs_done", 1)) >= 1
    persisted, ctx = _round(cfg, 2, 2, ctx)
    second = _state(ctx)
    fresh, _ = _round(cfg, 2, 2, None)  # the same round without the state of round 1
    # round 2 started from round 1's state: its update differs from a stateless round 2
    assert any(not torch.equal(persisted[k], fresh[k]) for k in persisted)
    assert set(first) == set(second)
    if key == "proden.weights":
        assert not np.allclose(first[key], second[key])  # kept updating the same table
        cand = first[key] > 0
        assert (second[key][~cand] == 0).all()  # never leaves the candidate sets


def test_client_refuses_labels_its_method_cannot_use() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.engine.worker import ClientWorker

    cfg = compose(["weak_labels=partial"])  # not validated: the client's own check answers
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    from fedsim.records import array_record

    model = build_model(
        "mlp", num_classes=10, in_channels=1, image_size=8, params={"hidden": [200, 200]}
    )
    content = RecordDict(
        {"arrays": array_record(model.state_dict()), "config": ConfigRecord({"server-round": 1})}
    )
    msg = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "id-x"
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 10},
        state=RecordDict(),
        run_config=to_run_config(cfg),
    )
    ((reply, _),) = ClientWorker().run_batch([(msg, ctx)])
    assert reply.has_error()
    assert "local method 'supervised' cannot train on 'partial' labels" in reply.error.reason


def _toy10(n: int = 300, seed: int = 0) -> tuple[ClientData, torch.Tensor]:
    """10 classes on 8x8: class k is a bright 2x2 block in row band k % 4, column band k // 4."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 30, (n, 1, 8, 8), generator=g)
    for k in range(10):
        r, c = 2 * (k % 4), 3 * (k // 4)
        x[y == k, :, r : r + 2, c : c + 2] += 200
    return ClientData(x=x.to(torch.uint8), y=y, mean=(0.3,), std=(0.3,), num_classes=10), y


@pytest.mark.parametrize("nl_exclude", ["pl_head", "none"])
def test_bldr_weights_separate_clean_from_noisy_samples(nl_exclude: str) -> None:
    # The NL head's belief in the given label must rank clean samples above flipped ones. With
    # the spec-literal nl_exclude="nl_head" the head locks onto one class and the weights do
    # not separate (0.12 vs 0.16 here; see the README), which this test catches.
    data, y = _toy10()
    noisy = y.clone()
    flip = torch.arange(len(y)) % 4 == 0
    noisy[flip] = (y[flip] + 1) % 10
    data.y, data.label_kind = noisy, "noisy"
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8, params={"hidden": [32]})
    learner = build_learner(
        "bldr",
        {"epochs": 8, "batch_size": 16, "lr": 0.1, "reweight_start": 8, "nl_exclude": nl_exclude},
    )
    state: dict[str, Any] = {}
    for r in range(2):
        torch.manual_seed(r)
        learner.train(
            model,
            data,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(r),
            state=state,
        )
    w = torch.as_tensor(state["bldr.w"])
    assert float(w[~flip].mean() - w[flip].mean()) > 0.2


def test_learner_parameters_are_checked_in_one_line() -> None:
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="local.nl_exclude='x': allowed nl_head, pl_head, none"):
        build_learner("bldr", {"nl_exclude": "x"})
    # FedLabel's confidence threshold is its beta, not a second parameter
    assert build_learner("fedlabel", {"beta": 0.8}).threshold == 0.8  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="invalid local parameter 'threshold'"):
        build_learner("fedlabel", {"threshold": 0.5})
