"""FLAIN's invariants and dormant pruning, on hand-made weights and a tiny constructed model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.errors import ConfigError
from server import flain as fl
from server.defenses import DEFENSES, aux_accuracy_fn, layer_inputs, schedule, target_layer


def test_grid_is_index_based_and_capped() -> None:
    g = fl.threshold_grid(0.001, 0.001, 1.0)
    assert len(g) == 1000 and g[0] == 0.001 and g[-1] == pytest.approx(1.0)
    assert g[999] == 0.001 + 999 * 0.001  # no accumulated float error
    assert len(fl.threshold_grid(0.0005, 0.0001, 1.0)) == 9996
    with pytest.raises(ConfigError):
        fl.threshold_grid(0.1, 0.0, 1.0)


def test_flip_replaces_columns_by_initial_minus_update() -> None:
    w0 = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    wt = np.array([[2.0, 2.0, 5.0], [3.0, 7.0, 6.0]])
    mask = np.array([True, False, True])
    w = fl.flip_columns(wt, w0, mask)
    # column j in F: W0 - (WT - W0) = 2 W0 - WT; others: WT
    assert w.tolist() == [[0.0, 2.0, 1.0], [5.0, 7.0, 6.0]]
    assert wt.tolist() == [[2.0, 2.0, 5.0], [3.0, 7.0, 6.0]]  # not modified in place


def test_zero_update_is_a_no_op() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6))
    a = np.abs(rng.standard_normal(6)) * 0.01
    res = fl.flain_search(
        a, w, w.copy(), lambda m: 0.9, grid=fl.threshold_grid(0.001, 0.001, 1.0), tolerance=0.0
    )
    assert np.array_equal(res.weight, w)


def test_norm_is_preserved_after_rescale() -> None:
    rng = np.random.default_rng(1)
    wt, w0 = rng.standard_normal((5, 8)), rng.standard_normal((5, 8))
    a = np.linspace(0, 0.01, 8)
    res = fl.flain_search(
        a, wt, w0, lambda m: 0.5, grid=fl.threshold_grid(0.001, 0.001, 1.0), tolerance=0.0
    )
    assert res.flip_count == 1  # only a_0 = 0 is <= k_init = 0.001; tolerance 0 stops there
    assert np.linalg.norm(res.weight) == pytest.approx(np.linalg.norm(wt))
    assert not np.allclose(res.weight, wt)
    raw = fl.flain_search(
        a,
        wt,
        w0,
        lambda m: 0.5,
        grid=fl.threshold_grid(0.001, 0.001, 1.0),
        tolerance=0.0,
        rescale_norm=False,
    )
    assert np.allclose(raw.weight, fl.flip_columns(wt, w0, fl.flip_set(a, 0.001)))


def test_flip_sets_nest_as_threshold_grows() -> None:
    a = np.random.default_rng(2).uniform(-0.1, 1.0, size=200)
    grid = fl.threshold_grid(0.001, 0.01, 1.0)
    sets = [fl.flip_set(a, k) for k in grid]
    for small, big in zip(sets, sets[1:], strict=False):
        assert np.all(big[small])  # F_k subset of F_k'
    assert not sets[-1][a < 0].any()  # negative activations never flip


def _tiny_model() -> nn.Module:
    """fc1 (4 -> 3) -> ReLU -> classifier (3 -> 2), as a fedsim-like model."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
            self.classifier = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.fc(x.flatten(1)))

    return Tiny()


def test_flipping_inputs_zero_on_every_aux_sample_leaves_aux_logits_unchanged() -> None:
    torch.manual_seed(0)
    model = _tiny_model().eval()
    x = torch.rand(16, 4)
    x[:, [1, 3]] = 0.0  # inputs 1 and 3 are dormant on the aux set
    lin = model.fc[0]
    wt = lin.weight.detach().numpy().astype(np.float64)
    w0 = wt + np.random.default_rng(0).standard_normal(wt.shape)
    w = fl.flip_columns(wt, w0, np.array([False, True, False, True]))
    before = model(x)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
    assert torch.allclose(model(x), before)


def test_stop_threshold_matches_a_hand_computation_in_both_modes() -> None:
    """a = [0.0, 0.0025, 0.004, 0.5]; grid 0.001, 0.002, ...; the aux accuracy (a stand-in for the
    model) is 1.0 with <= 2 flipped inputs and 0.7 with 3: with tolerance 0.2 the first crossing is
    k = 0.004 (F = {0, 1, 2}). Reference keeps k* = 0.004 (3 flips); rollback keeps k* = 0.003
    (2 flips, the last k that did not cross)."""
    a = np.array([0.0, 0.0025, 0.004, 0.5])
    wt = np.eye(4)
    w0 = np.zeros((4, 4))

    def acc(w: np.ndarray) -> float:
        flipped = int((np.diag(w) < 0).sum())  # flipped columns have diagonal 2*0 - 1 = -1
        return 1.0 if flipped <= 2 else 0.7

    grid = fl.threshold_grid(0.001, 0.001, 1.0)
    ref = fl.flain_search(a, wt, w0, acc, grid=grid, tolerance=0.2, rescale_norm=False)
    assert ref.k_star == pytest.approx(0.004) and ref.flip_count == 3
    assert ref.acc_after == 0.7 and ref.grid_steps == 4 and not ref.terminated_without_stop
    # evaluated at k = 0.001 (|F| = 1), 0.003 (|F| = 2), 0.004 (|F| = 3); 0.002 leaves F unchanged
    assert ref.evaluations == 3
    rb = fl.flain_search(
        a, wt, w0, acc, grid=grid, tolerance=0.2, mode="rollback", rescale_norm=False
    )
    assert rb.k_star == pytest.approx(0.003) and rb.flip_count == 2 and rb.acc_after == 1.0
    assert np.array_equal(np.diag(rb.weight) < 0, [True, True, False, False])


def test_tolerance_zero_stops_at_the_first_k_when_accuracy_does_not_rise() -> None:
    a = np.array([0.0, 0.3])
    res = fl.flain_search(
        a,
        np.eye(2),
        np.zeros((2, 2)),
        lambda w: 0.8,
        grid=fl.threshold_grid(0.001, 0.001, 1.0),
        tolerance=0.0,
        rescale_norm=False,
    )
    assert res.k_star == 0.001 and res.flip_count == 1 and res.grid_steps == 1


def test_guard_fires_when_tolerance_is_unreachable() -> None:
    a = np.array([0.0, 0.3, 2.0])
    grid = fl.threshold_grid(0.1, 0.1, 1.0)
    last = fl.flain_search(a, np.eye(3), np.zeros((3, 3)), lambda w: 1.0, grid=grid, tolerance=0.5)
    assert last.terminated_without_stop and last.flip_count == 2  # the last evaluated W
    assert np.linalg.norm(last.weight) == pytest.approx(np.linalg.norm(np.eye(3)))
    ident = fl.flain_search(
        a,
        np.eye(3),
        np.zeros((3, 3)),
        lambda w: 1.0,
        grid=grid,
        tolerance=0.5,
        on_no_stop="identity",
    )
    assert ident.terminated_without_stop and np.array_equal(ident.weight, np.eye(3))


def test_dormant_prune_zeroes_lowest_until_tolerance() -> None:
    a = np.array([0.5, 0.0, 0.2, 0.1])
    wt = np.ones((2, 4))

    def acc(w: np.ndarray) -> float:
        return 1.0 - 0.1 * int((w[0] == 0).sum())

    res = fl.dormant_prune(a, wt, acc, tolerance=0.15, step_fraction=0.25)
    # one pruned: drop 0.1 (ok); two: 0.2 > 0.15 -> keep one (input 1, the lowest activation)
    assert res.pruned == 1 and res.weight[:, 1].tolist() == [0.0, 0.0]
    assert res.weight[:, [0, 2, 3]].tolist() == [[1, 1, 1], [1, 1, 1]]


def test_flain_on_a_model_uses_cached_inputs_and_matches_full_forward() -> None:
    torch.manual_seed(1)
    model = _tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = (torch.rand(40, 1, 2, 2) * 255).to(torch.uint8)
    x[:, :, 0, 1] = 0  # input 1 is zero on every aux sample (mean 0 -> normalised 0 - ... )
    y = torch.randint(0, 2, (40,))
    name, lin = target_layer(model, None)
    assert name == "fc.0"
    inputs = layer_inputs(model, lin, x, mean=[0.0], std=[1.0], device=torch.device("cpu"))
    assert inputs.shape == (40, 4) and torch.all(inputs[:, 1] == 0)
    acc = aux_accuracy_fn(
        model, lin, inputs, x, y, mean=[0.0], std=[1.0], device=torch.device("cpu")
    )
    w = lin.weight.detach().numpy()
    expected = float((model(x.float() / 255).argmax(1) == y).float().mean())
    assert acc(w) == pytest.approx(expected)
    state, info = DEFENSES.get("flain")(
        model, initial, x, y, mean=[0.0], std=[1.0], device=torch.device("cpu"), dataset="mnist"
    )
    assert info["k_star"] == 0.001 and info["flip_count"] >= 1 and info["dormant_inputs"] == 1
    assert torch.linalg.norm(state["fc.0.weight"]) == pytest.approx(
        float(torch.linalg.norm(lin.weight.detach())), rel=1e-5
    )
    assert torch.equal(state["fc.0.bias"], model.state_dict()["fc.0.bias"])  # bias untouched
    assert torch.equal(state["classifier.weight"], model.state_dict()["classifier.weight"])


def test_schedule_per_dataset_and_unknown_dataset() -> None:
    assert schedule("fashion_mnist", None, None, None, None) == (0.0005, 0.0001, 1.0, 0.024)
    assert schedule("mnist", None, None, None, 0.05) == (0.001, 0.001, 1.0, 0.05)
    with pytest.raises(ConfigError, match="no threshold schedule for dataset 'digits'"):
        schedule("digits", None, None, None, None)
