"""``engine.vectorize``: many virtual clients in one batched pass (``clients/learners/vectorized.py``,
``clients/batched.py``) give the per-client loop's results.

Tolerance: parameters and metrics within ``rtol=1e-5, atol=1e-6`` (float32; the batched
convolutions and the masked mean add in another order than the loop: measured differences are
about 1e-8 in the parameters and 1e-7 in the losses after a few steps). On CPU the mode is forced
with ``engine.vectorize=on``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from clients.learners import build_learner
from clients.learners.base import SGD
from clients.learners.vectorized import (
    adam_update,
    check_vectorize_data,
    client_batches,
    fold_tally,
    plan_steps,
    sgd_update,
    supports,
    train_group,
    unsupported_model,
    wanted,
)
from fedsim.config import compose, validate_engine, vectorize_mode
from fedsim.data.client_data import ClientData
from fedsim.errors import ConfigError
from fedsim.models import build_model

RTOL, ATOL = 1e-5, 1e-6
CPU = torch.device("cpu")


def _data(n: int, seed: int) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    return ClientData(
        x=torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
        y=torch.randint(0, 10, (n,), generator=g),
        mean=(0.5,),
        std=(0.25,),
        num_classes=10,
        label_kind="clean",
    )


def _model(name: str = "cnn") -> torch.nn.Module:
    params: dict[str, Any] = {"channels": [4, 8], "hidden": 16} if name == "cnn" else {}
    if name == "mlp":
        params = {"hidden": [32]}
    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=1, image_size=8, params=params)


# ---- the config key -------------------------------------------------------------------------
def test_vectorize_mode_values_and_the_one_line_refusal() -> None:
    assert [vectorize_mode(v) for v in ("auto", "on", "off", "ON", True, False, None)] == [
        "auto",
        "on",
        "off",
        "on",
        "on",
        "off",
        "off",
    ]
    with pytest.raises(
        ConfigError, match=r"^invalid engine.vectorize='yes': allowed auto \| on \| off$"
    ):
        vectorize_mode("yes")
    assert compose([]).engine.vectorize == "auto"
    with pytest.raises(ConfigError, match="engine.vectorize"):
        validate_engine(compose(["engine.vectorize=always"]))


def test_auto_is_on_only_for_cuda_and_learners_that_declare_it() -> None:
    sup, proden = build_learner("supervised", {}), build_learner("proden", {})
    assert wanted("auto", torch.device("cuda"), sup) and not wanted("auto", CPU, sup)
    assert wanted("on", CPU, sup) and not wanted("off", torch.device("cuda"), sup)
    assert not wanted("on", CPU, proden)
    assert all(supports(build_learner(n, {})) for n in ("supervised", "gce", "sce"))

    class Sub(type(sup)):  # type: ignore[misc]  # a subclass may change the loss: not inherited
        pass

    assert not supports(Sub)


def test_batchnorm_and_dropout_models_are_refused_with_one_line() -> None:
    bn = build_model("cnn4conv", num_classes=10, in_channels=1, image_size=16, params={"width": 4})
    assert "BatchNorm" in (unsupported_model(bn) or "")
    drop = build_model("mlp", num_classes=10, in_channels=1, image_size=8, params={"dropout": 0.5})
    assert "Dropout" in (unsupported_model(drop) or "")
    assert unsupported_model(_model("cnn")) is None and unsupported_model(_model("mlp")) is None

    class Data:
        num_classes, in_channels, image_size = 10, 1, 16

    cfg = compose(["model=cnn4conv", "+model.params.width=4", "engine.vectorize=on"])
    with pytest.raises(ConfigError, match=r"BatchNorm.*set engine.vectorize=auto or off$") as e:
        check_vectorize_data(cfg, Data())
    assert "\n" not in str(e.value)
    check_vectorize_data(compose(["model=cnn4conv", "+model.params.width=4"]), Data())  # auto


# ---- the pure parts -------------------------------------------------------------------------
def test_client_batches_are_the_loops_batches() -> None:
    pool = torch.arange(11)
    steps = client_batches(pool, 2, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    want = []
    for e in range(2):
        order = pool[torch.randperm(11, generator=g)]
        want += [(e, order[0:4]), (e, order[4:8]), (e, order[8:11])]
    assert [(e, i.tolist()) for e, i in steps] == [(e, i.tolist()) for e, i in want]
    # a last single-sample batch is dropped, as BatchNorm-safe loop does
    assert [int(i.numel()) for _, i in client_batches(torch.arange(5), 1, 4, g)] == [4]


def test_plan_steps_pads_and_marks_clients_that_ran_out() -> None:
    a = [(0, torch.tensor([1, 0])), (1, torch.tensor([2]))]
    p = plan_steps([a, [(0, torch.tensor([0, 1]))]], [0, 3])
    assert p.rows.tolist() == [[[1, 0], [3, 4]], [[2, 2], [0, 0]]]
    assert p.weight.tolist() == [[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]
    assert p.active.tolist() == [[True, True], [True, False]]
    assert p.count.tolist() == [[2, 2], [1, 0]] and p.epoch.tolist() == [[0, 0], [1, 0]]


def test_stacked_sgd_and_adam_equal_the_per_tensor_optimizers() -> None:
    torch.manual_seed(1)
    p0, grads = torch.randn(3, 5), [torch.randn(3, 5) for _ in range(3)]
    ref = [torch.nn.Parameter(p0[i].clone()) for i in range(3)]
    opt = SGD(ref, lr=0.1, momentum=0.9, weight_decay=0.01)
    p, buf = p0.clone(), torch.zeros(3, 5)
    for g in grads:
        for i, r in enumerate(ref):
            r.grad = g[i].clone()
        opt.step()
        p, buf = sgd_update(p, g, buf, lr=0.1, momentum=0.9, weight_decay=0.01)
    assert torch.equal(p, torch.stack([r.detach() for r in ref]))
    ref = [torch.nn.Parameter(p0[i].clone()) for i in range(3)]
    adam = torch.optim.Adam(ref, lr=0.01, weight_decay=0.01)
    p, m, v = p0.clone(), torch.zeros(3, 5), torch.zeros(3, 5)
    for t, g in enumerate(grads):
        for i, r in enumerate(ref):
            r.grad = g[i].clone()
        adam.step()
        p, m, v = adam_update(p, g, m, v, step=t + 1, lr=0.01, weight_decay=0.01)
    torch.testing.assert_close(p, torch.stack([r.detach() for r in ref]), rtol=0, atol=1e-7)


def test_fold_tally_weights_each_step_by_its_samples() -> None:
    got = fold_tally([1.0, 4.0], [3, 1], [2, 1], [3, 1])
    assert got == {"train_loss": 7.0 / 4, "train_accuracy": 3 / 4}


# ---- the group against the loop -------------------------------------------------------------
CASES = {
    "ce-sgd": ("supervised", {}, 0.0),
    "ce-adam": ("supervised", {"optimizer": "adam", "lr": 1e-3}, 0.0),
    "fedprox": ("supervised", {"weight_decay": 0.01}, 0.1),
    "fedprox-adam": ("supervised", {"optimizer": "adam", "lr": 1e-3}, 0.5),
    "gce-truncated": ("gce", {"truncate_below": 0.1, "truncate_start": 1}, 0.0),
    "sce": ("sce", {}, 0.0),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c in ("ce-adam", "fedprox") else c for c in CASES],
)
def test_group_equals_the_per_client_loop(case: str) -> None:
    name, params, mu = CASES[case]
    model = _model("cnn")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    learner = build_learner(name, {"epochs": 2, "batch_size": 6, **params})
    sizes = [13, 5, 9, 1, 0]  # unequal, one single-sample client, one empty
    datas = [_data(n, i) for i, n in enumerate(sizes)]
    states: list[dict[str, Any]] = [{"epochs_done": i % 2} for i in range(len(sizes))]
    loop = []
    for i, d in enumerate(datas):
        model.load_state_dict(init)
        state = dict(states[i])
        r = learner.train(
            model,
            d,
            device=CPU,
            generator=torch.Generator().manual_seed(100 + i),
            proximal_mu=mu,
            state=state,
        )
        loop.append((r, {k: v.clone() for k, v in model.state_dict().items()}))
    assert any(not torch.equal(v, init[k]) for k, v in loop[0][1].items())  # it did train
    model.load_state_dict(init)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(sizes))]
    results, trained = train_group(learner, model, datas, gens, states, device=CPU, proximal_mu=mu)
    for k, v in model.state_dict().items():  # the template's weights are left as received
        assert torch.equal(v, init[k])
    for (r, sd), r2, t2 in zip(loop, results, trained, strict=True):
        assert r2.num_examples == r.num_examples
        assert r2.metrics.keys() == r.metrics.keys()
        for k in r.metrics:
            assert r2.metrics[k] == pytest.approx(r.metrics[k], rel=RTOL, abs=ATOL)
        for k, v in t2.items():
            torch.testing.assert_close(v, sd[k], rtol=RTOL, atol=ATOL)


# ---- through the worker: the app's preparation, attacks and the fallback line ----------------
def _worker_replies(overrides: list[str], pids: list[int]) -> list[Any]:
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.config import to_run_config
    from fedsim.engine.worker import ClientWorker
    from fedsim.records import array_record

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    cfg = compose(
        ["model=cnn", "model.params.channels=[4,8]", "model.params.hidden=16", *overrides]
    )
    model = _model("cnn")  # seeded: both paths receive the same weights
    content = RecordDict(
        {
            "arrays": array_record(model.state_dict()),
            "config": ConfigRecord({"server-round": 1, "proximal-mu": 0.1}),
        }
    )
    batch = []
    for pid in pids:
        m = Message(content, dst_node_id=pid + 1, message_type=MessageType.TRAIN)
        m.metadata.__dict__["_message_id"] = f"id-{pid}"
        ctx = Context(
            run_id=1,
            node_id=pid + 1,
            node_config={"partition-id": pid, "num-partitions": int(cfg.num_clients)},
            state=RecordDict(),
            run_config=to_run_config(cfg),
        )
        batch.append((m, ctx))
    return [reply for reply, _ in ClientWorker().run_batch(batch)]


def _compare(a: list[Any], b: list[Any]) -> None:
    import numpy as np

    for x, y in zip(a, b, strict=True):
        assert not x.has_error() and not y.has_error()
        assert x.metadata.reply_to_message_id == y.metadata.reply_to_message_id
        mx, my = x.content.metric_records["metrics"], y.content.metric_records["metrics"]
        assert mx["num-examples"] == my["num-examples"]
        for k in mx:
            assert float(mx[k]) == pytest.approx(float(my[k]), rel=RTOL, abs=ATOL)
        ax, ay = x.content.array_records["arrays"], y.content.array_records["arrays"]
        for k in ax:
            np.testing.assert_allclose(ax[k].numpy(), ay[k].numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "attack",
    [
        [],
        # FLAIN's attack paths: CBA's poisoned data; model replacement's scaled update
        ["attack=cba", "attack.trigger_size=3", "attack.trigger_pos=[1,1]", "attack.image_size=8"],
        [
            "attack=model_replacement",
            "attack.trigger_size=3",
            "attack.trigger_pos=[1,1]",
            "attack.image_size=8",
            "local.optimizer=adam",
            "local.lr=0.001",
        ],
    ],
    ids=["honest", "cba", "model-replacement-adam"],
)
def test_worker_batch_equals_the_per_client_app(attack: list[str]) -> None:
    common = ["num_clients=10", "local.epochs=2", *attack]
    pids = [0, 1, 2, 5, 7]  # with an attack, 0 and 1 are malicious (mcr 0.2, ids first)
    on = _worker_replies([*common, "engine.vectorize=on"], pids)
    off = _worker_replies([*common, "engine.vectorize=off"], pids)
    _compare(on, off)


def test_a_learner_without_a_batched_pass_falls_back_with_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from clients import batched

    batched._NOTED.clear()
    with caplog.at_level(logging.INFO, logger="fedsim"):
        on = _worker_replies(["local=proden", "engine.vectorize=on"], [0, 1, 2])
    lines = [r.message for r in caplog.records if "engine.vectorize" in r.message]
    assert lines == [
        "engine.vectorize: local method PRODEN has no batched pass; its clients train one by one"
    ]
    off = _worker_replies(["local=proden", "engine.vectorize=off"], [0, 1, 2])
    _compare(on, off)


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_digits_run_vectorized_equals_the_per_client_run(tmp_path: Path) -> None:
    from fedsim import constants as C
    from fedsim.outputs import read_metrics
    from fedsim.runner import run

    got = {}
    for mode in ("on", "off"):
        cfg = compose(
            [
                "progress=false",
                "rounds=2",
                "num_clients=6",
                "clients_per_round=6",
                "checkpoint_every=0",
                "tensorboard=false",
                "strategy=fedprox",
                f"engine.vectorize={mode}",
            ]
        )
        cfg.output_dir = str(tmp_path / mode)
        run(cfg)
        timing = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}
        got[mode] = [
            {k: v for k, v in r.items() if k not in timing} for r in read_metrics(tmp_path / mode)
        ]
    assert len(got["on"]) == len(got["off"]) == 2
    for a, b in zip(got["on"], got["off"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
            else:
                assert a[k] == b[k], k


@pytest.mark.gpu
def test_group_equals_the_per_client_loop_on_cuda() -> None:
    """On a GPU: the batched pass against the per-client loop, both on CUDA (same tolerance)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda")
    for name, params, mu in CASES.values():
        model = _model("cnn").to(cuda)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        learner = build_learner(name, {"epochs": 2, "batch_size": 6, **params})
        datas = [_data(n, i) for i, n in enumerate([13, 5, 9, 1, 0])]
        loop = []
        for i, d in enumerate(datas):
            model.load_state_dict(init)
            gen = torch.Generator().manual_seed(100 + i)
            r = learner.train(model, d, device=cuda, generator=gen, proximal_mu=mu, state={})
            loop.append((r, {k: v.clone() for k, v in model.state_dict().items()}))
        model.load_state_dict(init)
        gens = [torch.Generator().manual_seed(100 + i) for i in range(len(datas))]
        states: list[dict[str, Any]] = [{} for _ in datas]
        results, trained = train_group(
            learner, model, datas, gens, states, device=cuda, proximal_mu=mu
        )
        for (r, sd), r2, t2 in zip(loop, results, trained, strict=True):
            for k in r.metrics:
                assert r2.metrics[k] == pytest.approx(r.metrics[k], rel=RTOL, abs=ATOL)
            for k, v in t2.items():
                torch.testing.assert_close(v, sd[k], rtol=RTOL, atol=ATOL)
