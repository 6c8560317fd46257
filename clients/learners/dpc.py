"""DPC's loss (Zong et al., AAAI 2024): calibrated softmax evidence + evidential loss.

Only the loss-level core is implemented (spec: "the EDL loss alone is low"); DPC's GMM clean
selection and DivideMix-style MixMatch with two heads are not (they are the "high" part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, Learner
from clients.learners.losses import dpc_edl_loss


@LOCAL.register("dpc")
@dataclass(kw_only=True, eq=False)
class DPC(Learner):
    """``log sum(alpha) - log alpha_y + beta KL(Dir(alpha~) || Dir(1)) [/ C]`` with
    ``alpha = e^o + 10/C``.

    Parameters
    ----------
    beta
        KL weight (0.5).
    gamma
        Evidence offset; ``None``: ``10 / C``.
    clamp
        Logits are clamped to ``[-clamp, clamp]`` before ``exp`` (numerical safety).
    kl_per_class
        Divide the KL by C as the reference code does (default) instead of the paper's formula.
    """

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})

    beta: float = 0.5
    gamma: float | None = None
    clamp: float = 10.0
    kl_per_class: bool = True

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = dpc_edl_loss(logits, y, self.beta, self.gamma, self.clamp, self.kl_per_class)
        return loss, logits
