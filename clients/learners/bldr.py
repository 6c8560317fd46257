"""BLDR's core (Zong et al., arXiv 2209.01334): a positive-learning head with per-sample label
correction and a negative-learning head whose belief in the given label re-weights the samples.

The FL core of the spec (section 3.2): corrected CE with learnable per-sample ``u_i, v_i`` on the
model's classifier, the NL head, and the re-weighting after a warm-up; the exits, distillation and
extra terms are dropped. The NL head is kept on the client (head policy ``local``, a project
choice), as are ``u``, ``v`` and the sample weights, in the client state across rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clients.learners.base import LOCAL, SGD, ClientData, Learner
from clients.learners.common import EPOCHS_KEY, Optimizers, load_module, save_module, table
from clients.learners.losses import corrected_probs, minmax, negative_learning_loss
from fedsim.errors import invalid
from fedsim.evaluation import batched

HEAD_PREFIX = "bldr.nl_head."
#: choices of ``nl_exclude``
NL_EXCLUDE = ("nl_head", "pl_head", "none")


@LOCAL.register("bldr")
@dataclass(kw_only=True, eq=False)
class BLDR(Learner):
    """``w_i [CE(corrected p_i, y_i) + nl_weight NL_i]``.

    Parameters
    ----------
    uv_lr
        Learning rate of the per-sample ``u``, ``v`` (spec: 10).
    uv_init_std
        Standard deviation of their initialisation (SOP's 1e-8).
    reweight_start
        Cumulative local epoch from which ``w_i`` = the min-max-normalised NL-head probability of
        the given label (recomputed at each epoch start); before it ``w_i = 1``. The spec's 20/40
        epochs are for centralised training; the default here suits FL runs of tens of rounds.
    nl_weight
        Weight of the NL head's loss.
    nl_exclude
        Which class besides the given label the NL head's loss leaves out: ``"nl_head"`` (the
        NL head's own prediction, as the spec reads), ``"pl_head"`` (the model's prediction) or
        ``"none"`` (only the given label). See the README's BLDR note for why the default
        differs from the spec.
    """

    keeps_client_state: ClassVar[bool] = True

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})

    uv_lr: float = 10.0
    uv_init_std: float = 1e-8
    reweight_start: int = 10
    nl_weight: float = 1.0
    nl_exclude: str = "pl_head"

    def __post_init__(self) -> None:
        if self.nl_exclude not in NL_EXCLUDE:
            raise invalid("local.nl_exclude", self.nl_exclude, ", ".join(NL_EXCLUDE))

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        n, c = len(data), data.num_classes
        device = next(model.parameters()).device
        self._epoch0 = int(state.get(EPOCHS_KEY, 0))
        self._u = table(state, "bldr.u", torch.randn(n, c) * self.uv_init_std).to(device)
        self._v = table(state, "bldr.v", torch.randn(n, c) * self.uv_init_std).to(device)
        self._u.requires_grad_(True)
        self._v.requires_grad_(True)
        self._w = table(state, "bldr.w", torch.ones(n)).to(device)
        self._head = nn.Linear(model.embedding_dim, c).to(device)  # type: ignore[arg-type]
        load_module(state, HEAD_PREFIX, self._head)

    def make_optimizer(self, model: nn.Module) -> Any:
        return Optimizers(
            [
                super().make_optimizer(nn.ModuleList([model, self._head])),
                SGD([self._u, self._v], lr=self.uv_lr),
            ]
        )

    @torch.no_grad()
    def on_epoch_start(self, model: nn.Module, data: ClientData, epoch: int) -> None:
        if self._epoch0 + epoch < self.reweight_start:
            return
        device = self._w.device
        probs = []
        for s, feats in batched(
            model,
            data.x,
            lambda x: model.forward_with_features(x)[1],  # type: ignore[operator]
            mean=data.mean,
            std=data.std,
            device=device,
            batch_size=512,
        ):
            p = F.softmax(self._head(feats), dim=1)
            probs.append(p.gather(1, data.y[s : s + 512].to(device).view(-1, 1)).squeeze(1))
        self._w = minmax(torch.cat(probs))

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = model.forward_with_features(x)  # type: ignore[operator]
        idx = idx.to(x.device)
        p = corrected_probs(logits, y, self._u[idx], self._v[idx])
        pl = F.nll_loss(p.log(), y, reduction="none")
        exclude = {"nl_head": None, "pl_head": logits.detach().argmax(1), "none": y}
        nl = negative_learning_loss(self._head(feats), y, exclude[self.nl_exclude])
        w = self._w[idx]
        return (w * (pl + self.nl_weight * nl)).mean(), logits

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        state["bldr.u"] = self._u.detach().cpu().numpy()
        state["bldr.v"] = self._v.detach().cpu().numpy()
        state["bldr.w"] = self._w.detach().cpu().numpy()
        save_module(state, HEAD_PREFIX, self._head)
        state[EPOCHS_KEY] = self._epoch0 + self.epochs
        del self._u, self._v, self._head
