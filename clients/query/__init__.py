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

    @property
    def probs(self) -> np.ndarray:
        """Softmax probabilities ``[N, C]``."""
        return np.exp(self.log_probs)


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
from clients.query import fairfal as _fairfal  # noqa: E402,F401
from clients.query import kafal as _kafal  # noqa: E402,F401
from clients.query import logo as _logo  # noqa: E402,F401

__all__ = [
    "MODEL_MODES",
    "QUERY",
    "ModelModeStrategy",
    "ModelOutputs",
    "QueryInputs",
    "QueryStrategy",
    "build_query",
]
