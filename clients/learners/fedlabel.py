"""FedLabel (Cho, Joshi, Dimitriadis, ICCV 2023): each unlabeled sample is pseudo-labelled by
whichever of the client's local model and the received global model is more of an expert on it,
with a global-local consistency term where the two agree.

There is no official code; the details follow the spec (section 2.2) and its switches:

- ``score``: how expert a model is on a sample, ``variance`` (default) | ``max_prob`` |
  ``neg_entropy`` (:func:`~clients.learners.pseudo_labels.expert_scores`);
- ``beta`` (0.95): the expert's confidence needed to use its label; ``lambda0`` (1.0): the
  consistency weight, scaled per sample by ``s_other / s_expert <= 1``;
- ``local_model``: ``persistent`` (default here) keeps a personalised local model in the client's
  ``Context.state`` across rounds, initialised from the first global model the client receives
  and trained every round with CE on the labeled samples and on the same confident pseudo-labels
  (it is never uploaded); ``in_round`` uses the model being trained this round (it starts equal
  to the global model, so in the first steps both pseudo-labelers agree). The spec names
  ``in_round`` as its project default; we default to ``persistent`` because the paper contrasts a
  local "expert" with the global one, which a model reset to the global one each round is not
  (both are switches; the choice is documented in the README).

The loss of the uploaded model ``f`` per step is ``CE(f(labeled weak), y) + lambda_u mean[1(max
p_e >= beta) CE(f(u_s), argmax p_e) + 1(agree) lambda0 (s_o / s_e) KL(p_o || f(u_s))]``. The loop,
batching and augmentations are FixMatch's (one pass over the unlabeled samples per epoch, with a
labeled batch per step); the spec's separate ``steps_labeled`` / ``steps_unlabeled`` counts are not
used (documented deviation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clients.learners.base import LOCAL, SGD, ClientData, TrainResult
from clients.learners.common import Optimizers, load_module, save_module, weak_augment
from clients.learners.fixmatch import FixMatch
from clients.learners.pseudo_labels import SCORES, fedlabel_loss, fedlabel_select
from fedsim.data import to_float
from fedsim.errors import invalid

LOCAL_PREFIX = "fedlabel.local."
LOCAL_MODES = ("persistent", "in_round")
LOCAL_WINS = "fedlabel_local_expert_rate"  # share of unlabeled views where the local model won


@LOCAL.register("fedlabel")
@dataclass(kw_only=True, eq=False)
class FedLabel(FixMatch):
    """FedLabel's client (see the module docstring for the parameters beyond FixMatch's)."""

    keeps_client_state: ClassVar[bool] = True

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "semi"})

    score: str = "variance"
    beta: float = 0.95
    lambda0: float = 1.0
    consistency: bool = True
    local_model: str = "persistent"
    #: FixMatch's confidence threshold is ``beta`` here, not a parameter of its own.
    threshold: float = field(init=False, default=0.95)

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise invalid("local.score", self.score, ", ".join(SCORES))
        if self.local_model not in LOCAL_MODES:
            raise invalid("local.local_model", self.local_model, ", ".join(LOCAL_MODES))
        self.threshold = self.beta

    # ---- state ---------------------------------------------------------------------------------
    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        super().on_train_start(model, data, state)
        self._global = copy.deepcopy(model).eval()
        for p in self._global.parameters():
            p.requires_grad_(False)
        self._local: nn.Module | None = None
        if self.local_model == "persistent":
            self._local = copy.deepcopy(model)
            load_module(state, LOCAL_PREFIX, self._local)  # else: the received global model
            self._local.train()

    def make_optimizer(self, model: nn.Module) -> Any:
        opt = super().make_optimizer(model)
        if self._local is None:
            return opt
        local_opt = SGD(
            self._local.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
        return Optimizers([opt, local_opt])

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        if self._local is not None:
            save_module(state, LOCAL_PREFIX, self._local)
        self._global = self._local = None  # type: ignore[assignment]

    # ---- loss ----------------------------------------------------------------------------------
    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self._data
        if self._unl.numel() == 0:  # a fully labeled client: plain CE (and the local model's)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if self._local is not None:
                loss = loss + F.cross_entropy(self._local(x), y)
            return loss, logits
        if self._unlabeled_only:
            uidx, uw, lab_x = idx, x, x[:0]
        else:
            uidx = self._next_unlabeled(self.mu * int(idx.numel()))
            u = d.x[uidx]
            uw = to_float(weak_augment(u, flip=self.flip, pad=self.pad).to(x.device), d.mean, d.std)
            lab_x = x
        us = to_float(self._strong(d.x[uidx]).to(x.device), d.mean, d.std)
        b, m = lab_x.shape[0], uw.shape[0]
        out = model(torch.cat([lab_x, uw, us]))
        logits, lw, ls = out[:b], out[b : b + m], out[b + m :]
        with torch.no_grad():
            p_global = F.softmax(self._global(uw), dim=1)
            if self._local is None:
                p_local = F.softmax(lw.detach(), dim=1)
        if self._local is not None:
            lout = self._local(torch.cat([lab_x, uw, us]))
            p_local = F.softmax(lout[b : b + m].detach(), dim=1)
        choice = fedlabel_select(p_local, p_global, score=self.score, beta=self.beta)
        unsup = fedlabel_loss(ls, choice, lambda0=self.lambda0, consistency=self.consistency)
        loss = self.lambda_u * unsup
        if b:
            loss = loss + F.cross_entropy(logits, y)
        if self._local is not None:  # the personal model: CE on labels and the same pseudo-labels
            mask = choice.mask.to(lout.dtype)
            ce_u = F.cross_entropy(lout[b + m :], choice.pseudo, reduction="none")
            loss = loss + self.lambda_u * (ce_u * mask).mean()
            if b:
                loss = loss + F.cross_entropy(lout[:b], y)
        true = d.true_y
        self.pseudo_stats.add(choice.pseudo, choice.mask, true[uidx] if true is not None else None)
        self._wins += int(choice.local_is_expert.sum())
        self._views += int(choice.local_is_expert.numel())
        return loss, (logits if b else lw)

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
        """FixMatch's ``train``; adds the share of unlabeled views the local model labelled."""
        self._wins, self._views = 0, 0
        result = super().train(
            model, data, device=device, generator=generator, proximal_mu=proximal_mu, state=state
        )
        if result.num_examples and self._views:
            result.metrics[LOCAL_WINS] = self._wins / self._views
        return result
