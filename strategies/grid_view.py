"""A view of a Flower :class:`~flwr.serverapp.Grid` restricted to the nodes sampled this round."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class SampledGrid(Grid):
    """Delegates to ``grid`` but lists only ``node_ids``.

    The FL workflow samples partition ids with a seeded RNG, maps them to node ids and hands this
    view to a strategy's ``configure_train``: the strategy then addresses exactly those nodes.
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def set_run(self, run: Run) -> None:  # pragma: no cover - delegated
        self._grid.set_run(run)

    @property
    def run(self) -> Run:  # pragma: no cover - delegated
        return self._grid.run

    def create_message(self, *args, **kwargs) -> Message:  # type: ignore[no-untyped-def]  # pragma: no cover
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)
