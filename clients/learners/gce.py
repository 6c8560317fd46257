"""GCE: generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018), for noisy labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner
from clients.learners.common import EPOCHS_KEY
from clients.learners.losses import gce_loss, gce_sample_losses


@LOCAL.register("gce")
@dataclass(kw_only=True, eq=False)
class GCE(Learner):
    """``L_q = (1 - p_y^q) / q``; optionally truncated (samples with ``p_y < truncate_below`` are
    ignored from cumulative local epoch ``truncate_start``, an unofficial schedule).

    Parameters
    ----------
    q
        The exponent (0.7, recalled, unverified).
    truncate_below
        ``k`` of the truncated loss; ``None``: plain L_q.
    truncate_start
        Cumulative local epoch (over the client's participations) from which truncation applies.
    """

    keeps_client_state: ClassVar[bool] = True
    vectorizable: ClassVar[bool] = True

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})

    q: float = 0.7
    truncate_below: float | None = None
    truncate_start: int = 0

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        self._epoch0 = int(state.get(EPOCHS_KEY, 0))
        self._k: float | None = None

    def on_epoch_start(self, model: nn.Module, data: ClientData, epoch: int) -> None:
        on = self.truncate_below is not None and self._epoch0 + epoch >= self.truncate_start
        self._k = self.truncate_below if on else None

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return gce_loss(logits, y, self.q, self._k), logits

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        state[EPOCHS_KEY] = self._epoch0 + self.epochs

    def loss_knob(self, state: dict[str, Any], epoch: int) -> float:
        """The truncation threshold of this epoch (0: off, as every ``p_y >= 1e-12 > 0``)."""
        on = (
            self.truncate_below is not None
            and int(state.get(EPOCHS_KEY, 0)) + epoch >= self.truncate_start
        )
        return float(self.truncate_below) if on and self.truncate_below is not None else 0.0

    def sample_losses(
        self, logits: torch.Tensor, y: torch.Tensor, knob: torch.Tensor
    ) -> torch.Tensor:
        return gce_sample_losses(logits, y, self.q, knob)
