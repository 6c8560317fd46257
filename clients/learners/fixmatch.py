"""FixMatch (Sohn et al., NeurIPS 2020): consistency between a weak and a strong view, with
confident pseudo-labels, on each client's unlabeled samples.

Weak view: random flip (``flip``) and a random crop after ``pad`` reflect padding. Strong view:
the weak view followed by torchvision's RandAugment (``num_ops``, ``magnitude``), drawn per image
(``ra_group`` images share one draw when > 1, a cost knob). One local epoch passes once over the
unlabeled samples in batches of ``mu * batch_size``, each step with a labeled batch of
``batch_size`` (the labeled samples are cycled). No EMA model (the global model is the teacher).

A client with no labels at all (semi-supervised FL: labels at the server, or an unlabeled client
of the partial-client setting) trains on the unlabeled term alone, one pass over its unlabeled
samples in batches of ``mu * batch_size``. The pseudo-labels used and their accuracy against the
hidden true labels are reported in the train metrics (:mod:`clients.learners.pseudo_labels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner, TrainResult
from clients.learners.common import strong_augment, weak_augment
from clients.learners.losses import pseudo_label_loss
from clients.learners.pseudo_labels import PseudoLabelStats
from fedsim.data import to_float


@LOCAL.register("fixmatch")
@dataclass(kw_only=True, eq=False)
class FixMatch(Learner):
    """``CE(labeled weak) + lambda_u mean[1(max p(u_w) >= T) CE(f(u_s), argmax p(u_w))]``.

    Parameters
    ----------
    threshold
        ``tau`` (0.95).
    lambda_u
        Weight of the unlabeled term (1).
    mu
        Unlabeled-to-labeled batch ratio (7).
    num_ops, magnitude
        RandAugment's settings (2, 10).
    ra_group
        Images per RandAugment draw (1: per image, the reference).
    flip, pad
        Weak augmentation (flip off for digits).
    """

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "semi"})

    threshold: float = 0.95
    lambda_u: float = 1.0
    mu: int = 7
    num_ops: int = 2
    magnitude: int = 10
    ra_group: int = 1
    flip: bool = True
    pad: int = 4

    # ---- hooks ---------------------------------------------------------------------------------
    def train_indices(self, data: ClientData) -> torch.Tensor:
        lab = data.labeled_indices()
        n_u = int(data.unlabeled_indices().numel())
        if lab.numel() == 0:
            return data.unlabeled_indices()  # no labels: the unlabeled term alone
        reps = max(1, math.ceil(n_u / (self.mu * lab.numel())))
        return lab.repeat(reps)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return weak_augment(x, flip=self.flip, pad=self.pad)

    def thresholds(self) -> torch.Tensor | float:
        """The confidence threshold(s) of this step (FlexMatch: one per class)."""
        return self.threshold

    def observe(self, uidx: torch.Tensor, probs: torch.Tensor) -> None:
        """See the weak-view probabilities of unlabeled samples ``uidx`` (FlexMatch's state)."""

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        self._data = data
        self._unl = data.unlabeled_indices()
        self._queue = torch.empty(0, dtype=torch.long)
        self._unlabeled_only = data.labeled_indices().numel() == 0 and self._unl.numel() > 0
        self.pseudo_stats = PseudoLabelStats()

    def _next_unlabeled(self, k: int) -> torch.Tensor:
        while self._queue.numel() < k:
            perm = self._unl[torch.randperm(self._unl.numel(), generator=self.rng)]
            self._queue = torch.cat([self._queue, perm])
        out, self._queue = self._queue[:k], self._queue[k:]
        return out

    def _strong(self, u: torch.Tensor) -> torch.Tensor:
        if self.ra_group <= 1:
            return strong_augment(
                u, num_ops=self.num_ops, magnitude=self.magnitude, flip=self.flip, pad=self.pad
            )
        parts = [
            strong_augment(
                u[s : s + self.ra_group],
                num_ops=self.num_ops,
                magnitude=self.magnitude,
                flip=self.flip,
                pad=self.pad,
                per_image=False,
            )
            for s in range(0, u.shape[0], self.ra_group)
        ]
        return torch.cat(parts)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._unl.numel() == 0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        d = self._data
        if self._unlabeled_only:  # the base loop's batch is the weak view of unlabeled samples
            us = to_float(self._strong(d.x[idx]).to(x.device), d.mean, d.std)
            out = model(torch.cat([x, us]))
            lw, ls = out[: x.shape[0]], out[x.shape[0] :]
            probs = F.softmax(lw.detach(), dim=1)
            unsup, mask = pseudo_label_loss(ls, probs, self.thresholds())
            self._count(idx, probs, mask)
            self.observe(idx, probs)
            return self.lambda_u * unsup, lw
        uidx = self._next_unlabeled(self.mu * int(idx.numel()))
        u = d.x[uidx]
        uw = to_float(weak_augment(u, flip=self.flip, pad=self.pad).to(x.device), d.mean, d.std)
        us = to_float(self._strong(u).to(x.device), d.mean, d.std)
        out = model(torch.cat([x, uw, us]))
        b, m = x.shape[0], uw.shape[0]
        logits, lw, ls = out[:b], out[b : b + m], out[b + m :]
        probs = F.softmax(lw.detach(), dim=1)
        unsup, mask = pseudo_label_loss(ls, probs, self.thresholds())
        self._count(uidx, probs, mask)
        self.observe(uidx, probs)
        return F.cross_entropy(logits, y) + self.lambda_u * unsup, logits

    def _count(self, uidx: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor) -> None:
        true = self._data.true_y
        self.pseudo_stats.add(probs.argmax(1), mask > 0, true[uidx] if true is not None else None)

    def train(
        self,
        model: nn.Module,
        data: ClientData,
        *,
        device: torch.device,
        generator: torch.Generator,
        proximal_mu: float = 0.0,
        state: dict[str, Any] | None = None,
    ) -> TrainResult:
        """The base loop; the example count is the client's whole set (labeled + unlabeled).

        Without labels the loop's batches are ``mu * batch_size`` unlabeled samples."""
        batch_size = self.batch_size
        if data.labeled_indices().numel() == 0:
            self.batch_size = self.mu * batch_size
        try:
            result = super().train(
                model,
                data,
                device=device,
                generator=generator,
                proximal_mu=proximal_mu,
                state=state,
            )
        finally:
            self.batch_size = batch_size
        if result.num_examples:
            result.num_examples = len(data)
            result.metrics.update(self.pseudo_stats.metrics())
        self._data = None  # type: ignore[assignment]
        return result
