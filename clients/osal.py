"""The client side of open-set FAL (spec ``open_set_fal.md`` sections 1.4, 2, 7): the oracle's
bookkeeping, the detector's training data and the per-cycle metrics a client replies.

In an open-set pool a client's labels are ``0 .. K-1`` for known samples and ``K`` for unknown
ones (:mod:`fedsim.data.open_set`). The labeled mask (``fal-labeled``) covers labeled known and
unknown samples alike: an unknown pick is charged to the budget, leaves the pool, and is kept as
an unknown-class example for the detector; the target never trains on it.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context

from fedsim import constants as C
from fedsim.data.client_data import ClientData
from fedsim.osal import detector_learner, open_set_spec

STATE_KEY = "osal-state"  # ConfigRecord in Context.state: the strategy's adaptive scalars
DETECTOR_STATE_KEY = "osal-detector-state"  # ConfigRecord: the detector learner's own state
STAGE_KEY = "osal-stage"  # train config: the FAL stage (the detector's state restarts with it)

__all__ = [
    "STATE_KEY",
    "detector_data",
    "initial_pool",
    "load_state",
    "pick_metrics",
    "save_state",
    "train_detector",
]


def initial_pool(labels: np.ndarray, b0: int, rng: np.random.Generator, k: int) -> np.ndarray:
    """The initial labeled mask: ``b0`` samples drawn from the known ones (``labels < k``), all of
    them when the client holds fewer (a shortfall the server logs)."""
    known = np.flatnonzero(labels < k)
    take = min(int(b0), len(known))
    mask = np.zeros(len(labels), dtype=bool)
    mask[rng.choice(known, size=take, replace=False)] = True
    return mask


def pick_metrics(
    labels: np.ndarray, before: np.ndarray, picks: np.ndarray, k: int
) -> dict[str, float | int]:
    """The open-set scalars of one query: picks, known picks, precision, the known share of the
    unlabeled pool before the query (random's expected precision), and the pool's counts after.

    Parameters
    ----------
    labels
        The client's labels (``k``: unknown).
    before
        The labeled mask before the query.
    picks
        Positions picked.
    k
        The number of known classes.
    """
    known = labels < k
    after = before.copy()
    after[picks] = True
    unl = ~before
    n_known_picks = int(known[picks].sum())
    return {
        C.OSAL_PICKS: int(len(picks)),
        C.OSAL_KNOWN_PICKS: n_known_picks,
        "precision": n_known_picks / len(picks) if len(picks) else float("nan"),
        C.OSAL_KNOWN_SHARE: float(known[unl].mean()) if unl.any() else float("nan"),
        C.OSAL_LABELED_KNOWN: int((after & known).sum()),
        C.OSAL_LABELED_UNKNOWN: int((after & ~known).sum()),
        C.OSAL_KNOWN_UNLABELED: int((~after & known).sum()),
        C.OSAL_KNOWN: int(known.sum()),
    }


def load_state(context: Context) -> dict[str, Any]:
    """The strategy's per-client scalars (empty before the first query)."""
    if STATE_KEY not in context.state.config_records:
        return {}
    return dict(context.state.config_records[STATE_KEY])


def save_state(context: Context, state: dict[str, Any]) -> None:
    """Persist the strategy's per-client scalars (plain numbers and strings only)."""
    plain = {k: v for k, v in state.items() if isinstance(v, int | float | str | bool)}
    context.state[STATE_KEY] = ConfigRecord(plain)  # type: ignore[arg-type]


def detector_data(data: ClientData, mask: np.ndarray | None) -> ClientData:
    """The detector's training set: every labeled sample, unknowns as class ``K`` (K + 1 classes)."""
    idx = torch.from_numpy(np.flatnonzero(mask) if mask is not None else np.arange(len(data)))
    return ClientData(
        x=data.x[idx],
        y=data.y[idx],
        mean=data.mean,
        std=data.std,
        num_classes=data.num_classes + 1,
        label_kind=data.label_kind,
    )


def detector_trainer(cfg: Any, learners: dict[str, Any], lr_scale: float = 1.0) -> Any:
    """The helper learner of the federated detector: the strategy's declared ``LOCAL`` entry
    with the optimizer settings of ``cfg.local`` and the strategy's own detector parameters."""
    from clients.fal import strategy_of
    from clients.learners import build_learner

    name = detector_learner(cfg)
    assert name is not None
    key = f"{name}:{lr_scale}"
    if key not in learners:
        base = {
            k: cfg.local[k]
            for k in ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay")
            if k in cfg.local
        }
        params = {**base, **strategy_of(cfg).detector_params()}
        learner = build_learner(name, params, where="detector")
        learner = copy.copy(learner)
        learner.lr = learner.lr * lr_scale
        learners.clear()
        learners[key] = learner
    return learners[key]


def train_detector(
    cfg: Any,
    learners: dict[str, Any],
    detector: torch.nn.Module,
    data: ClientData,
    mask: np.ndarray | None,
    *,
    device: torch.device,
    seed: int,
    lr_scale: float = 1.0,
    context: Context | None = None,
    stage: int | None = None,
) -> int:
    """Train the pair's detector in place on the client's labeled samples (known and unknown);
    returns their count (the composite model's FedAvg weight, spec section 2).

    The learner's per-client state (E2OAL's annealing epoch count) lives in ``context.state``
    and restarts with each stage, whose detector starts from a fresh initialisation."""
    ddata = detector_data(data, mask)
    learner = detector_trainer(cfg, learners, lr_scale)
    generator = torch.Generator().manual_seed(seed ^ 0xDE7EC7)
    state: dict[str, Any] = {}
    if context is not None and DETECTOR_STATE_KEY in context.state.config_records:
        state = dict(context.state.config_records[DETECTOR_STATE_KEY])
        if state.get(STAGE_KEY) != stage:
            state = {}
    learner.train(detector, ddata, device=device, generator=generator, state=state)
    if context is not None:
        state[STAGE_KEY] = -1 if stage is None else int(stage)
        plain = {k: v for k, v in state.items() if isinstance(v, int | float | str | bool)}
        context.state[DETECTOR_STATE_KEY] = ConfigRecord(plain)  # type: ignore[arg-type]
    return len(ddata)


def is_open_set(cfg: Any) -> bool:
    """Whether ``cfg`` is an open-set FAL run."""
    return open_set_spec(cfg) is not None and cfg.get("query") is not None


def local_detector(
    rt: Any, data: ClientData, mask: np.ndarray, *, cycle: int, pid: int, lr_scale: float = 1.0
) -> torch.nn.Module:
    """``open_set.detector=local``: a (K+1)-class detector trained on this client's labeled set
    alone, at query time, for ``open_set.detector_epochs`` epochs; it never leaves the client.

    Every client starts from the same initialisation θ_D0, drawn from the run seed and the cycle
    (the spec ships θ_D0; a seed gives every client the same weights without a message)."""
    from fedsim.models import build_model
    from fedsim.seeding import derive_seed

    cfg = rt.cfg
    spec = open_set_spec(cfg) or {}
    torch.manual_seed(derive_seed(rt.seed, cycle, 0xDE70))
    model = build_model(
        str(cfg.model.name),
        num_classes=data.num_classes + 1,
        in_channels=int(data.x.shape[1]),
        image_size=int(data.x.shape[2]),
        params=dict(cfg.model.get("params") or {}),
    ).to(rt.device)
    learner = copy.copy(detector_trainer(cfg, rt.detector_learners, lr_scale))
    learner.epochs = int(spec["detector_epochs"])
    generator = torch.Generator().manual_seed(derive_seed(rt.seed, cycle, pid, 0xDE71))
    ddata = detector_data(data, mask)
    learner.train(model, ddata, device=rt.device, generator=generator, state={})
    return model
