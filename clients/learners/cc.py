"""CC (Feng et al., NeurIPS 2020): the classifier-consistent partial-label loss."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner
from clients.learners.losses import cc_loss


@LOCAL.register("cc")
class CC(Learner):
    """``-log sum_{j in S_i} p_j(x_i)``; stateless."""

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "partial"})

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        self._cand = data.candidate_matrix()

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return cc_loss(logits, self._cand[idx].to(x.device)), logits
