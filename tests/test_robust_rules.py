"""Robust aggregation rules on small hand-made updates: a clear outlier is excluded or
down-weighted, and without attackers the result stays near the mean."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedsim.config import compose
from strategies import STRATEGIES, build_strategy
from strategies import robust_math as rm


def honest(n: int = 8, d: int = 20, seed: int = 0) -> np.ndarray:
    """``n`` similar updates around a common direction."""
    rng = np.random.default_rng(seed)
    base = np.ones(d)
    return base + 0.1 * rng.standard_normal((n, d))


def with_outlier(n: int = 8, d: int = 20) -> np.ndarray:
    U = honest(n, d)
    U[-1] = -20.0 * np.ones(d)  # large and opposite
    return U


def test_flatten_unflatten_round_trip() -> None:
    like = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    U = rm.flatten([[np.arange(6).reshape(2, 3), np.arange(4)]])
    back = rm.unflatten(U[0], like)
    assert back[0].tolist() == [[0, 1, 2], [3, 4, 5]] and back[1].tolist() == [0, 1, 2, 3]
    assert back[0].dtype == np.float32


def test_norm_clipping_bounds_the_outlier_and_keeps_honest_mean() -> None:
    U = with_outlier()
    agg = rm.norm_clipping(U, np.ones(len(U)), clip_norm=3.0)
    assert np.all(np.linalg.norm(rm.clip_rows(U, 3.0), axis=1) <= 3.0 + 1e-9)
    # plain mean is dragged negative by the outlier; the clipped one stays positive
    assert U.mean(0).mean() < 0 < agg.mean()
    H = honest()
    big = 1e6
    assert np.allclose(rm.norm_clipping(H, np.ones(len(H)), clip_norm=big), H.mean(0))


def test_weak_dp_noise_has_the_requested_scale() -> None:
    H = np.zeros((4, 20000))
    agg = rm.norm_clipping(
        H, np.ones(4), clip_norm=1.0, noise_std=0.5, rng=np.random.default_rng(1)
    )
    assert abs(agg.std() - 0.5) < 0.02


def test_fltrust_gives_zero_trust_to_opposite_update() -> None:
    U = with_outlier()
    agg, ts = rm.fltrust(U, np.ones(U.shape[1]))
    assert ts[-1] == 0 and np.all(ts[:-1] > 0.9)
    assert agg.mean() > 0
    # every kept update is rescaled to the server update's norm
    g0 = 2.0 * np.ones(U.shape[1])
    agg, _ = rm.fltrust(honest(), g0)
    assert abs(np.linalg.norm(agg) - np.linalg.norm(g0)) < 0.05 * np.linalg.norm(g0)


def test_flame_rejects_the_dissimilar_update() -> None:
    U = with_outlier()
    agg, accepted = rm.flame(U, noise_lambda=0.0)
    # the outlier is out; the kept cluster is a majority (HDBSCAN may call a few honest points noise)
    assert not accepted[-1] and accepted.sum() >= len(U) // 2 + 1
    s = float(np.median(np.linalg.norm(U, axis=1)))
    assert np.allclose(agg, rm.clip_rows(U[accepted], s).mean(0))
    H = honest()
    agg, accepted = rm.flame(H, noise_lambda=0.0)
    assert accepted.sum() >= len(H) // 2 + 1 and np.allclose(agg, H.mean(0), atol=0.1)


def test_foolsgold_down_weights_sybils() -> None:
    rng = np.random.default_rng(3)
    diverse = rng.standard_normal((5, 30))  # honest clients point in different directions
    sybil = np.ones(30)
    H = np.vstack([diverse, sybil, sybil * 1.01, sybil * 0.99])
    w = rm.foolsgold_weights(H, kappa=1.0)
    assert np.all(w[5:] < 0.05) and np.all(w[:5] > 0.5)


def test_rlr_flips_coordinates_without_sign_agreement() -> None:
    U = np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
    agg, lr = rm.rlr(U, np.ones(4), threshold=3)
    # coordinate 0: all four agree -> +lr; coordinate 1: |sum of signs| = 0 < 3 -> -lr
    assert lr.tolist() == [1.0, -1.0]
    assert np.allclose(agg, [1.0, -0.0])
    H = honest()
    agg, lr = rm.rlr(H, np.ones(len(H)), threshold=4)
    assert (lr > 0).all() and np.allclose(agg, H.mean(0))


# ---- the strategies end to end on fake replies ------------------------------------------------------
def _reply(nid: int, w: np.ndarray, n: int = 10) -> SimpleNamespace:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(w.astype(np.float32))}),
            "metrics": MetricRecord({"num-examples": n}),
        }
    )
    return SimpleNamespace(
        content=content, metadata=SimpleNamespace(src_node_id=nid), has_error=lambda: False
    )


class _Grid:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(self.n))

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        from flwr.app import Message

        return Message(content, dst_node_id=dst_node_id, message_type=message_type)


def sybils(n: int = 8, d: int = 20) -> np.ndarray:
    """Diverse honest updates with a positive mean and three identical colluding outliers."""
    rng = np.random.default_rng(5)
    U = 1.0 + 1.5 * rng.standard_normal((n, d))
    U[-3:] = -20.0 * np.ones(d)
    return U


RULE_OVERRIDES = {
    "krum": ["strategy.num_malicious_nodes=1"],
    "multikrum": ["strategy.num_malicious_nodes=1", "strategy.num_nodes_to_select=5"],
    "bulyan": ["strategy.num_malicious_nodes=1"],
    "fedmedian": [],
    "fedtrimmedavg": ["strategy.beta=0.2"],
    "norm_clipping": ["strategy.clip_norm=5.0"],
    "flame": ["strategy.noise_lambda=0"],
    "foolsgold": [],
    "fltrust": [],
    "dp_fixed_clipping": ["strategy.clipping_norm=5.0"],
}


@pytest.mark.parametrize("rule", sorted(RULE_OVERRIDES))
def test_each_rule_resists_an_outlier_and_keeps_the_mean(rule: str) -> None:
    d, n = 20, 8
    glob = np.zeros(d, np.float32)
    attack = sybils(n, d) if rule == "foolsgold" else with_outlier(n, d)
    for U, expect_near_mean in ((attack, False), (honest(n, d), True)):
        cfg = compose(
            [f"strategy={rule}", "num_clients=8", "clients_per_round=8", *RULE_OVERRIDES[rule]]
        )
        strategy = build_strategy(cfg)
        if rule == "fltrust":
            strategy.server_update = lambda arrays, rnd: np.ones(d)
        arrays = ArrayRecord({"w": Array(glob)})
        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid(n)))
        replies = [_reply(i, glob + U[i]) for i in range(n)]
        new, _ = strategy.aggregate_train(1, replies)
        agg = new["w"].numpy().astype(np.float64) - glob
        honest_mean = U.mean(0)
        if expect_near_mean:
            tol = 0.35 if rule in ("krum", "fltrust") else 0.15
            assert np.abs(agg - honest_mean).max() < tol, (rule, agg - honest_mean)
        else:
            # the plain mean is pulled to about -1.6 per coordinate; the rule stays near the
            # honest direction (+1), or at least far from the outlier
            assert agg.mean() > 0.3, (rule, agg.mean())


def test_rlr_strategy_reverses_a_coordinate_pushed_only_by_attackers() -> None:
    """RLR does not resist a magnitude outlier (its signs agree with the honest majority), but a
    backdoor-like push on a coordinate honest clients do not agree on gets a negative rate."""
    rng = np.random.default_rng(2)
    d, n = 6, 10
    U = np.ones((n, d)) + 0.05 * rng.standard_normal((n, d))
    U[:, 3] = 0.01 * np.array([1, -1, 1, -1, 1, -1, 1, 0, 0, 0], dtype=float)  # no agreement
    U[-3:, 3] = 5.0  # three attackers push coordinate 3
    glob = np.zeros(d, np.float32)
    strategy = build_strategy(compose(["strategy=rlr", "strategy.threshold=6"]))
    strategy.current = ArrayRecord({"w": Array(glob)})
    new, metrics = strategy.aggregate_train(1, [_reply(i, glob + U[i]) for i in range(n)])
    agg = new["w"].numpy()
    assert agg[3] < 0 < U[:, 3].mean() and np.all(agg[[0, 1, 2, 4, 5]] > 0.9)
    assert metrics["rlr_flipped_fraction"] == pytest.approx(1 / 6)


def test_every_robust_rule_is_registered_with_a_config() -> None:
    assert {"norm_clipping", "fltrust", "flame", "foolsgold", "rlr", "dp_fixed_clipping"} <= set(
        STRATEGIES.names()
    )
