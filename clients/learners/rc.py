"""RC (Feng et al., NeurIPS 2020, "Provably consistent partial-label learning"): the
risk-consistent estimator. PRODEN's weighted loss, with the weights re-estimated from the model once
per local epoch (recalled, unverified) instead of after each step."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, ClientData
from clients.learners.losses import candidate_weights
from clients.learners.proden import PRODEN
from fedsim.evaluation import batched


@LOCAL.register("rc")
class RC(PRODEN):
    """Weights ``w_ij = p_j 1[j in S_i] / sum_{k in S_i} p_k`` from the model at each epoch's
    start (the first epoch of a client's first round uses uniform weights); kept across rounds."""

    weights_key: ClassVar[str] = "rc.weights"
    update_every_step: ClassVar[bool] = False

    @torch.no_grad()
    def on_epoch_start(self, model: nn.Module, data: ClientData, epoch: int) -> None:
        if epoch == 0 and not self._seen:
            return
        device = self._w.device
        for s, logits in batched(
            model, data.x, model, mean=data.mean, std=data.std, device=device, batch_size=512
        ):
            self._w[s : s + 512] = candidate_weights(logits, self._cand[s : s + 512])

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict) -> None:
        self._seen = self.weights_key in state
        super().on_train_start(model, data, state)
