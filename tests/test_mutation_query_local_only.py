"""Hand-computed cases for ``clients.query.local_only`` (docs/mutation.md): the local-only
training loop's optimiser settings, learning-rate milestone (per iteration or per epoch),
mini-batches (a one-sample tail is skipped), the inclusive stopping accuracy and the epoch count,
with SGD and the inference replaced by recording stand-ins (``infer`` is decorated, so mutmut does
not mutate it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import clients.query.local_only as lo
from clients.query import ModelOutputs
from clients.query.local_only import class_histogram, train_local_only
from fedsim.errors import ConfigError
from fedsim.models.base import ClassifierModel

CPU = torch.device("cpu")


class _Tiny(ClassifierModel):
    def __init__(self) -> None:
        super().__init__()
        self.embedding_dim = 2
        self.classifier = nn.Linear(2, 2)
        self.batches: list[torch.Tensor] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(x.detach().clone())
        return x.reshape(x.shape[0], -1)


class _Rec:
    """Stand-in for fedsim's SGD: records its settings and the learning rate of every step."""

    made: list[_Rec] = []

    def __init__(self, params: object, *, lr: float, momentum: float, weight_decay: float):
        self.params = list(params)  # type: ignore[call-overload]
        self.lr, self.settings, self.lrs = lr, (lr, momentum, weight_decay), []
        self.zeroed = 0
        _Rec.made.append(self)

    def zero_grad(self) -> None:
        self.zeroed += 1

    def step(self) -> None:
        assert all(p.grad is not None for p in self.params)  # backward ran before the step
        self.lrs.append(self.lr)


def _setup(monkeypatch: pytest.MonkeyPatch, correct_per_epoch: list[int], n: int):
    """Patch SGD and infer; epoch e's inference gets ``correct_per_epoch[e - 1]`` of n right."""
    _Rec.made = []
    calls: list[dict] = []

    def fake_infer(model, x, mean, std, *, device, batch_size):
        assert isinstance(model, _Tiny) and device == CPU
        calls.append({"n": int(x.shape[0]), "mean": mean, "std": std, "bs": batch_size})
        right = correct_per_epoch[len(calls) - 1]
        pred = np.array([1] * right + [0] * (n - right))  # y is all ones
        return ModelOutputs(np.log(np.eye(2)[pred] * 0.98 + 0.01), np.zeros((n, 2)))

    monkeypatch.setattr(lo, "SGD", _Rec)
    monkeypatch.setattr(lo, "infer", fake_infer)
    x = torch.arange(n * 2, dtype=torch.uint8).reshape(n, 1, 1, 2)
    y = torch.ones(n, dtype=torch.int64)
    return x, y, calls


def test_iteration_milestone_batches_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, calls = _setup(monkeypatch, [0, 0, 0], n=9)
    model = _Tiny()
    epochs = train_local_only(
        model, x, y, [0.0], [1.0], device=CPU, generator=torch.Generator().manual_seed(3),
        max_epochs=3, lr=0.5, momentum=0.25, weight_decay=0.125, batch_size=4, lr_milestone=4,
        gamma=0.1, infer_batch_size=7,
    )  # fmt: skip
    assert epochs == 3  # never reached the stopping accuracy
    (opt,) = _Rec.made
    assert opt.settings == (0.5, 0.25, 0.125)
    # 9 samples in batches of 4: 4, 4 and a one-sample tail that is skipped: 2 steps per epoch,
    # steps 0..3 at lr, steps 4, 5 at lr * gamma
    assert opt.lrs == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.05, 0.05])
    assert opt.zeroed == 6
    assert [b.shape[0] for b in model.batches] == [4, 4] * 3
    # the batches follow torch.randperm(9) of the generator, normalised (x / 255 - 0) / 1
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(9, generator=g)
    assert torch.equal(model.batches[0], x[order[:4]].float() / 255.0)
    assert calls == [{"n": 9, "mean": [0.0], "std": [1.0], "bs": 7}] * 3


def test_epoch_milestone(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, _ = _setup(monkeypatch, [0, 0, 0], n=4)
    train_local_only(
        _Tiny(), x, y, [0.0], [1.0], device=CPU, generator=torch.Generator().manual_seed(0),
        max_epochs=3, lr=1.0, batch_size=2, lr_milestone=1, milestone_unit="epoch", gamma=0.5,
    )  # fmt: skip
    # epoch 1 (unit 0) at lr, epochs 2 and 3 (units 1, 2 >= milestone 1) at lr * gamma
    assert _Rec.made[0].lrs == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.5, 0.5])


def test_stopping_accuracy_is_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, calls = _setup(monkeypatch, [2, 3, 4, 4], n=4)
    kw = {"device": CPU, "generator": torch.Generator().manual_seed(0), "batch_size": 4}
    # accuracies 0.5, 0.75, 1.0: 0.75 is reached in epoch 2 (>=, not >)
    assert train_local_only(_Tiny(), x, y, [0.0], [1.0], stop_train_acc=0.75, **kw) == 2
    assert len(calls) == 2


def test_defaults_single_sample_and_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, _ = _setup(monkeypatch, [1] * 60, n=1)
    model = _Tiny()
    # one sample: the batch of one is trained on (nothing else to pair it with); the default
    # stopping accuracy 0.99 is met in epoch 1 (1 of 1 right)
    assert train_local_only(model, x, y, [0.0], [1.0], device=CPU, generator=torch.Generator()) == 1
    (opt,) = _Rec.made
    assert opt.settings == (0.01, 0.9, 1e-5) and opt.lrs == [0.01]
    assert [b.shape[0] for b in model.batches] == [1]
    x0, y0 = x[:0], y[:0]
    assert (
        train_local_only(_Tiny(), x0, y0, [0.0], [1.0], device=CPU, generator=torch.Generator())
        == 0
    )


def test_default_schedule_and_epoch_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, calls = _setup(monkeypatch, [0] * 50, n=2)
    # 2 samples, default batch 64: one step per epoch; default milestone 37 iterations, gamma 0.1,
    # default 50 epochs
    assert (
        train_local_only(_Tiny(), x, y, [0.0], [1.0], device=CPU, generator=torch.Generator()) == 50
    )
    lrs = _Rec.made[0].lrs
    assert lrs == pytest.approx([0.01] * 37 + [0.001] * 13)
    assert calls[0]["bs"] == 512


def test_default_batch_size_and_two_single_sample_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, _ = _setup(monkeypatch, [66], n=66)
    # 66 samples, default batch 64: batches of 64 and 2, two steps (65 would leave a skipped 1)
    assert (
        train_local_only(_Tiny(), x, y, [0.0], [1.0], device=CPU, generator=torch.Generator()) == 1
    )
    assert len(_Rec.made[0].lrs) == 2
    x, y, _ = _setup(monkeypatch, [2], n=2)
    # 2 samples in batches of 1: both are single-sample batches of a pool >= 2, both skipped
    kw = {"device": CPU, "generator": torch.Generator(), "batch_size": 1}
    assert train_local_only(_Tiny(), x, y, [0.0], [1.0], **kw) == 1
    assert _Rec.made[0].lrs == []


def test_bad_milestone_unit_and_histogram() -> None:
    x = torch.zeros((2, 1, 1, 2), dtype=torch.uint8)
    y = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ConfigError) as info:
        train_local_only(
            _Tiny(), x, y, [0.0], [1.0], device=CPU, generator=torch.Generator(),
            milestone_unit="batch",
        )  # fmt: skip
    assert (
        str(info.value) == "invalid fal.local_only.milestone_unit='batch': allowed iteration, epoch"
    )
    assert class_histogram(np.array([2, 0, 2, 2]), 4) == [1, 0, 3, 0]
    assert class_histogram(np.array([1.0, 1.0]), 2) == [0, 2]
