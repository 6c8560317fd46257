"""Query strategies of federated active learning, registered by name in :data:`QUERY`.

A strategy is a small class: it declares which models it needs (the global model ``G`` always, the
local-only model ``L_k`` trained from scratch, the client's last FL local model) and implements
:meth:`QueryStrategy.select` on a :class:`QueryInputs`, whose model outputs are computed lazily with
batched inference by the client (``clients/fal.py``). The math lives in pure functions
(``clients/query/common.py``, ``fairfal.py``) that tests call on hand-made arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedsim.errors import invalid
from fedsim.registries import QUERY

MODEL_MODES = ("global", "local_only", "last_local")


@dataclass
class ModelOutputs:
    """A model's outputs on the whole client pool (labeled and unlabeled rows)."""

    log_probs: np.ndarray  # [N, C] log-softmax
    features: np.ndarray  # [N, D] penultimate embedding
    #: raw logits [N, C] (energies and max activations need the offset log-softmax drops)
    logits: np.ndarray | None = None

    @property
    def probs(self) -> np.ndarray:
        """Softmax probabilities ``[N, C]``."""
        return np.exp(self.log_probs)


@dataclass
class QueryContext:
    """What a strategy needs to train a model at query time on one client.

    Attributes
    ----------
    x
        The client's uint8 images ``[N, C, H, W]`` (the pool, in pool order).
    mean, std
        Normalisation of :func:`fedsim.data.to_float`.
    device
        Where to train and infer.
    infer_batch_size
        Batch size of inference (``fal.infer_batch_size``).
    target
        A fresh copy of the received global target model (the strategy may train it in place).
    seed
        Seed of this client's cycle (for generators).
    """

    x: Any
    mean: Any
    std: Any
    device: Any
    infer_batch_size: int
    target: Any
    seed: int


@dataclass
class QueryInputs:
    """What a strategy sees on one client in one query cycle.

    Attributes
    ----------
    labeled
        Boolean mask over the client's pool.
    labels
        True labels where ``labeled`` (revealed by the oracle); -1 elsewhere.
    budget
        Picks wanted (never more than the unlabeled count).
    num_classes
        C.
    rng
        Seeded by run seed, cycle and partition id.
    outputs
        ``outputs("global" | "local_only" | "last_local")`` -> :class:`ModelOutputs` (cached).
    rbar, divergence
        FairFAL's server-side mean imbalance proxy and this client's divergence (else ``None``).
    unknown_label
        Open-set FAL: ``K`` (= ``num_classes``), the label the oracle gives an unknown-class pick
        (``labels == K`` on the labeled unknowns); ``None`` in closed-set FAL.
    state
        Per-client scalars kept across cycles (open-set strategies' adaptive state such as
        EAOA's ``k``, the last query precision ``last_precision``); the strategy may update it in
        :meth:`QueryStrategy.select` and the client saves it.
    context
        Query-time training (BUAL's negative learning): the client's images and a model factory.
    diagnostics
        Scalars or lists the strategy reports (sent to the server as metrics).
    """

    labeled: np.ndarray
    labels: np.ndarray
    budget: int
    num_classes: int
    rng: np.random.Generator
    outputs: Callable[[str], ModelOutputs]
    rbar: float | None = None
    divergence: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    unknown_label: int | None = None
    state: dict[str, Any] = field(default_factory=dict)
    context: QueryContext | None = None

    @property
    def unknown(self) -> np.ndarray:
        """Mask of the labeled samples the oracle answered "unknown" (open set; else all False)."""
        if self.unknown_label is None:
            return np.zeros_like(self.labeled)
        return self.labeled & (self.labels == self.unknown_label)

    @property
    def labeled_known(self) -> np.ndarray:
        """Mask of the labeled samples of known classes."""
        return self.labeled & ~self.unknown

    @property
    def unlabeled_idx(self) -> np.ndarray:
        """Positions of the unlabeled pool (ascending)."""
        return np.flatnonzero(~self.labeled)

    @property
    def labeled_idx(self) -> np.ndarray:
        """Positions of the labeled pool (ascending)."""
        return np.flatnonzero(self.labeled)


class QueryStrategy:
    """Base class: ``select`` returns ``budget`` positions of the unlabeled pool.

    Class attributes say what the client must prepare: ``needs_stats`` (FairFAL's phase A),
    and :meth:`models` the query models used (``local_only`` is trained from the cycle's shared
    initialisation; ``last_local`` is kept from the stage's last FL round).
    """

    needs_stats: ClassVar[bool] = False
    #: open-set strategies: the helper learner (``LOCAL`` name) of the federated (K+1)-class
    #: detector this strategy reads as ``outputs("detector")``; ``None``: no detector
    detector: ClassVar[str | None] = None
    #: whether the strategy needs an open-set pool (``open_set.mode`` other than ``none``)
    open_set_only: ClassVar[bool] = False
    #: whether ``select`` needs ``inp.context`` (query-time training)
    needs_context: ClassVar[bool] = False

    def detector_params(self) -> dict[str, Any]:
        """Parameters of the detector's helper learner taken from this strategy's own config
        (e.g. LfOSA's temperatures); the optimizer settings come from ``cfg.local``."""
        return {}

    def known_score(self, det_logits: np.ndarray, num_known: int) -> np.ndarray | None:
        """The strategy's own known-score of the detector's raw logits ``[N, K + 1]``, higher
        for known-looking samples (the detection AUROC of spec section 1.5); ``None``: the
        strategy has no detector."""
        return None

    def models(self) -> set[str]:
        """Query models this strategy reads (besides nothing: ``global`` is always available)."""
        return {"global"}

    def select(self, inp: QueryInputs) -> np.ndarray:
        """Positions (into the client pool) of the samples to label."""
        raise NotImplementedError

    def stats(self, inp: QueryInputs) -> dict[str, float]:
        """Phase-A scalars sent to the server (only when ``needs_stats``)."""
        return {}


class ModelModeStrategy(QueryStrategy):
    """A classic strategy that queries with one model chosen by ``model_mode``."""

    def __init__(self, *, model_mode: str = "global") -> None:
        if model_mode not in MODEL_MODES:
            raise invalid("query.model_mode", model_mode, ", ".join(MODEL_MODES))
        self.model_mode = model_mode

    def models(self) -> set[str]:
        return {self.model_mode}


def build_query(name: str, params: Mapping[str, Any]) -> QueryStrategy:
    """Instantiate the strategy registered as ``name`` with ``params`` (checked against its
    signature: a typo gives one line listing the allowed parameters)."""
    strategy: QueryStrategy = QUERY.build(name, params, what=f"query strategy {name!r}")
    return strategy


from clients.query import basic as _basic  # noqa: E402,F401  (registers the classic strategies)
from clients.query import bual as _bual  # noqa: E402,F401  (open-set strategies)
from clients.query import e2oal as _e2oal  # noqa: E402,F401
from clients.query import eaoa as _eaoa  # noqa: E402,F401
from clients.query import fairfal as _fairfal  # noqa: E402,F401
from clients.query import kafal as _kafal  # noqa: E402,F401
from clients.query import lfosa as _lfosa  # noqa: E402,F401
from clients.query import logo as _logo  # noqa: E402,F401

__all__ = [
    "MODEL_MODES",
    "QUERY",
    "ModelModeStrategy",
    "ModelOutputs",
    "QueryContext",
    "QueryInputs",
    "QueryStrategy",
    "build_query",
]
