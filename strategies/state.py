"""A strategy's state across rounds, declared on the strategy itself, for checkpoints and resume.

A strategy that keeps state between rounds defines ``state_dict()`` and ``load_state_dict(state)``
(:class:`Stateful` does it from a ``state_attrs`` tuple). A strategy whose state is keyed by node
id (node ids are random per run) also defines ``bind_partitions(node_of)``: the workflow calls it
with the run's partition-id -> node-id map before the first round, so the state can be saved by
partition id and restored in a new run. A wrapper (Flower's DP clipping) saves its inner strategy's
state. Stateless strategies need nothing.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from flwr.serverapp.strategy import Strategy


class Stateful:
    """Mixin: ``state_dict``/``load_state_dict`` over the attributes named in ``state_attrs``
    (``None`` values included, so a fresh state restores as fresh)."""

    state_attrs: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        """The attributes of ``state_attrs`` (deep copies)."""
        return {a: copy.deepcopy(getattr(self, a, None)) for a in self.state_attrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the attributes saved by :meth:`state_dict`."""
        for a in self.state_attrs:
            if a in state:
                setattr(self, a, copy.deepcopy(state[a]))


def _inner(strategy: Strategy) -> Strategy | None:
    inner = getattr(strategy, "strategy", None)  # Flower's wrappers keep theirs here
    return inner if isinstance(inner, Strategy) else None


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The checkpointable state of ``strategy`` (and of the strategy it wraps)."""
    out: dict[str, Any] = {}
    own = getattr(strategy, "state_dict", None)
    if callable(own):
        out["own"] = own()
    inner = _inner(strategy)
    if inner is not None:
        out["inner"] = strategy_state(inner)
    return out


def load_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Restore what :func:`strategy_state` saved."""
    if "own" in state:
        load = getattr(strategy, "load_state_dict", None)
        if not callable(load):
            raise ValueError(f"{type(strategy).__name__} cannot restore a saved strategy state")
        load(state["own"])
    inner = _inner(strategy)
    if inner is not None and "inner" in state:
        load_strategy_state(inner, state["inner"])


def bind_partitions(strategy: Strategy, node_of: dict[int, int]) -> None:
    """Hand ``node_of`` (partition id -> node id) to a strategy (and its inner one) that asks."""
    for s in (strategy, _inner(strategy)):
        bind = getattr(s, "bind_partitions", None)
        if s is not None and callable(bind):
            bind(dict(node_of))
