"""Detector helper learners of open-set FAL (spec ``open_set_fal.md`` sections 3, 4.1, 4.3, 6).

A detector D has ``K + 1`` outputs and trains on labels ``0..K`` (``K``: the oracle's "unknown").
Each learner reads ``K`` from the batch's logits (``logits.shape[1] - 1``). The math is in pure
functions (:func:`tempered_ce`, :func:`energy_margin_loss`) that tests call on hand-made tensors.

- ``det_ce_t`` (LfOSA ``train_A``): cross-entropy of temperature-scaled logits, one temperature
  for known and one for unknown samples.
- ``det_energy`` (EAOA): cross-entropy plus a weighted margin loss on the known-class energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner
from fedsim.schema import spec

__all__ = ["DetCET", "DetEnergy", "energy_margin_loss", "known_class_energy", "tempered_ce"]


def tempered_ce(
    logits: torch.Tensor, y: torch.Tensor, known_T: float, unknown_T: float
) -> torch.Tensor:
    """LfOSA's detector loss: ``mean_i CE(z_i / T_i, y_i)``.

    Parameters
    ----------
    logits
        Raw detector logits ``[B, K + 1]``.
    y
        Labels in ``0..K`` (``K = logits.shape[1] - 1`` is "unknown").
    known_T, unknown_T
        ``T_i`` for ``y_i < K`` and for ``y_i == K``.

    Returns
    -------
    torch.Tensor
        The scalar batch mean.
    """
    k = logits.shape[1] - 1
    temp = torch.where(y == k, logits.new_tensor(unknown_T), logits.new_tensor(known_T))
    return F.cross_entropy(logits / temp[:, None], y)


def known_class_energy(logits: torch.Tensor) -> torch.Tensor:
    """``E(x) = -logsumexp_{c<K} z_c(x)``, the free energy of the known-class logits ``[B]``."""
    return -torch.logsumexp(logits[:, :-1], dim=1)


def energy_margin_loss(
    logits: torch.Tensor, y: torch.Tensor, m_in: float, m_out: float
) -> torch.Tensor:
    """EAOA's energy margin loss ``L_E``.

    ``L_E = mean_{y<K} max(0, E - m_in)^2 + mean_{y=K} max(0, m_out - E)^2`` with
    ``E = -logsumexp_{c<K} z_c``. A group absent from the batch contributes 0 (quirk Q6: the
    reference's mean over an empty group is NaN).

    Parameters
    ----------
    logits
        Raw detector logits ``[B, K + 1]``.
    y
        Labels in ``0..K``.
    m_in, m_out
        The known and unknown energy margins (EAOA: -25 and -7).
    """
    k = logits.shape[1] - 1
    energy = known_class_energy(logits)
    known, unknown = y < k, y == k
    zero = logits.new_zeros(())
    term_in = F.relu(energy[known] - m_in).pow(2).mean() if bool(known.any()) else zero
    term_out = F.relu(m_out - energy[unknown]).pow(2).mean() if bool(unknown.any()) else zero
    return term_in + term_out


@LOCAL.register("det_ce_t")
@dataclass(kw_only=True, eq=False)
class DetCET(Learner):
    """LfOSA's detector training (``train_A``): ``CE(z / T_x, y)`` on labels ``0..K``, with
    ``T_x = known_T`` for known samples and ``unknown_T`` for labeled unknowns (the centre loss
    is off, as in the reference's ``--weight-cent 0``)."""

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})
    helper_only: ClassVar[bool] = True  # trains a (K+1)-class detector, never the target

    known_T: Annotated[float, spec(low=0, low_open=True, doc="temperature of known samples")] = 0.5
    unknown_T: Annotated[
        float, spec(low=0, low_open=True, doc="temperature of labeled unknowns")
    ] = 0.5

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return tempered_ce(logits, y, self.known_T, self.unknown_T), logits


@LOCAL.register("det_energy")
@dataclass(kw_only=True, eq=False)
class DetEnergy(Learner):
    """EAOA's detector training: ``CE + energy_weight * L_E`` (:func:`energy_margin_loss`).

    As in the reference, a client whose labeled set holds no unknown yet (cycle 0) trains with
    plain CE (the reference trains D like the target then); once it holds one, every batch adds
    the margin term, an absent group's part being 0 (Q6).
    """

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})
    helper_only: ClassVar[bool] = True  # trains a (K+1)-class detector, never the target

    energy_weight: Annotated[float, spec(low=0, doc="weight of the energy margin loss")] = 0.01
    m_in: Annotated[float, spec(doc="energy margin of known samples")] = -25.0
    m_out: Annotated[float, spec(doc="energy margin of labeled unknowns")] = -7.0

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        self._labels = data.y
        self._has_unknown: bool | None = None

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if getattr(self, "_has_unknown", None) is None:  # K is known from the first logits
            labels = getattr(self, "_labels", y)  # (without on_train_start: this batch)
            self._has_unknown = bool((labels == logits.shape[1] - 1).any())
        if self._has_unknown and self.energy_weight > 0:
            loss = loss + self.energy_weight * energy_margin_loss(logits, y, self.m_in, self.m_out)
        return loss, logits
