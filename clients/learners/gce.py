"""GCE: generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018), for noisy labels."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner
from clients.learners.common import EPOCHS_KEY
from clients.learners.losses import gce_loss


@LOCAL.register("gce")
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

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})

    def __init__(
        self,
        *,
        q: float = 0.7,
        truncate_below: float | None = None,
        truncate_start: int = 0,
        epochs: int = 1,
        batch_size: int = 32,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
        )
        self.q = q
        self.truncate_below = truncate_below
        self.truncate_start = truncate_start

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
