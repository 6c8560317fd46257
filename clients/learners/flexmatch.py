"""FlexMatch (Zhang et al., NeurIPS 2021): FixMatch with curriculum per-class thresholds.

``T_c = tau M(beta_c)``, ``M(x) = x / (2 - x)``, ``beta_c`` from the classes of the unlabeled
samples' latest confident predictions (``selected_label``), with the threshold warm-up. The
``selected_label`` table (one entry per client sample, -1 for none) persists across rounds in the
client state.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from clients.learners.base import LOCAL, ClientData
from clients.learners.common import table
from clients.learners.fixmatch import FixMatch
from clients.learners.losses import flexmatch_thresholds

SELECTED_KEY = "flexmatch.selected_label"


@LOCAL.register("flexmatch")
class FlexMatch(FixMatch):
    """FixMatch's loss with per-class thresholds from :func:`flexmatch_thresholds` (warm-up on)."""

    keeps_client_state: ClassVar[bool] = True

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "semi"})

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        super().on_train_start(model, data, state)
        init = torch.full((len(data),), -1, dtype=torch.long)
        self._selected = table(state, SELECTED_KEY, init).long()
        self._num_classes = data.num_classes

    def thresholds(self) -> torch.Tensor:
        sel = self._selected[self._unl] if self._unl.numel() else self._selected[:0]
        return flexmatch_thresholds(sel, self._num_classes, self.threshold)

    def observe(self, uidx: torch.Tensor, probs: torch.Tensor) -> None:
        conf, pseudo = probs.cpu().max(1)
        over = conf >= self.threshold
        self._selected[uidx[over]] = pseudo[over]

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        state[SELECTED_KEY] = self._selected.numpy().astype(np.int64)
