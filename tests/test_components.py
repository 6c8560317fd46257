"""Workflow components: their declarations, their checks before any work (hand-computed cases),
and the strategies' own checkpoint state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.errors import ConfigError, RunStopped
from fedsim.runner import run
from server.components import COMPONENTS, build_components, check_components, promised_keys
from server.components.fal import check_budgets, plan
from server.workflow_parts import check_holdout_fits
from strategies import build_strategy
from strategies.state import bind_partitions, load_strategy_state, strategy_state


def _fal_cfg(end_ratio: float, allow: bool = False) -> object:
    return compose(
        ["query=entropy", f"fal.end_ratio={end_ratio}", f"fal.allow_shortfall={str(allow).lower()}"]
    )


def test_fal_plan_is_the_spec_budget() -> None:
    # N = 1000 over 4 clients: b0 = b = int(1000 * 0.05 / 4) = 12; ratios 0.05 .. 0.15
    b0, b, ratios = plan(_fal_cfg(0.15), [250, 250, 250, 250])  # type: ignore[arg-type]
    assert (b0, b, ratios) == (12, 12, [0.05, 0.1, 0.15])


def test_fal_budgets_a_pool_cannot_supply_are_refused_before_any_work() -> None:
    sizes = [400, 400, 400, 40]  # N100 = 1200: b0 = b = 15 per client
    check_budgets(_fal_cfg(0.1), sizes)  # type: ignore[arg-type]  # 15 + 1 x 15 <= 40
    with pytest.raises(ConfigError) as info:
        check_budgets(_fal_cfg(0.15), sizes)  # type: ignore[arg-type]  # 15 + 2 x 15 = 45 > 40
    msg = str(info.value)
    assert "client 3 holds 40 samples" in msg and "need 45" in msg
    assert "fal.end_ratio <= 0.1" in msg and "\n" not in msg
    check_budgets(_fal_cfg(0.15, allow=True), sizes)  # type: ignore[arg-type]


def test_empty_fal_budgets_are_refused() -> None:
    with pytest.raises(ConfigError, match="FAL budgets of 40 samples over 4 clients are empty"):
        check_budgets(_fal_cfg(0.15), [10, 10, 10, 10])  # type: ignore[arg-type]


def test_holdout_that_empties_a_class_is_refused() -> None:
    test_y = np.repeat(np.arange(3), [10, 12, 30])  # smallest class: 10 images
    ok = compose(["backdoor_eval.aux_per_class=6", "backdoor_eval.root_per_class=3"])
    check_holdout_fits(ok, test_y, why="attack=cba")  # 6 + 3 < 10: one clean image left
    bad = compose(["backdoor_eval.aux_per_class=7", "backdoor_eval.root_per_class=3"])
    with pytest.raises(ConfigError) as info:
        check_holdout_fits(bad, test_y, why="attack=cba")
    assert "aux_per_class + root_per_class <= 9" in str(info.value)
    head = compose(["backdoor_eval.aux_source=test_head", "backdoor_eval.aux_per_class=80"])
    check_holdout_fits(head, test_y, why="defense")  # the reference overlap: nothing held out


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["query=entropy", "ssfl=labels_at_client"], "active learning decides which samples"),
        (["query=margin", "weak_labels=semi"], "allowed weak_labels=clean or noisy"),
    ],
)
def test_conflicting_features_are_refused_with_one_line(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        check_components(compose(overrides))
    assert "\n" not in str(info.value)


def test_every_component_declares_itself() -> None:
    assert set(COMPONENTS.names()) == {
        "backdoor",
        "defense",
        "fal",
        "fltrust",
        "open_set_fal",
        "ssfl",
        "validation",
    }
    osal = compose(["query=lfosa", "open_set=class_split"])
    assert [c.name for c in build_components(osal)] == ["validation", "open_set_fal"]
    assert {"mean_query_precision", "final_known_recall", C.AULC} <= promised_keys(osal)[1]
    cfg = compose(["attack=cba", "query=entropy", "defense=dormant_pruning"])
    rounds, summary = promised_keys(cfg)
    assert {C.BACKDOOR_MA, C.BACKDOOR_ASR, C.BACKDOOR_RA, C.VAL_ASR} <= rounds
    assert {C.AULC, "defense", C.TEST_AT_BEST_VAL} <= summary
    assert promised_keys(compose())[0] == {C.VAL_LOSS, C.VAL_ACCURACY}
    assert promised_keys(compose(["dataset.val_fraction=0"]))[0] == set()
    orders = [c.order for c in build_components(cfg)]
    assert orders == sorted(orders)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "foolsgold"])
def test_stateful_strategies_declare_their_state(name: str) -> None:
    strategy = build_strategy(compose([f"strategy={name}"]))
    assert "own" in strategy_state(strategy)
    assert strategy_state(build_strategy(compose(["strategy=fedavg"]))) == {}


def test_foolsgold_state_is_saved_by_partition_and_restored_on_new_node_ids() -> None:
    cfg = compose(["strategy=foolsgold"])
    first = build_strategy(cfg)
    bind_partitions(first, {0: 111, 1: 222})
    first.history = {111: np.array([1.0, 2.0]), 222: np.array([3.0, 4.0])}  # type: ignore[attr-defined]
    state = strategy_state(first)
    assert sorted(state["own"]["history"]) == [0, 1]
    second = build_strategy(cfg)
    bind_partitions(second, {0: 7, 1: 9})  # the resumed run's nodes
    load_strategy_state(second, state)
    np.testing.assert_array_equal(second.history[9], [3.0, 4.0])  # type: ignore[attr-defined]
    assert sorted(second.history) == [7, 9]  # type: ignore[attr-defined]


def test_wrapped_strategy_state_is_its_inner_state() -> None:
    cfg = compose(["strategy=dp_fixed_clipping", "strategy.inner=fedadam"])
    strategy = build_strategy(cfg)
    strategy.strategy.m_t = {"w": np.ones(2)}  # type: ignore[attr-defined]
    state = strategy_state(strategy)
    fresh = build_strategy(cfg)
    load_strategy_state(fresh, state)
    np.testing.assert_array_equal(fresh.strategy.m_t["w"], np.ones(2))  # type: ignore[attr-defined]


def test_fal_stages_get_the_loops_retries_and_federated_evaluation(tmp_path: Path) -> None:
    """A failing client inside an FAL stage is retried, and clients evaluate every round."""
    out = tmp_path / "fal"
    cfg = compose(
        [
            "query=entropy",
            "fal.end_ratio=0.1",  # 2 stages
            "rounds=2",
            "num_clients=4",
            "clients_per_round=3",
            "min_clients=3",
            "too_few_replies=retry",
            "faults.raise_clients=[0,1,2,3]",
            "faults.rounds=[3]",  # the first round of stage 1
            "federated_eval_every=1",
            "progress=false",
            "tensorboard=false",
            f"output_dir={out}",
        ]
    )
    with pytest.raises(RunStopped, match=r"round 3: .* stopped after 2 retries"):
        run(cfg)
    records = [json.loads(line) for line in (out / C.METRICS_FILE).read_text().splitlines()]
    rounds = [r for r in records if r.get(C.RECORD_KIND) != "stage"]
    assert [r[C.ROUND] for r in rounds] == [1, 2]
    assert all(0 <= r["federated_eval_accuracy"] <= 1 for r in rounds)
    assert [r[C.ROUND] for r in records if r.get(C.RECORD_KIND) == "stage"] == [2]
    assert (out / C.CHECKPOINT_DIR / "round_00002.pt").is_file()  # the stage end, for resume
