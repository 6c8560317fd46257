"""FLTrust's server data (component ``fltrust``): the strategy gets the server's update on the
root set held out of the test split, trained with the clients' own recipe (``cfg.local``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from clients.learners import ClientData, build_learner
from fedsim.records import torch_state
from fedsim.seeding import derive_seed
from server.components.backdoor import uses_server_data
from server.components.base import Component, register

if TYPE_CHECKING:
    from server.workflow import Workflow


@register
class ServerRootSet(Component):
    """Hands ``server_update`` to a strategy that asks for server data (FLTrust)."""

    name = "fltrust"
    order = 20
    needs = frozenset({"holdout"})

    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        return uses_server_data(cfg)

    def setup(self, wf: Workflow) -> None:
        self.wf = wf

    def wrap_strategy(self, wf: Workflow, strategy: Strategy) -> Strategy:
        for s in (strategy, getattr(strategy, "strategy", None)):
            if s is not None and hasattr(s, "server_update"):
                s.server_update = self.server_update
        return strategy

    def server_update(self, arrays: ArrayRecord, server_round: int) -> np.ndarray:
        """The server's update on the root set from ``arrays``, flattened over the
        floating-point entries in state order."""
        wf = self.wf
        assert wf.holdout is not None
        data = wf.federation.data
        model = wf.build_model()
        start = torch_state(arrays)
        model.load_state_dict(start)
        root = ClientData(
            x=data.test_x[wf.holdout.root],
            y=data.test_y[wf.holdout.root],
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
        )
        local = {k: v for k, v in wf.cfg.local.items() if k != "name"}
        learner = build_learner(str(wf.cfg.local.name), local)
        seed = derive_seed(int(wf.cfg.seed), server_round, 0xF7)
        torch.random.default_generator.manual_seed(seed)
        learner.train(model, root, device=wf.device, generator=torch.Generator().manual_seed(seed))
        end = model.state_dict()
        return np.concatenate(
            [
                (end[k].detach().cpu().double() - start[k].double()).numpy().ravel()
                for k in start
                if torch.is_floating_point(start[k])
            ]
        )
