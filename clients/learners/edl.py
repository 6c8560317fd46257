"""E2OAL's evidential (EDL) detector learner ``det_edl`` (spec ``open_set_fal.md`` section 4.4,
step 1).

The reference trains one network with two heads: a base head (K outputs, CE on the labeled
knowns) and an auxiliary EDL head (K + M outputs, on every labeled sample). fedsim federates the
target T and the detector D as two networks (``detector.backbone: separate``): T keeps the
configured ``local`` learner (CE), and D, trained by this helper learner on labels ``0..K``,
plays the aux EDL head with ``K + 1`` outputs (one unknown EDL class, ``e2oal.unknown_slots:
1``). The math is in pure functions (:func:`dirichlet_kl_uniform`, :func:`edl_loss`) that tests
call on hand-made tensors.

The KL term is annealed by ``min(1, e / anneal_epochs)`` with ``e`` the 0-based epoch. The
reference counts the epochs of one cycle's training from scratch; fedsim counts the client's
cumulative local epochs with this learner, kept in the learner's per-client ``state`` under
:data:`EDL_EPOCHS_KEY` (its own key, so it never mixes with the target learner's count). A call
without a ``state`` that persists (a fresh ``{}`` each round) starts at epoch 0 every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner

__all__ = ["EDL_EPOCHS_KEY", "DetEDL", "anneal_coef", "dirichlet_kl_uniform", "edl_loss"]

#: per-client ``state`` key of the cumulative local epochs of ``det_edl``
EDL_EPOCHS_KEY = "det_edl_epochs"
#: the reference's annealing length, in epochs
ANNEAL_EPOCHS = 10
#: the reference's guard inside the logarithms of the NLL term
_EPS = 1e-8


def dirichlet_kl_uniform(alpha: torch.Tensor) -> torch.Tensor:
    """``KL(Dir(alpha) || Dir(1, ..., 1))`` of each row ``[B]``.

    ``= lnGamma(S) - lnGamma(C) - sum_c lnGamma(alpha_c) + sum_c (alpha_c - 1)(psi(alpha_c) -
    psi(S))`` with ``S = sum_c alpha_c`` and ``C`` the number of columns; 0 when ``alpha = 1``.

    Parameters
    ----------
    alpha
        Dirichlet concentrations ``[B, C]``, all > 0.
    """
    s = alpha.sum(dim=1)
    c = alpha.new_tensor(float(alpha.shape[1]))
    return (
        torch.lgamma(s)
        - torch.lgamma(c)
        - torch.lgamma(alpha).sum(dim=1)
        + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(s)[:, None])).sum(dim=1)
    )


def edl_loss(logits: torch.Tensor, y: torch.Tensor, anneal: float) -> torch.Tensor:
    """E2OAL's EDL loss (the reference's ``EDL_Loss``, ``kl_scale = 1``), a batch mean.

    ``alpha = exp(clamp(z, -10, 10)) + 1``, ``S = sum_c alpha_c``; per sample
    ``nll = log S - log alpha_y`` (the reference adds 1e-8 inside both logarithms) and
    ``kl = KL(Dir(alpha~) || Dir(1)) / C`` with ``alpha~ = y + (1 - y) * alpha`` (one-hot ``y``:
    the evidence of the true class removed); the loss is ``mean(nll) + anneal * mean(kl)``.

    Parameters
    ----------
    logits
        Raw logits ``[B, C]`` (``C = K + 1`` for fedsim's detector).
    y
        Labels ``[B]`` in ``0..C-1``.
    anneal
        Weight of the KL term, ``min(1, epoch / 10)`` in the reference (:func:`anneal_coef`).

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    num_outputs = logits.shape[1]
    alpha = torch.exp(torch.clamp(logits, -10.0, 10.0)) + 1.0
    s = alpha.sum(dim=1)
    alpha_y = alpha.gather(1, y[:, None]).squeeze(1)
    nll = torch.log(s + _EPS) - torch.log(alpha_y + _EPS)
    onehot = F.one_hot(y, num_classes=num_outputs).to(alpha.dtype)
    kl = dirichlet_kl_uniform(onehot + (1.0 - onehot) * alpha) / num_outputs
    return nll.mean() + float(anneal) * kl.mean()


def anneal_coef(epoch: int, anneal_epochs: int = ANNEAL_EPOCHS) -> float:
    """``min(1, epoch / anneal_epochs)`` for a 0-based ``epoch`` (0 in the first epoch)."""
    return min(1.0, max(0, int(epoch)) / float(anneal_epochs))


@LOCAL.register("det_edl")
@dataclass(kw_only=True, eq=False)
class DetEDL(Learner):
    """E2OAL's aux EDL head as fedsim's (K+1)-class detector: :func:`edl_loss` on labels
    ``0..K`` (``K``: the oracle's "unknown"), the KL term annealed over the client's cumulative
    local epochs (:data:`EDL_EPOCHS_KEY` in the per-client ``state``).

    In cycle 0 (no unknown labeled on the client) it trains on known samples only; the KL term
    still pushes the unknown output's evidence to 0. The optimizer settings come from the
    target's ``local`` group; the query strategy ``e2oal`` selects it.
    """

    keeps_client_state: ClassVar[bool] = True
    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})
    helper_only: ClassVar[bool] = True  # trains a (K+1)-class detector, never the target

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        self._epoch0 = int(state.get(EDL_EPOCHS_KEY, 0))
        self._anneal = anneal_coef(self._epoch0)

    def on_epoch_start(self, model: nn.Module, data: ClientData, epoch: int) -> None:
        self._anneal = anneal_coef(getattr(self, "_epoch0", 0) + epoch)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        # without on_train_start (a bare loss call) the KL term has full weight, as the
        # reference's EDL_Loss with epoch=None
        return edl_loss(logits, y, getattr(self, "_anneal", 1.0)), logits

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        state[EDL_EPOCHS_KEY] = getattr(self, "_epoch0", 0) + self.epochs
