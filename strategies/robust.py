"""fedsim's own robust aggregation strategies (norm clipping + weak DP, FLTrust, FLAME, FoolsGold,
RLR) and Flower's server-side DP clipping wrapper, registered in ``STRATEGIES``.

:class:`UpdateRule` is a FedAvg whose ``aggregate_train`` works on client *updates* (reply weights
minus the global weights it sent in ``configure_train``) and delegates to the pure functions of
:mod:`strategies.robust_math`. Non-floating entries of the state (counters) keep the global value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from fedsim.constants import ARRAYS_KEY, NUM_EXAMPLES_KEY
from fedsim.errors import ConfigError, invalid
from fedsim.records import array_record, to_numpy
from strategies import STRATEGIES, _common
from strategies import robust_math as rm

log = logging.getLogger("fedsim")

#: Metric names the robust rules add to a round's train metrics.
ACCEPTED_CLIENTS = "robust_accepted"


class UpdateRule(FedAvg):
    """FedAvg that aggregates updates with :meth:`combine` (overridden by each rule)."""

    def __init__(self) -> None:
        super().__init__(**_common())
        self.current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def combine(
        self,
        server_round: int,
        U: np.ndarray,
        weights: np.ndarray,
        node_ids: list[int],
    ) -> tuple[np.ndarray, dict[str, float]]:
        """The aggregated update of the rows of ``U`` and extra metrics."""
        raise NotImplementedError

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        if self.current is None:
            raise RuntimeError("aggregate_train called before configure_train")
        keys = list(self.current.keys())
        glob = {k: to_numpy(self.current[k]) for k in keys}
        fkeys = [k for k in keys if np.issubdtype(glob[k].dtype, np.floating)]
        updates = []
        for msg in valid:
            rec = msg.content.array_records[ARRAYS_KEY]
            updates.append([to_numpy(rec[k]).astype(np.float64) - glob[k] for k in fkeys])
        U = rm.flatten(updates)
        weights = np.array(
            [
                float(next(iter(m.content.metric_records.values()))[NUM_EXAMPLES_KEY])  # type: ignore[arg-type]
                for m in valid
            ]
        )
        node_ids = [int(m.metadata.src_node_id) for m in valid]
        agg, extra = self.combine(server_round, U, weights, node_ids)
        parts = dict(zip(fkeys, rm.unflatten(agg, [glob[k] for k in fkeys]), strict=True))
        new = {
            k: (glob[k] + parts[k]).astype(glob[k].dtype) if k in parts else glob[k] for k in keys
        }
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        for key, value in extra.items():
            metrics[key] = float(value)
        return array_record(new), metrics


def _rng(server_round: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([int(server_round), salt])


class NormClipping(UpdateRule):
    def __init__(self, clip_norm: float, noise_std: float) -> None:
        super().__init__()
        self.clip_norm, self.noise_std = clip_norm, noise_std

    def combine(self, server_round, U, weights, node_ids):  # type: ignore[no-untyped-def]
        agg = rm.norm_clipping(
            U,
            weights,
            clip_norm=self.clip_norm,
            noise_std=self.noise_std,
            rng=_rng(server_round, 0xD9),
        )
        return agg, {}


class FLTrust(UpdateRule):
    """Needs :attr:`server_update`: a callable giving the server's root-set update for the global
    arrays (the backdoor workflow sets it; see :mod:`server.components.fltrust`)."""

    def __init__(self) -> None:
        super().__init__()
        self.server_update: Callable[[ArrayRecord, int], np.ndarray] | None = None

    def combine(self, server_round, U, weights, node_ids):  # type: ignore[no-untyped-def]
        if self.server_update is None or self.current is None:
            raise RuntimeError("fltrust needs the server's root set: set strategy.server_update")
        g0 = self.server_update(self.current, server_round)
        agg, ts = rm.fltrust(U, g0)
        return agg, {ACCEPTED_CLIENTS: float((ts > 0).sum())}


class Flame(UpdateRule):
    def __init__(self, noise_lambda: float) -> None:
        super().__init__()
        self.noise_lambda = noise_lambda

    def combine(self, server_round, U, weights, node_ids):  # type: ignore[no-untyped-def]
        agg, accepted = rm.flame(U, noise_lambda=self.noise_lambda, rng=_rng(server_round, 0xF1))
        return agg, {ACCEPTED_CLIENTS: float(accepted.sum())}


class FoolsGold(UpdateRule):
    """Keeps each node's summed past updates (``history``, keyed by node id); checkpointed by
    partition id (node ids change from run to run)."""

    def __init__(self, kappa: float) -> None:
        super().__init__()
        self.kappa = kappa
        self.history: dict[int, np.ndarray] = {}
        self.node_of: dict[int, int] = {}  # partition id -> node id (set by the workflow)

    def bind_partitions(self, node_of: dict[int, int]) -> None:
        """Learn this run's partition-id -> node-id map (see :mod:`strategies.state`)."""
        self.node_of = dict(node_of)

    def state_dict(self) -> dict[str, Any]:
        """The history keyed by partition id."""
        pid_of = {nid: pid for pid, nid in self.node_of.items()}
        missing = [nid for nid in self.history if nid not in pid_of]
        if missing:
            raise RuntimeError(f"foolsgold: no partition id known for node(s) {missing[:5]}")
        return {"history": {pid_of[nid]: h.copy() for nid, h in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history saved by :meth:`state_dict` onto this run's node ids."""
        self.history = {self.node_of[int(p)]: np.array(h) for p, h in state["history"].items()}

    def combine(self, server_round, U, weights, node_ids):  # type: ignore[no-untyped-def]
        for nid, u in zip(node_ids, U, strict=True):
            self.history[nid] = self.history.get(nid, 0.0) + u
        H = np.stack([self.history[nid] for nid in node_ids])
        w = rm.foolsgold_weights(H, self.kappa)
        return rm.weighted_mean(U, w), {ACCEPTED_CLIENTS: float((w > 0).sum())}


class RLR(UpdateRule):
    def __init__(self, threshold: float, server_lr: float) -> None:
        super().__init__()
        self.threshold, self.server_lr = threshold, server_lr

    def combine(self, server_round, U, weights, node_ids):  # type: ignore[no-untyped-def]
        agg, lr = rm.rlr(U, weights, threshold=self.threshold, server_lr=self.server_lr)
        return agg, {"rlr_flipped_fraction": float((lr < 0).mean())}


@STRATEGIES.register("norm_clipping")
def norm_clipping(*, clip_norm: float = 3.0, noise_std: float = 0.0) -> Strategy:
    """Norm clipping (+ weak DP with ``noise_std > 0``), Sun et al. 2019."""
    if not clip_norm > 0:
        raise invalid("strategy.clip_norm", clip_norm, "a number > 0")
    if noise_std < 0:
        raise invalid("strategy.noise_std", noise_std, "a number >= 0")
    return NormClipping(clip_norm, noise_std)


@STRATEGIES.register("fltrust", server_data=True)
def fltrust() -> Strategy:
    """FLTrust (Cao et al., NDSS 2021) with a server root set held out of the test split."""
    return FLTrust()


@STRATEGIES.register("flame")
def flame(*, noise_lambda: float = 0.001) -> Strategy:
    """FLAME (Nguyen et al., USENIX Security 2022) on whole-model updates."""
    if noise_lambda < 0:
        raise invalid("strategy.noise_lambda", noise_lambda, "a number >= 0")
    return Flame(noise_lambda)


@STRATEGIES.register("foolsgold")
def foolsgold(*, kappa: float = 1.0) -> Strategy:
    """FoolsGold (Fung et al., RAID 2020) with per-node update history."""
    if not kappa > 0:
        raise invalid("strategy.kappa", kappa, "a number > 0")
    return FoolsGold(kappa)


@STRATEGIES.register("rlr")
def rlr(*, threshold: float = 6, server_lr: float = 1.0) -> Strategy:
    """Robust learning rate (Ozdayi et al., AAAI 2021)."""
    if threshold < 0:
        raise invalid("strategy.threshold", threshold, "a number >= 0")
    return RLR(threshold, server_lr)


@STRATEGIES.register("dp_fixed_clipping", needs_clients_per_round=True)
def dp_fixed_clipping(
    *,
    inner: str = "fedavg",
    clipping_norm: float = 3.0,
    noise_multiplier: float = 0.0,
    num_sampled_clients: int = 1,
) -> Strategy:
    """Flower's ``DifferentialPrivacyServerSideFixedClipping`` wrapping the strategy ``inner``:
    updates are clipped to ``clipping_norm`` relative to the global model and the aggregate gets
    Gaussian noise with ``sigma = noise_multiplier * clipping_norm / num_sampled_clients``
    (``num_sampled_clients`` is set from ``clients_per_round``). Flower draws the noise unseeded."""
    if inner == "dp_fixed_clipping":
        raise invalid("strategy.inner", inner, "a strategy other than dp_fixed_clipping")
    if not clipping_norm > 0:
        raise invalid("strategy.clipping_norm", clipping_norm, "a number > 0")
    if noise_multiplier < 0:
        raise invalid("strategy.noise_multiplier", noise_multiplier, "a number >= 0")
    factory = STRATEGIES.get(inner)
    try:
        wrapped = factory()
    except TypeError as e:
        raise ConfigError(f"strategy.inner={inner!r} cannot be built with defaults: {e}") from None
    return DifferentialPrivacyServerSideFixedClipping(
        wrapped, noise_multiplier, clipping_norm, num_sampled_clients
    )
