"""Co-teaching (Han et al., NeurIPS 2018): two networks teach each other on small-loss samples.

The first network is the federated model; the second (the peer) stays on the client and persists
across rounds in the client state (spec section 5). The forget-rate schedule counts cumulative
local epochs over the client's participations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from clients.learners.base import LOCAL, ClientData, Learner
from clients.learners.common import (
    EPOCHS_KEY,
    Optimizers,
    load_module,
    reset_parameters,
    save_module,
)
from clients.learners.losses import coteaching_loss, forget_rate

PEER_PREFIX = "coteaching.peer."
PEER_INITS = ("fresh", "copy")


@LOCAL.register("coteaching")
@dataclass(kw_only=True, eq=False)
class CoTeaching(Learner):
    """Each net keeps the ``1 - r(t)`` smallest-loss fraction of the batch; its peer trains on it.

    Parameters
    ----------
    forget_rate
        ``tau``: the final fraction dropped; the paper sets it to the (known) noise rate.
    num_gradual
        ``T_k``: epochs over which ``r`` rises linearly from 0 to ``tau^c`` (reference:
        ``linspace(0, tau^c, T_k)``).
    exponent
        ``c``.
    peer_init
        ``fresh``: the peer starts from its own random initialisation (the paper's two nets);
        ``copy``: from the received model.
    """

    keeps_client_state: ClassVar[bool] = True

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy"})

    forget_rate: float = 0.2
    num_gradual: int = 10
    exponent: float = 1.0
    peer_init: str = "fresh"

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        self._epoch0 = int(state.get(EPOCHS_KEY, 0))
        self._peer = copy.deepcopy(model)
        if not load_module(state, PEER_PREFIX, self._peer) and self.peer_init == "fresh":
            reset_parameters(self._peer)
        self._peer.train()
        self._rate = 0.0

    def make_optimizer(self, model: nn.Module) -> Any:
        return Optimizers([super().make_optimizer(model), super().make_optimizer(self._peer)])

    def on_epoch_start(self, model: nn.Module, data: ClientData, epoch: int) -> None:
        self._rate = forget_rate(
            self._epoch0 + epoch, self.forget_rate, self.num_gradual, self.exponent
        )

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return coteaching_loss(logits, self._peer(x), y, self._rate), logits

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        save_module(state, PEER_PREFIX, self._peer)
        state[EPOCHS_KEY] = self._epoch0 + self.epochs
        del self._peer
