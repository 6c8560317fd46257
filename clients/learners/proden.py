"""PRODEN (Lv et al., ICML 2020): progressive identification of the true label among candidates.

The per-sample candidate weights (an ``N x C`` table) persist across rounds in the client state.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner
from clients.learners.common import table
from clients.learners.losses import candidate_weights, weighted_ce

WEIGHTS_KEY = "proden.weights"


def uniform_weights(candidates: torch.Tensor) -> torch.Tensor:
    """Uniform weights over each candidate set."""
    c = candidates.float()
    return c / c.sum(1, keepdim=True).clamp_min(1.0)


@LOCAL.register("proden")
class PRODEN(Learner):
    """Loss ``-sum_j w_ij log p_j``; after each step ``w_ij <- p_j 1[j in S_i]``, renormalised.

    The update uses the probabilities of the step's own forward pass (detached; no extra
    forward), a project choice for cost.
    """

    keeps_client_state: ClassVar[bool] = True

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "partial"})
    weights_key: ClassVar[str] = WEIGHTS_KEY
    update_every_step: ClassVar[bool] = True

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        device = next(model.parameters()).device
        self._cand = data.candidate_matrix().to(device)
        self._w = table(state, self.weights_key, uniform_weights(self._cand.cpu())).to(device)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        idx = idx.to(x.device)
        loss = weighted_ce(logits, self._w[idx])
        if self.update_every_step:
            self._w[idx] = candidate_weights(logits, self._cand[idx])
        return loss, logits

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        state[self.weights_key] = self._w.cpu().numpy()
        del self._cand, self._w
