"""SemiFL's client (Diao, Ding, Tarokh, NeurIPS 2022; spec section 2.3).

Once per round, before training, the client pseudo-labels its whole unlabeled set with the model
it received, in eval mode, on the un-augmented images, keeping the samples whose top probability
is at least ``threshold`` (0.95). It then trains ``epochs`` local epochs over the kept samples with

- the fix loss: CE on the strong view (weak view + RandAugment) against the pseudo-labels;
- the mix loss (``mix``): mixup, ``lam ~ Beta(mix_alpha, mix_alpha)`` (one draw per batch), of each
  batch sample's weak view with a random sample of the client's whole set,
  ``lam CE(f(mix), y1) + (1 - lam) CE(f(mix), y2)`` with ``y2`` the received model's argmax label
  of the partner.

Samples with a given label (the labels-at-client and partial-client settings, where SemiFL is an
extension: the reference has unlabeled clients only) use it instead of a pseudo-label, with CE on
the weak view. The server side (fine-tuning on the server's labeled set every round) is the
workflow's server step (:mod:`server.components.ssfl`), not part of the learner.

With ``equal_weights`` (the reference) the client reports one example, so FedAvg averages the
clients with equal weights; a client with nothing to train on (no label, no confident
pseudo-label) reports zero and is left out of the average. Not implemented (documented): static
batch-norm statistics (``sbn``; the table's models have no batch norm) and the server optimizer's
momentum 0.5 with a cosine schedule (the global update is plain FedAvg).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner, TrainResult
from clients.learners.common import strong_augment, weak_augment
from clients.learners.pseudo_labels import PseudoLabelStats, confident_pseudo_labels
from fedsim.data import to_float
from fedsim.evaluation import batched


@LOCAL.register("semifl")
@dataclass(kw_only=True, eq=False)
class SemiFL(Learner):
    """SemiFL's client: one-shot pseudo-labelling with the received model, fix + mix losses.

    Parameters
    ----------
    threshold
        Confidence needed to keep a pseudo-label (0.95).
    mix, mix_alpha
        The mix loss and its Beta parameter (on, 0.75).
    equal_weights
        Report one example per client (the reference averages clients with equal weights).
    num_ops, magnitude, ra_group, flip, pad
        Augmentations as FixMatch's.
    """

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "semi"})

    threshold: float = 0.95
    mix: bool = True
    mix_alpha: float = 0.75
    equal_weights: bool = True
    num_ops: int = 2
    magnitude: int = 10
    ra_group: int = 1
    flip: bool = True
    pad: int = 4
    epochs: int = 5
    batch_size: int = 10
    lr: float = 0.03
    weight_decay: float = 5e-4

    # ---- pseudo-labelling, once per round ----------------------------------------------------
    @torch.no_grad()
    def _pseudo_label(self, model: nn.Module, data: ClientData, device: torch.device) -> None:
        n = len(data)
        probs = torch.empty(n, data.num_classes)
        for s, p in batched(
            model,
            data.x,
            lambda xb: F.softmax(model(xb), dim=1).cpu(),
            mean=data.mean,
            std=data.std,
            device=device,
        ):
            probs[s : s + len(p)] = p
        pseudo, conf = confident_pseudo_labels(probs, self.threshold)
        labeled = data.y >= 0
        self._partner_y = torch.where(labeled, data.y, pseudo)  # the mix partner's label
        self._targets = torch.where(labeled, data.y, torch.where(conf, pseudo, -1))
        self._labeled = labeled
        self.pseudo_stats = PseudoLabelStats()
        unl = ~labeled
        true = data.true_y[unl] if data.true_y is not None else None
        self.pseudo_stats.add(pseudo[unl], conf[unl], true)

    def train_indices(self, data: ClientData) -> torch.Tensor:
        return torch.nonzero(self._targets >= 0).flatten()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return weak_augment(x, flip=self.flip, pad=self.pad)

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        self._data = data

    def _strong(self, u: torch.Tensor) -> torch.Tensor:
        ops, mag, flip = int(self.num_ops), int(self.magnitude), bool(self.flip)
        if self.ra_group <= 1:
            return strong_augment(u, num_ops=ops, magnitude=mag, flip=flip, pad=self.pad)
        parts = [
            strong_augment(
                u[s : s + self.ra_group],
                num_ops=ops,
                magnitude=mag,
                flip=flip,
                pad=self.pad,
                per_image=False,
            )
            for s in range(0, u.shape[0], self.ra_group)
        ]
        return torch.cat(parts)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self._data
        t = self._targets[idx].to(x.device)
        lab = self._labeled[idx].to(x.device)
        xs = to_float(self._strong(d.x[idx]).to(x.device), d.mean, d.std)
        b = x.shape[0]
        parts = [x, xs]
        if self.mix:
            partner = torch.randint(0, len(d), (b,))
            xp = to_float(self.augment(d.x[partner]).to(x.device), d.mean, d.std)
            lam = float(torch.distributions.Beta(self.mix_alpha, self.mix_alpha).sample())
            parts.append(lam * x + (1 - lam) * xp)
        out = model(torch.cat(parts))
        lw, ls = out[:b], out[b : 2 * b]
        ce_w = F.cross_entropy(lw, t, reduction="none")
        ce_s = F.cross_entropy(ls, t, reduction="none")
        loss = torch.where(lab, ce_w, ce_s).mean()
        if self.mix:
            lm = out[2 * b :]
            yp = self._partner_y[partner].to(x.device)
            loss = loss + lam * F.cross_entropy(lm, t) + (1 - lam) * F.cross_entropy(lm, yp)
        return loss, lw

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
        """Pseudo-label once with the received model, then the base loop over the kept samples."""
        first = next(model.parameters(), None)
        if first is not None and first.device != device:
            model.to(device)
        self._pseudo_label(model, data, device)
        result = super().train(
            model, data, device=device, generator=generator, proximal_mu=proximal_mu, state=state
        )
        if result.num_examples and self.equal_weights:
            result.num_examples = 1
        result.metrics.update(self.pseudo_stats.metrics())
        self._data = None  # type: ignore[assignment]
        return result
