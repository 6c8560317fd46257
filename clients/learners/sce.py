"""SCE: symmetric cross-entropy (Wang et al., ICCV 2019), for noisy labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, Learner
from clients.learners.losses import sce_loss, sce_sample_losses


@LOCAL.register("sce")
@dataclass(kw_only=True, eq=False)
class SCE(Learner):
    """``alpha CE + beta RCE`` with ``log 0`` clipped to ``log_zero`` (A = -4, recalled).

    Defaults are the reference code's CIFAR-10 values (alpha 0.1, beta 1.0).
    """

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})
    vectorizable: ClassVar[bool] = True

    alpha: float = 0.1
    beta: float = 1.0
    log_zero: float = -4.0

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return sce_loss(logits, y, self.alpha, self.beta, self.log_zero), logits

    def sample_losses(
        self, logits: torch.Tensor, y: torch.Tensor, knob: torch.Tensor
    ) -> torch.Tensor:
        return sce_sample_losses(logits, y, self.alpha, self.beta, self.log_zero)
