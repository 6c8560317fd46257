"""Open-set FAL: the budget and metric math by hand, the client's oracle bookkeeping, one
end-to-end run on digits (K = 6 known digits), determinism, and the one-line refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clients import osal
from clients.fal import _view
from clients.query import ModelOutputs, QueryInputs, build_query
from fedsim.config import compose
from fedsim.errors import ConfigError
from fedsim.federation import build_federation
from fedsim.models import build_model
from fedsim.models.pair import DetectorPair
from fedsim.outputs import read_metrics
from fedsim.runner import prepare, run
from server.components.open_set_fal import auroc, cycle_metrics, open_set_budgets

# ---- math by hand ---------------------------------------------------------------------------------


def test_budgets_round_the_known_and_whole_pools_to_the_hundred() -> None:
    # N = 1000 -> 1000, N^kn = 500 -> 500; 3 clients
    assert open_set_budgets(
        [300, 500, 200], [150, 250, 100], initial_ratio=0.02, query_ratio=0.03
    ) == (3, 10)  # int(500 * 0.02 / 3), int(1000 * 0.03 / 3)


def test_cycle_metrics_by_hand() -> None:
    replies = [
        {"n_picks": 4, "n_known_picks": 3, "known_share_before": 0.5, "labeled_known": 10,
         "labeled_unknown": 1, "known_count": 20},
        {"n_picks": 2, "n_known_picks": 0, "known_share_before": 0.25, "labeled_known": 5,
         "labeled_unknown": 2, "known_count": 30},
    ]  # fmt: skip
    m = cycle_metrics(replies, initial_known=12)
    assert m["query_precision"] == pytest.approx(3 / 6)
    assert m["query_precision_macro"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["precision_lift"] == pytest.approx(((0.75 - 0.5) + (0.0 - 0.25)) / 2)
    assert m["known_recall"] == pytest.approx(15 / 50)
    assert m["known_recall_query"] == pytest.approx(3 / 38)
    assert m["labeled_unknown_per_client"] == [1, 2]


def test_each_open_set_strategy_declares_its_known_score() -> None:
    """Spec section 1.5's per-method known-scores on hand logits (K = 2)."""
    from clients.query import build_query

    z = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 5.0]])
    lse = np.log(np.exp(z[:, :2]).sum(1))
    softplus = np.log1p(np.exp(z[:, 2]))
    p_unknown = np.exp(z[:, 2]) / np.exp(z).sum(1)
    want = {
        "lfosa": [3.0, -np.inf],  # the MAV; -inf where D predicts unknown
        "eaoa": (lse - softplus).tolist(),  # -e1
        "bual": (1 - p_unknown).tolist(),
        "e2oal": [3.0 - 0.0, 1.0 - 5.0],  # max known logit - max unknown logit
    }
    for name, expected in want.items():
        got = build_query(name, {}).known_score(z, 2)
        assert got is not None and np.allclose(got, expected), name
    assert build_query("entropy", {}).known_score(z, 2) is None


def test_auroc_by_hand() -> None:
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs won
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0], bool)) == 0.5  # a tie counts half
    assert np.isnan(auroc(np.array([0.5]), np.array([1], bool)))


def test_initial_pool_draws_known_samples_only() -> None:
    labels = np.array([0, 3, 1, 3, 2])  # K = 3: positions 1 and 3 are unknown
    mask = osal.initial_pool(labels, 2, np.random.default_rng(0), 3)
    assert mask.sum() == 2 and not mask[[1, 3]].any()
    assert osal.initial_pool(labels, 5, np.random.default_rng(0), 3).tolist() == [
        True, False, True, False, True,
    ]  # fmt: skip  # fewer known samples than b0: all of them


def test_pick_metrics_charge_unknown_picks_and_count_the_pool() -> None:
    labels = np.array([0, 3, 1, 3, 2, 0])  # K = 3
    before = np.array([1, 0, 0, 0, 0, 0], bool)
    m = osal.pick_metrics(labels, before, np.array([1, 2, 3]), 3)
    assert m["n_picks"] == 3 and m["n_known_picks"] == 1
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["known_share_before"] == pytest.approx(3 / 5)  # labels 3,1,3,2,0 unlabeled
    assert (m["labeled_known"], m["labeled_unknown"], m["known_unlabeled"]) == (2, 2, 2)
    assert m["known_count"] == 4


def test_only_a_federated_detector_travels_with_the_target() -> None:
    from fedsim.models import model_for

    base = ["query=lfosa", "open_set=class_split"]
    fed = build_federation(compose(base))
    assert isinstance(model_for(compose(base), fed.data), DetectorPair)
    local = model_for(compose([*base, "open_set.detector=local"]), fed.data)
    assert not isinstance(local, DetectorPair) and local.num_classes == 6
    assert not isinstance(
        model_for(compose(["query=entropy", "open_set=class_split"]), fed.data), DetectorPair
    )


def test_detector_pair_is_the_target_outside_and_both_in_its_state() -> None:
    torch.manual_seed(0)
    kw: dict[str, Any] = {"in_channels": 1, "image_size": 8, "params": {"hidden": [8]}}
    target, detector = (
        build_model("mlp", num_classes=3, **kw),
        build_model("mlp", num_classes=4, **kw),
    )
    pair = DetectorPair(target, detector)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(pair(x), target(x)) and pair.num_classes == 3
    keys = list(pair.state_dict())
    assert {k.split(".")[0] for k in keys} == {"target", "detector"}


def test_an_unaware_strategy_never_sees_nor_picks_a_labeled_unknown() -> None:
    n = 12
    labels = np.full(n, -1)
    labels[[0, 1]] = [0, 1]
    labels[[2, 3, 4]] = 2  # labeled unknowns (K = 2)
    probs = np.full((n, 2), 0.5)
    probs[:, 0] = np.linspace(0.5, 0.99, n)  # position 0 the most uncertain
    out = ModelOutputs(np.log(probs), np.zeros((n, 1)), np.log(probs))
    inp = QueryInputs(
        labeled=labels >= 0,
        labels=labels,
        budget=3,
        num_classes=2,
        rng=np.random.default_rng(0),
        outputs=lambda kind: out,
        unknown_label=2,
    )
    strategy = build_query("entropy", {})
    view, keep = _view(strategy, inp)
    assert keep is not None and keep.tolist() == [0, 1, *range(5, n)]
    assert (view.labels != 2).all() and view.outputs("global").probs.shape == (n - 3, 2)
    picks = keep[strategy.select(view)]
    assert picks.tolist() == [5, 6, 7]  # the most uncertain unlabeled rows


# ---- end to end -----------------------------------------------------------------------------------

OVERRIDES = [
    "open_set=class_split",
    "open_set.log_picks=true",
    "open_set.cycles=2",
    "num_clients=5",
    "clients_per_round=5",
    "rounds=2",
    "progress=false",
    "tensorboard=false",
    "engine.num_cpus=2",
]


def _run(tmp: Path, query: str, *extra: str) -> tuple[dict, list[dict]]:
    cfg = compose([f"query={query}", *OVERRIDES, *extra])
    cfg.output_dir = str(tmp)
    return run(cfg), read_metrics(tmp)


@pytest.fixture(scope="module")
def lfosa_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    d = tmp_path_factory.mktemp("lfosa")
    summary, metrics = _run(d, "lfosa", "open_set.detection_test=true")
    return d, summary, metrics


def test_open_set_run_charges_every_pick_and_reports_true_precision(lfosa_run) -> None:
    run_dir, summary, metrics = lfosa_run
    cfg = compose(["query=lfosa", *OVERRIDES])
    fed = build_federation(cfg)
    k = fed.data.num_classes
    assert k == 6 and summary["known_size"] == sum(
        int((fed.data.train_y[p] < k).sum()) for p in map(torch.from_numpy, fed.partitions)
    )
    b0, b = summary["budget_initial"], summary["budget_per_cycle"]
    assert (b0, b) == open_set_budgets(
        [len(p) for p in fed.partitions],
        [int((fed.data.train_y[torch.from_numpy(p)] < k).sum()) for p in fed.partitions],
        initial_ratio=0.02,
        query_ratio=0.03,
    )
    n = len(fed.partitions)
    assert n == 5 and summary["labels_spent"] == [n * b0, n * b0 + n * b, n * b0 + 2 * n * b]
    stages = [r for r in metrics if r.get("kind") == "stage"]
    seen: dict[str, set[int]] = {}
    for cycle in (0, 1):
        replies = json.loads((run_dir / "fal" / f"cycle_{cycle}.json").read_text())
        known_picks = total = 0
        for pid, m in replies.items():
            y = fed.data.train_y[torch.from_numpy(fed.partitions[int(pid)])].numpy()
            picks = m["picks"]
            assert len(picks) == b == len(set(picks))
            assert not seen.setdefault(pid, set()) & set(picks)  # an unknown pick left the pool
            seen[pid] |= set(picks)
            known_picks += int((y[picks] < k).sum())
            total += len(picks)
        assert stages[cycle]["query_precision"] == pytest.approx(known_picks / total)
        assert summary["query_precisions"][cycle] == pytest.approx(known_picks / total)
    recalls = summary["known_recalls"]
    assert recalls == sorted(recalls) and recalls[0] > 0
    assert len(stages[-1]["per_class_accuracy"]) == k  # the test split holds known classes only
    assert 0 <= summary["final_auroc_msp"] <= 1 and 0 <= summary["final_auroc_detector"] <= 1
    assert 0 <= summary["final_auroc_method"] <= 1  # LfOSA's own MAV score
    assert all("auroc_method" in r for r in stages)


def test_open_set_run_is_deterministic(lfosa_run, tmp_path: Path) -> None:
    _, summary, metrics = lfosa_run
    again, metrics2 = _run(tmp_path, "lfosa", "open_set.detection_test=true")
    keep = ("eval_accuracy", "train_loss", "query_precision", "known_recall", "labeled_hist")
    assert [{k: r.get(k) for k in keep} for r in metrics] == [
        {k: r.get(k) for k in keep} for r in metrics2
    ]
    assert again["query_precisions"] == summary["query_precisions"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "extra"),
    [
        ("eaoa", ()),
        ("e2oal", ("local.epochs=2",)),
        ("bual", ("query.nl_epochs=4", "query.probe_every=2")),
        ("entropy", ()),
        ("fairfal", ()),
        ("random", ("weak_labels=noisy", "weak_labels.rate=0.2")),  # composes with weak labels
        ("lfosa", ("open_set=cross_dataset", "dataset=mnist", "dataset.root=../shared/data",
                   "max_train_samples=3000", "open_set.unknown_ratio=0.6")),
        ("eaoa", ("engine=flower",)),  # the query phase over Flower's own message path
        ("lfosa", ("open_set.detector=local", "open_set.detector_epochs=2")),
    ],
)  # fmt: skip
def test_other_open_set_strategies_end_to_end(query: str, extra: tuple, tmp_path: Path) -> None:
    if "dataset=mnist" in extra and not Path("../shared/data").exists():
        pytest.skip("no ../shared/data")
    overrides = [
        o for o in OVERRIDES if not (o.startswith("open_set=") and "open_set=" in str(extra))
    ]
    cfg = compose([f"query={query}", *overrides, *extra])
    cfg.output_dir = str(tmp_path)
    summary = run(cfg)
    b0, b = summary["budget_initial"], summary["budget_per_cycle"]
    n = cfg.num_clients
    assert summary["labels_spent"] == [n * b0, n * b0 + n * b, n * b0 + 2 * n * b]
    assert len(summary["query_precisions"]) == 2
    assert all(0 <= p <= 1 for p in summary["query_precisions"])


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["open_set=class_split"], r"open_set=class_split needs a query strategy"),
        (["query=lfosa"], r"query=lfosa is an open-set strategy.*open_set=class_split"),
        (["query=lfosa", "open_set=class_split", "open_set.num_known=10"], r"open_set.num_known"),
        (["query=entropy", "open_set=class_split", "open_set.mode=other"], r"open_set.mode"),
        (["query=entropy", "open_set=class_split", "attack=cba"], r"attack=cba.*allowed attack=none"),
        (["query=random", "local=det_ce_t"], r"local=det_ce_t: a helper learner"),
        (["query=lfosa", "open_set=class_split", "open_set.detector=shared"], r"open_set.detector"),
        (["query=lfosa", "open_set=class_split", "query.known_T=0"], r"query.known_T"),
        (["query=bual", "open_set=class_split", "query.nl_early_stop=oracle"], r"nl_early_stop"),
        (
            ["query=lfosa", "open_set=class_split", "open_set.cycles=400"],
            r"open_set.cycles=400: client \d+ holds",
        ),
    ],
)  # fmt: skip
def test_bad_open_set_input_is_one_clear_line(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg = compose(overrides)
        cfg.output_dir = "unused"
        prepare(cfg)
    assert "\n" not in str(info.value)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_resuming_without_logged_picks_is_refused_in_one_line() -> None:
    from server.components.open_set_fal import OpenSetActiveLearning

    overrides = ["query=lfosa", "open_set=class_split", "resume=outputs/some_run"]
    with pytest.raises(ConfigError, match=r"resume with open_set.log_picks=false") as info:
        OpenSetActiveLearning.check(compose(overrides))
    assert "\n" not in str(info.value)
    OpenSetActiveLearning.check(compose([*overrides, "open_set.log_picks=true"]))  # allowed
