"""Local learner loop, FedProx term, seeding, and reply validation (no Ray, no Grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from clients.learners import ClientData, build_learner
from clients.learners.base import LOCAL, Learner, check_label_kind
from fedsim.config import compose
from fedsim.errors import ConfigError
from fedsim.federation import build_federation
from fedsim.models import build_model
from fedsim.seeding import client_seed, sample_partitions
from server.validation import train_reply_problem


def _toy_data(n: int = 64) -> ClientData:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = (
        y.view(-1, 1, 1, 1).expand(n, 1, 8, 8) * 200
        + torch.randint(0, 40, (n, 1, 8, 8), generator=g)
    ).to(torch.uint8)
    return ClientData(x=x, y=y, mean=(0.5,), std=(0.5,), num_classes=2)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", num_classes=2, in_channels=1, image_size=8, params={"hidden": [16]})


def test_supervised_learner_fits_a_separable_toy_set() -> None:
    data = _toy_data()
    model = _model()
    learner = build_learner("supervised", {"epochs": 5, "batch_size": 16, "lr": 0.1})
    result = learner.train(
        model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1)
    )
    assert result.num_examples == 64
    with torch.no_grad():
        from fedsim.data import to_float

        acc = (model(to_float(data.x, data.mean, data.std)).argmax(1) == data.y).float().mean()
    assert acc == 1.0
    assert result.metrics["train_loss"] < 0.69  # below chance-level cross-entropy


def test_same_seed_same_local_update() -> None:
    data = _toy_data()
    outs = []
    for _ in range(2):
        model = _model()
        build_learner("supervised", {"epochs": 1, "batch_size": 8}).train(
            model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(7)
        )
        outs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_proximal_term_pulls_towards_the_global_model() -> None:
    data = _toy_data()
    start = torch.cat([p.flatten() for p in _model().parameters()]).detach()
    drift = {}
    for mu in (0.0, 10.0):
        model = _model()
        build_learner("supervised", {"epochs": 3, "batch_size": 8, "lr": 0.1}).train(
            model,
            data,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(3),
            proximal_mu=mu,
        )
        drift[mu] = float(
            (torch.cat([p.detach().flatten() for p in model.parameters()]) - start).norm()
        )
    assert drift[10.0] < 0.5 * drift[0.0]


def test_learner_refuses_labels_it_cannot_use() -> None:
    with pytest.raises(
        ConfigError, match="'supervised' cannot train on 'partial' labels: it accepts clean"
    ):
        check_label_kind("supervised", LOCAL.get("supervised"), "partial")


def test_learner_base_is_the_supervised_loop() -> None:
    assert issubclass(LOCAL.get("supervised"), Learner)


def test_sampling_is_seeded_sorted_and_varies_by_round() -> None:
    a = sample_partitions(0, 1, 100, 10)
    assert a == sample_partitions(0, 1, 100, 10)
    assert a == sorted(a) and len(set(a)) == 10 and all(0 <= p < 100 for p in a)
    assert a != sample_partitions(0, 2, 100, 10)
    assert a != sample_partitions(1, 1, 100, 10)
    assert client_seed(0, 1, 2) != client_seed(0, 1, 3)


def test_client_data_indexes_the_shared_arrays() -> None:
    cfg = compose()
    fed = build_federation(cfg)
    d0 = fed.client_data(0)
    idx = torch.from_numpy(fed.partitions[0])
    assert torch.equal(d0.x, fed.data.train_x[idx]) and torch.equal(d0.y, fed.data.train_y[idx])
    held = len(fed.val_indices)  # the server's validation split
    assert held > 0 and sum(len(p) for p in fed.partitions) + held == len(fed.data.train_y)
    assert build_federation(cfg) is fed  # built once per process


class _Reply:
    """The two things validation reads of a reply Message: its error and its content."""

    def __init__(self, content: RecordDict | None = None, error: Error | None = None) -> None:
        self.content, self.error = content, error

    def has_error(self) -> bool:
        return self.error is not None


def _reply(content: RecordDict) -> Message:
    return _Reply(content)  # type: ignore[return-value]


def _arrays(**overrides: np.ndarray) -> ArrayRecord:
    base = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    base.update(overrides)
    return ArrayRecord({k: Array(v) for k, v in base.items()})


@pytest.mark.parametrize(
    ("arrays", "metrics", "pattern"),
    [
        (_arrays(), {"num-examples": 3}, None),
        (_arrays(w=np.full((2, 3), np.nan, np.float32)), {"num-examples": 3}, "NaN or inf"),
        (_arrays(w=np.full((2, 3), np.inf, np.float32)), {"num-examples": 3}, "NaN or inf"),
        (_arrays(w=np.ones((3, 2), np.float32)), {"num-examples": 3}, "expected float32"),
        (_arrays(b=np.zeros(3, np.float64)), {"num-examples": 3}, "float64"),
        (
            ArrayRecord({"w": Array(np.ones((2, 3), np.float32))}),
            {"num-examples": 3},
            "named differently",
        ),
        (_arrays(), {"loss": 1.0}, "num-examples"),
    ],
)
def test_malformed_updates_are_refused(
    arrays: ArrayRecord, metrics: dict, pattern: str | None
) -> None:
    reply = _reply(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}))
    problem = train_reply_problem(reply, _arrays())
    if pattern is None:
        assert problem is None
    else:
        assert problem is not None and pattern in problem


def test_error_reply_is_refused() -> None:
    err = _Reply(error=Error(code=0, reason="boom"))
    assert train_reply_problem(err, _arrays()) == "client error: boom"  # type: ignore[arg-type]
    assert (
        train_reply_problem(_reply(RecordDict({})), _arrays())
        == "reply has no 'arrays' ArrayRecord"
    )


def test_sgd_matches_torch_optim_sgd() -> None:
    from clients.learners.base import SGD

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    b = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    b.load_state_dict(a.state_dict())
    ours = SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=False)
    for _ in range(5):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_array_from_numpy_writes_flowers_npy_bytes() -> None:
    import numpy as np
    from flwr.app import Array

    from fedsim.records import array_from_numpy, to_numpy

    cases = [
        np.array(3.5, dtype=np.float32),  # 0-d
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.linspace(0, 1, 15, dtype=np.float16).reshape(5, 3),
        np.zeros((0, 4), np.float32),
        np.array([True, False]),
        np.arange(20)[::2],  # strided view
    ]
    for a in cases:
        ours, flowers = array_from_numpy(a), Array(a)
        assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
        assert ours.data == flowers.data
        np.testing.assert_array_equal(to_numpy(ours), a)


def test_fast_arrays_and_records_equal_flowers() -> None:
    import numpy as np
    import pytest
    import torch
    from flwr.app import Array, ArrayRecord

    from fedsim.records import array_from_numpy, array_record

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert vars(array_from_numpy(a)) == vars(Array(a))  # same fields, dirty as a new Array
    state = {"w": torch.ones(2, 2), "b": torch.zeros(3, dtype=torch.int64)}
    ours = array_record(state)
    flowers = ArrayRecord({k: Array(v.numpy()) for k, v in state.items()})
    assert list(ours) == list(flowers) == ["w", "b"]
    assert all(vars(ours[k]) == vars(flowers[k]) for k in state)
    assert ours.is_dirty
    ours["c"] = Array(np.ones(1))  # still an ordinary, writable ArrayRecord
    assert list(ours) == ["w", "b", "c"]
    with pytest.raises(TypeError):
        array_record({3: np.ones(2)})  # type: ignore[dict-item]


def test_fast_record_views_hold_what_flowers_hold_and_write_through() -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from fedsim.records import FastViews

    def content() -> RecordDict:
        return RecordDict(
            {
                "m": MetricRecord({"n": 3}),
                "a": ArrayRecord({"w": Array(np.ones(2))}),
                "c": ConfigRecord({"k": "v"}),
                "m2": MetricRecord({"x": 1.0}),
            }
        )

    plain, fast = content(), content()
    FastViews.adopt(fast)
    assert type(fast) is FastViews and isinstance(fast, RecordDict)
    for view in ("array_records", "metric_records", "config_records"):
        got, want = getattr(fast, view), getattr(plain, view)
        assert list(got) == list(want) and dict(got) == dict(want)
        assert type(got) is type(want)
    fast.metric_records["new"] = MetricRecord({"y": 2.0})  # a write through a view reaches it
    assert "new" in fast and "new" in fast.metric_records
    del fast.array_records["a"]
    assert "a" not in fast and not fast.array_records
    FastViews.adopt(fast)  # idempotent
    assert type(fast) is FastViews


def test_plain_fault_lists_select_the_same_faults() -> None:
    from clients.app import _plain
    from clients.faults import fault_for
    from fedsim.config import compose

    cfg = compose(["faults.nan_clients=[2]", "faults.rounds=[3]"])
    plain = _plain(cfg.faults)
    assert isinstance(plain, dict) and plain["nan_clients"] == [2]
    for pid in range(4):
        for rnd in (1, 3):
            assert fault_for(plain, pid, rnd) == fault_for(cfg.faults, pid, rnd)
    assert fault_for(plain, 2, 3) == "nan"
    assert _plain(None) is None


def test_tally_on_the_device_sums_what_the_host_sums() -> None:
    """The GPU path keeps the sums in a float64 tensor; on the same batches it must give the
    host path's numbers bit for bit (exercised here on CPU tensors)."""
    from clients.learners.base import Tally

    g = torch.Generator().manual_seed(3)
    host = Tally(on_device=False, device=torch.device("cpu"))
    dev = Tally(on_device=True, device=torch.device("cpu"))
    for b in (32, 32, 7):
        loss = torch.rand((), generator=g) * 3
        logits = torch.randn(b, 5, generator=g)
        y = torch.randint(-1, 5, (b,), generator=g)  # -1: unlabeled, not counted
        for t in (host, dev):
            t.add(loss, logits, y, b)
    soft = torch.rand(4, 5, generator=g)  # soft targets: the loss counts, accuracy does not
    for t in (host, dev):
        t.add(torch.tensor([0.25]), torch.randn(4, 5, generator=g), soft, 4)
    assert dev.totals() == host.totals()
    loss_sum, correct, seen, labeled = host.totals()
    assert seen == 75 and 0 < labeled < 71 and 0 <= correct <= labeled


def test_tally_counts_a_hand_computed_batch() -> None:
    from clients.learners.base import Tally

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([0, 0, -1, 1])  # right, wrong, unlabeled, right
    for on_device in (False, True):
        t = Tally(on_device=on_device, device=torch.device("cpu"))
        t.add(torch.tensor(0.5), logits, y, 4)
        t.add(torch.tensor(1.5), logits[:2], y[:2], 2)  # right, wrong
        assert t.totals() == (0.5 * 4 + 1.5 * 2, 3, 6, 5)


def test_to_host_gathers_tensors_by_dtype_into_views_equal_to_each_copy() -> None:
    from fedsim.records import array_record, to_host

    state = {
        "w": torch.randn(3, 4).t(),  # not contiguous
        "steps": torch.tensor(7),  # 0-dim int64, as BatchNorm's num_batches_tracked
        "b": torch.randn(4),
        "counts": torch.arange(6).view(2, 3),
        "arr": np.ones(2, dtype=np.float32),  # arrays pass through
    }
    plain = to_host(state, gather=False)
    gathered = to_host(state, gather=True)
    assert list(gathered) == list(state)
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert gathered[k].dtype == v.dtype and gathered[k].shape == v.shape
            assert torch.equal(gathered[k], v) and torch.equal(plain[k], v)
        else:
            assert gathered[k] is v
    assert gathered["w"].untyped_storage().data_ptr() == gathered["b"].untyped_storage().data_ptr()
    rec = array_record(state)
    assert [rec[k].numpy().tolist() for k in state] == [
        np.asarray(v).tolist() for v in state.values()
    ]
