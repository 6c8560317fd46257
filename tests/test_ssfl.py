"""Semi-supervised FL: pseudo-label math on hand-made numbers, the settings' label placement,
the server step (labels-at-server only), the learners on toy data, and refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients.learners import ClientData, build_learner
from clients.learners.fedlabel import LOCAL_PREFIX
from clients.learners.pseudo_labels import (
    PseudoLabelStats,
    confident_pseudo_labels,
    consistency_term,
    expert_scores,
    fedlabel_loss,
    fedlabel_select,
)
from fedsim import constants as C
from fedsim.config import compose, validate
from fedsim.errors import ConfigError
from fedsim.federation import build_federation
from fedsim.models import build_model
from fedsim.records import array_record, torch_state
from fedsim.ssfl import split_server_set
from server.components.ssfl import SemiSupervised, pooled_pseudo_labels, server_step_enabled
from server.workflow import Workflow


# ---- pure math ----------------------------------------------------------------------------------
def test_confidence_selection_with_threshold() -> None:
    probs = torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.4, 0.1], [0.0, 0.05, 0.95]])
    pseudo, mask = confident_pseudo_labels(probs, 0.95)
    assert pseudo.tolist() == [0, 0, 2]
    assert mask.tolist() == [True, False, True]  # 0.95 >= 0.95 passes
    per_class = torch.tensor([0.5, 0.3, 0.99])  # one threshold per argmax class
    assert confident_pseudo_labels(probs, per_class)[1].tolist() == [True, True, False]


def test_expert_scores_by_hand() -> None:
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert torch.allclose(expert_scores(p, "variance"), torch.tensor([0.25, 0.0]))
    assert torch.allclose(expert_scores(p, "max_prob"), torch.tensor([1.0, 0.5]))
    assert torch.allclose(expert_scores(p, "neg_entropy"), torch.tensor([0.0, -math.log(2)]))
    with pytest.raises(ValueError, match="unknown FedLabel score"):
        expert_scores(p, "margin")


def test_fedlabel_picks_the_more_expert_model_per_sample() -> None:
    # sample 0: local sure of class 0, global unsure of class 1 -> local is the expert, labels 0
    # sample 1: global sure of class 2, local unsure -> global, label 2
    # sample 2: identical -> tie goes to the global model
    p_local = torch.tensor([[0.98, 0.01, 0.01], [0.4, 0.3, 0.3], [0.6, 0.2, 0.2]])
    p_global = torch.tensor([[0.3, 0.4, 0.3], [0.01, 0.01, 0.98], [0.6, 0.2, 0.2]])
    ch = fedlabel_select(p_local, p_global, score="max_prob", beta=0.95)
    assert ch.local_is_expert.tolist() == [True, False, False]
    assert ch.pseudo.tolist() == [0, 2, 0]
    assert ch.mask.tolist() == [True, True, False]  # the tie's expert has 0.6 < beta
    assert ch.agree.tolist() == [False, False, True]
    # weight = s_other / s_expert with max_prob: 0.4/0.98, 0.4/0.98, 0.6/0.6
    assert torch.allclose(ch.weight, torch.tensor([0.4 / 0.98, 0.4 / 0.98, 1.0]))
    assert torch.equal(ch.other[0], p_global[0]) and torch.equal(ch.other[1], p_local[1])


def test_variance_score_choice_and_weight_by_hand() -> None:
    p_local = torch.tensor([[0.9, 0.1]])  # variance 0.16
    p_global = torch.tensor([[0.7, 0.3]])  # variance 0.04
    ch = fedlabel_select(p_local, p_global, score="variance", beta=0.5)
    assert ch.local_is_expert.tolist() == [True] and ch.agree.tolist() == [True]
    assert torch.allclose(ch.weight, torch.tensor([0.04 / 0.16]))


def test_consistency_term_is_zero_when_the_two_models_agree_exactly() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    p = F.softmax(logits, dim=1)
    assert torch.allclose(consistency_term(logits, p), torch.zeros(2), atol=1e-6)
    # the local and global models give the same probabilities as the student: with no confident
    # pseudo-label (beta above 1) the whole FedLabel loss is the consistency term, and it is 0
    ch = fedlabel_select(p, p.clone(), score="variance", beta=1.01)
    assert ch.agree.all() and not ch.mask.any()
    assert float(fedlabel_loss(logits, ch, lambda0=1.0)) == pytest.approx(0.0, abs=1e-6)
    # a student that differs pays a positive KL; without agreement the term is off
    other = logits + torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(fedlabel_loss(other, ch, lambda0=1.0)) > 1e-3
    ch.agree[:] = False
    assert float(fedlabel_loss(other, ch, lambda0=1.0)) == pytest.approx(0.0, abs=1e-7)


def test_pseudo_label_counts_and_pooling() -> None:
    stats = PseudoLabelStats()
    stats.add(
        torch.tensor([0, 1, 2, 1]),
        torch.tensor([True, True, False, True]),
        torch.tensor([0, 2, 2, 1]),
    )
    m = stats.metrics()
    assert (m[C.PSEUDO_LABEL_SEEN], m[C.PSEUDO_LABEL_COUNT], m[C.PSEUDO_LABEL_CORRECT]) == (4, 3, 2)
    assert m[C.PSEUDO_LABEL_ACCURACY] == pytest.approx(2 / 3)
    other = {C.PSEUDO_LABEL_SEEN: 6.0, C.PSEUDO_LABEL_COUNT: 1.0, C.PSEUDO_LABEL_CORRECT: 0.0}
    pooled = pooled_pseudo_labels([m, other, {C.TRAIN_LOSS: 1.0}])  # pooled, not averaged
    assert pooled[C.PSEUDO_LABEL_ACCURACY] == pytest.approx(2 / 4)
    assert pooled[C.PSEUDO_LABEL_RATE] == pytest.approx(4 / 10)
    assert pooled_pseudo_labels([{C.TRAIN_LOSS: 1.0}]) == {}


# ---- settings -----------------------------------------------------------------------------------
def test_server_set_is_seeded_disjoint_and_sized() -> None:
    labels = np.arange(100) % 5
    pool = np.arange(10, 100)
    node = {"name": "labels_at_server", "labeled_ratio": 0.1, "labels_per_class": None}
    rest, server = split_server_set(node, labels, pool, seed=3)
    assert len(server) == 9 and len(rest) == 81
    assert not set(rest) & set(server) and set(rest) | set(server) == set(pool)
    assert np.array_equal(server, split_server_set(node, labels, pool, seed=3)[1])
    node = {"name": "labels_at_server", "labeled_ratio": None, "labels_per_class": 2}
    _, server = split_server_set(node, labels, pool, seed=3)
    assert np.bincount(labels[server]).tolist() == [2, 2, 2, 2, 2]
    rest, server = split_server_set({"name": "labels_at_client"}, labels, pool, seed=3)
    assert len(server) == 0 and np.array_equal(rest, pool)


def _fed(*overrides: str) -> Any:
    cfg = compose(["num_clients=5", "clients_per_round=5", *overrides])
    validate(cfg)
    return cfg, build_federation(cfg)


def test_labels_at_client_every_client_has_its_ratio() -> None:
    _, fed = _fed("ssfl=labels_at_client", "ssfl.labeled_ratio=0.1")
    assert len(fed.server_indices) == 0
    for pid, part in enumerate(fed.partitions):
        d = fed.client_data(pid)
        assert int((d.y >= 0).sum()) == max(1, round(0.1 * len(part)))
        lab = d.y >= 0
        assert torch.equal(d.y[lab], d.true_y[lab])  # given labels are the true ones


def test_labels_at_server_clients_hold_no_labels() -> None:
    cfg, fed = _fed("ssfl=labels_at_server", "ssfl.labeled_ratio=0.1")
    kept = np.concatenate(fed.partitions)
    assert len(fed.server_indices) > 0
    assert not set(fed.server_indices.tolist()) & set(kept.tolist())
    assert all(int((fed.client_data(p).y >= 0).sum()) == 0 for p in range(5))
    # about 10% of the pool is the server's
    assert len(fed.server_indices) == round(0.1 * (len(kept) + len(fed.server_indices)))


def test_partial_client_some_clients_fully_labeled_the_rest_unlabeled() -> None:
    _, fed = _fed("ssfl=partial_client", "ssfl.labeled_clients=2")
    labeled = [bool((fed.client_data(p).y >= 0).all()) for p in range(5)]
    unlabeled = [bool((fed.client_data(p).y < 0).all()) for p in range(5)]
    assert sum(labeled) == 2 and sum(unlabeled) == 3


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["ssfl=labels_at_client", "weak_labels=noisy"], "cannot be combined with weak_labels"),
        (["ssfl=partial_client", "ssfl.labeled_clients=10"], "ssfl.labeled_clients"),
        (["ssfl=labels_at_client", "+ssfl.server_lr=0.1"], "invalid ssfl parameter 'server_lr'"),
        (["ssfl=labels_at_client", "ssfl.labeled_ratio=0"], "ssfl.labeled_ratio"),
        (["ssfl=labels_at_server", "ssfl.server_batch_size=0"], "ssfl.server_batch_size"),
        (["ssfl=labels_at_client", "local=fedlabel", "local.score=margin"], "local.score"),
    ],
)
def test_bad_ssfl_config_is_refused_with_one_line(overrides: list[str], match: str) -> None:
    cfg = compose(overrides)
    with pytest.raises(ConfigError, match=match) as info:
        validate(cfg)
        from fedsim.runner import prepare

        cfg.output_dir = "/tmp/unused"
        prepare(cfg)
    assert "\n" not in str(info.value)


# ---- the server step ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting", ["labels_at_server", "labels_at_client", "partial_client", "none"]
)
def test_server_step_runs_only_with_labels_at_the_server(
    setting: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    cfg = compose(["num_clients=5", "clients_per_round=5", f"ssfl={setting}", "local=fixmatch"])
    validate(cfg)
    cfg.device = "cpu"
    wf = Workflow(cfg, tmp_path)
    wf.setup()
    ssfl = wf.component("ssfl")
    assert isinstance(ssfl, SemiSupervised) == (setting != "none")
    fresh = wf.build_model()
    model = wf.build_model()
    if ssfl is not None:
        ssfl.on_initial_model(wf, model)  # labels-at-server: the warm start trains it
    warm = any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    assert warm == (setting == "labels_at_server") == server_step_enabled(cfg)
    arrays = array_record(fresh.state_dict())
    # the clients' part of the round is skipped: after_aggregate sees the model unchanged
    metrics: dict[str, Any] = {}
    new = ssfl.after_aggregate(wf, 1, arrays, metrics) if ssfl is not None else arrays
    changed = any(
        not torch.equal(torch_state(new)[k], torch_state(arrays)[k]) for k in torch_state(arrays)
    )
    assert changed == (setting == "labels_at_server")
    assert (C.SERVER_TRAIN_LOSS in metrics) == (setting == "labels_at_server")


def test_supervised_only_skips_clients_without_labels(tmp_path: Any) -> None:
    for setting, expected in (
        ("labels_at_server", 0),
        ("partial_client", 1),
        ("labels_at_client", 5),
    ):
        cfg = compose(
            ["num_clients=5", "clients_per_round=5", f"ssfl={setting}", "local=supervised"]
        )
        cfg.device = "cpu"
        wf = Workflow(cfg, tmp_path)
        wf.setup()
        ssfl = wf.component("ssfl")
        assert isinstance(ssfl, SemiSupervised)
        assert len(ssfl.trainers(wf, list(range(5)))) == expected


# ---- learners on toy data -----------------------------------------------------------------------
def _toy(n: int = 120, c: int = 3, labeled: int = 0, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randint(0, 30, (n, 1, 8, 8), generator=g)
    for k in range(c):
        x[y == k, :, 2 * k : 2 * k + 2, :] += 200
    given = torch.full_like(y, -1)
    given[:labeled] = y[:labeled]
    return ClientData(
        x=x.to(torch.uint8),
        y=given,
        mean=(0.3,),
        std=(0.3,),
        num_classes=c,
        label_kind="semi",
        true_y=y,
    )


def _pretrained(data: ClientData) -> torch.nn.Module:
    """A model that already knows the toy task (trained on the true labels)."""
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=3, in_channels=1, image_size=8, params={"hidden": [32]})
    full = ClientData(x=data.x, y=data.true_y, mean=data.mean, std=data.std, num_classes=3)
    build_learner("supervised", {"epochs": 10, "batch_size": 16, "lr": 0.1}).train(
        model, full, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0)
    )
    return model


AUG = {"flip": False, "pad": 1, "ra_group": 8, "mu": 2}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fixmatch", {"threshold": 0.9, **AUG}),
        ("fedlabel", {"beta": 0.9, **AUG}),
        ("fedlabel", {"beta": 0.9, "local_model": "in_round", **AUG}),
        ("semifl", {"threshold": 0.9, "flip": False, "pad": 1, "ra_group": 8}),
    ],
)
def test_unlabeled_only_client_trains_and_reports_pseudo_label_accuracy(
    name: str, params: dict[str, Any]
) -> None:
    data = _toy(labeled=0)
    model = _pretrained(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = build_learner(name, {"epochs": 1, "batch_size": 16, "lr": 0.05, **params})
    torch.manual_seed(1)
    result = learner.train(
        model,
        data,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(1),
        state={},
    )
    assert result.num_examples > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    m = result.metrics
    assert m[C.PSEUDO_LABEL_COUNT] > 0 and m[C.PSEUDO_LABEL_SEEN] >= m[C.PSEUDO_LABEL_COUNT]
    assert m[C.PSEUDO_LABEL_ACCURACY] > 0.9  # the pretrained model's confident labels are right


def test_pseudo_label_accuracy_counts_wrong_labels() -> None:
    data = _toy(labeled=0)
    model = _pretrained(data)
    wrong = ClientData(  # the hidden truth shifted by one class: every confident label is wrong
        x=data.x,
        y=data.y,
        mean=data.mean,
        std=data.std,
        num_classes=3,
        label_kind="semi",
        true_y=(data.true_y + 1) % 3,
    )
    learner = build_learner("semifl", {"threshold": 0.9, "flip": False, "pad": 1, "epochs": 1})
    result = learner.train(
        model, wrong, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1)
    )
    assert result.metrics[C.PSEUDO_LABEL_COUNT] > 0
    assert result.metrics[C.PSEUDO_LABEL_ACCURACY] < 0.1


def test_fedlabel_keeps_its_local_model_across_rounds() -> None:
    data = _toy(labeled=12)
    learner = build_learner(
        "fedlabel", {"epochs": 1, "batch_size": 8, "lr": 0.1, "beta": 0.9, **AUG}
    )
    state: dict[str, Any] = {}
    torch.manual_seed(0)
    glob = build_model("mlp", num_classes=3, in_channels=1, image_size=8, params={"hidden": [32]})
    init = {k: v.clone() for k, v in glob.state_dict().items()}
    learner.train(
        glob,
        data,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        state=state,
    )
    saved = {
        k[len(LOCAL_PREFIX) :]: v.copy() for k, v in state.items() if k.startswith(LOCAL_PREFIX)
    }
    assert set(saved) == set(init)
    assert any(not np.allclose(saved[k], init[k].numpy()) for k in saved)  # it trained
    # round 2 receives the initial model again: the local model continues from round 1's
    glob.load_state_dict(init)
    learner.train(
        glob,
        data,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(1),
        state=state,
    )
    again = {k[len(LOCAL_PREFIX) :]: v for k, v in state.items() if k.startswith(LOCAL_PREFIX)}
    fresh: dict[str, Any] = {}
    glob.load_state_dict(init)
    learner.train(
        glob,
        data,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(1),
        state=fresh,
    )
    assert any(not np.allclose(again[k], fresh[LOCAL_PREFIX + k]) for k in again)


def test_semifl_without_confident_labels_reports_zero_examples() -> None:
    data = _toy(labeled=0)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=3, in_channels=1, image_size=8, params={"hidden": [32]})
    learner = build_learner("semifl", {"threshold": 1.01, "epochs": 1})  # nothing passes
    result = learner.train(
        model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0)
    )
    assert result.num_examples == 0 and result.metrics[C.PSEUDO_LABEL_COUNT] == 0


@pytest.mark.slow
def test_labels_at_server_semifl_run_logs_pseudo_labels_and_server_step(tmp_path: Any) -> None:
    import json

    from fedsim.runner import run

    cfg = compose(
        [
            "ssfl=labels_at_server",
            "ssfl.labeled_ratio=0.1",
            "local=semifl",
            "local.flip=false",
            "local.pad=1",
            "local.ra_group=16",
            "local.epochs=1",
            "rounds=2",
            "progress=false",
            "tensorboard=false",
            "engine.num_cpus=2",
            f"output_dir={tmp_path}",
        ]
    )
    summary = run(cfg)
    rows = [json.loads(line) for line in (tmp_path / C.METRICS_FILE).read_text().splitlines()]
    assert len(rows) == 2 and summary[C.FINAL_ACCURACY] > 0.3
    assert all(C.SERVER_TRAIN_LOSS in r and C.PSEUDO_LABEL_RATE in r for r in rows)
    assert 0.0 <= rows[-1][C.PSEUDO_LABEL_RATE] <= 1.0
