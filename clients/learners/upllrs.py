"""A light UPLLRS-style learner (after Shi et al., IJCAI 2023) for unreliable candidate sets.

UPLLRS proper (re-initialised stage-1 networks stopped on a clean validation set, then PLL + SSL
with multi-augmentation weights) is "high" cost and needs a trusted split. This light variant keeps
its idea without a validation set (project choice, documented in the README):

- reliable subset: PRODEN-weighted loss (weights updated from each step's probabilities);
- from cumulative local epoch ``warmup``, at each epoch start the ``gamma`` fraction of the
  client's samples with the largest partial-label loss ``-log sum_{j in S} p_j`` (i.e. the least
  probability mass on their candidate set) moves to the unreliable subset, up to ``max_unreliable``
  of the samples (this cap replaces the validation-based stop);
- unreliable subset: its candidate set is dropped and the sample is self-trained on the model's
  confident prediction over all classes (``>= threshold``), weighted by ``unlabeled_weight``.

State kept across rounds: the weights table, the unreliable mask and the epoch counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner
from clients.learners.common import EPOCHS_KEY, table
from clients.learners.losses import candidate_weights, weighted_ce
from clients.learners.proden import uniform_weights
from fedsim.evaluation import batched


def pll_losses(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-log sum_{j in S_i} p_j``."""
    masked = logits.masked_fill(~candidates.bool(), float("-inf"))
    return torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)


def move_unreliable(
    losses: torch.Tensor, unreliable: torch.Tensor, gamma: float, cap: float
) -> torch.Tensor:
    """The new unreliable mask: the ``round(gamma n)`` reliable samples with the largest losses
    join it, without exceeding ``round(cap n)`` in all."""
    n = losses.numel()
    room = int(round(cap * n)) - int(unreliable.sum())
    k = min(int(round(gamma * n)), room)
    out = unreliable.clone()
    if k <= 0:
        return out
    scores = losses.masked_fill(unreliable, float("-inf"))
    out[torch.topk(scores, k).indices] = True
    return out


@LOCAL.register("upllrs")
@dataclass(kw_only=True, eq=False)
class UPLLRS(Learner):
    """See the module docstring."""

    keeps_client_state: ClassVar[bool] = True

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "partial"})

    warmup: int = 2
    gamma: float = 0.03
    max_unreliable: float = 0.3
    threshold: float = 0.95
    unlabeled_weight: float = 1.0

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        device = next(model.parameters()).device
        self._epoch0 = int(state.get(EPOCHS_KEY, 0))
        self._cand = data.candidate_matrix().to(device)
        self._w = table(state, "upllrs.weights", uniform_weights(self._cand.cpu())).to(device)
        none = torch.zeros(len(data), dtype=torch.uint8)
        self._unrel = table(state, "upllrs.unreliable", none).bool().to(device)

    @torch.no_grad()
    def on_epoch_start(self, model: nn.Module, data: ClientData, epoch: int) -> None:
        if self._epoch0 + epoch < self.warmup:
            return
        device = self._w.device
        losses = [
            pll_losses(logits, self._cand[s : s + 512])
            for s, logits in batched(
                model, data.x, model, mean=data.mean, std=data.std, device=device, batch_size=512
            )
        ]
        self._unrel = move_unreliable(
            torch.cat(losses), self._unrel, self.gamma, self.max_unreliable
        )

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        idx = idx.to(x.device)
        unrel = self._unrel[idx]
        rel = ~unrel
        b = float(idx.numel())
        loss = logits.sum() * 0.0
        if rel.any():
            r = idx[rel]
            loss = loss + weighted_ce(logits[rel], self._w[r]) * (float(rel.sum()) / b)
            self._w[r] = candidate_weights(logits[rel], self._cand[r])
        if unrel.any():
            conf, pseudo = F.softmax(logits[unrel].detach(), dim=1).max(1)
            mask = (conf >= self.threshold).to(logits.dtype)
            ce = F.cross_entropy(logits[unrel], pseudo, reduction="none")
            loss = loss + self.unlabeled_weight * (ce * mask).sum() / b
        return loss, logits

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        state["upllrs.weights"] = self._w.cpu().numpy()
        state["upllrs.unreliable"] = self._unrel.cpu().numpy().astype(np.uint8)
        state[EPOCHS_KEY] = self._epoch0 + self.epochs
        del self._cand, self._w
