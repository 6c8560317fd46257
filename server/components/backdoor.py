"""Backdoor evaluation (component ``backdoor``): exact attacker sampling, the main accuracy and,
under an attack, ASR/RA every evaluated round, on the test split less the held-out aux/root sets;
theta_0 is stored for post-training defenses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from clients.attacks import NO_ATTACK, attack_from_config, attackers_per_round
from clients.attacks.base import Attack, sample_with_attackers
from fedsim import constants as C
from fedsim.registries import STRATEGIES
from server.backdoor_eval import backdoor_metrics
from server.components.base import Component, register
from server.workflow_parts import check_holdout_fits

if TYPE_CHECKING:
    import torch

    from fedsim.federation import Federation
    from fedsim.models import ClassifierModel
    from server.workflow import Workflow


def attack_name(cfg: DictConfig) -> str:
    """The configured attack (``none`` without one)."""
    return str(OmegaConf.select(cfg, "attack.name", default=NO_ATTACK))


def defense_name(cfg: DictConfig) -> str:
    """The configured post-training defense (``none`` without one)."""
    return str(OmegaConf.select(cfg, "defense.name", default="none"))


def uses_server_data(cfg: DictConfig) -> bool:
    """Whether the strategy (or the one it wraps) needs the server's root set (FLTrust)."""
    names = (str(cfg.strategy.name), str(OmegaConf.select(cfg, "strategy.inner", default="")))
    return any(n in STRATEGIES and STRATEGIES.meta(n).get("server_data") for n in names)


@register
class BackdoorEval(Component):
    """MA (and ASR/RA under an attack) on the clean evaluation set; see the module docstring."""

    name = "backdoor"
    order = 10
    promises = (C.BACKDOOR_MA, C.MALICIOUS_SAMPLED, C.BACKDOOR_ASR, C.BACKDOOR_RA)
    needs = frozenset({"holdout", "initial_model"})

    def __init__(self) -> None:
        self.attack: Attack | None = None
        self.malicious: list[int] = []

    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        return attack_name(cfg) != NO_ATTACK or defense_name(cfg) != "none" or uses_server_data(cfg)

    @classmethod
    def promised(cls, cfg: DictConfig) -> tuple[str, ...]:
        if attack_name(cfg) == NO_ATTACK:
            return (C.BACKDOOR_MA, C.MALICIOUS_SAMPLED)
        return cls.promises

    @classmethod
    def check_data(cls, cfg: DictConfig, federation: Federation) -> None:
        why = [
            n
            for n, on in (
                (f"attack={attack_name(cfg)}", attack_name(cfg) != NO_ATTACK),
                (f"defense={defense_name(cfg)}", defense_name(cfg) != "none"),
                (f"strategy={cfg.strategy.name}", uses_server_data(cfg)),
            )
            if on
        ]
        check_holdout_fits(cfg, federation.data.test_y.numpy(), why=", ".join(why))

    def setup(self, wf: Workflow) -> None:
        cfg = wf.cfg
        self.attack = attack_from_config(cfg)
        if self.attack is not None:
            self.attack.check(wf.federation.data.num_classes)
            self.malicious = self.attack.malicious(int(cfg.num_clients), int(cfg.seed))

    def on_initial_model(self, wf: Workflow, model: ClassifierModel) -> None:
        path = wf.run_dir / C.INITIAL_MODEL_FILE
        if not path.is_file():
            wf.run_dir.mkdir(parents=True, exist_ok=True)
            np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})

    def sample(self, wf: Workflow, server_round: int, k: int, attempt: int) -> list[int] | None:
        if self.attack is None or self.attack.per_round != "exact":
            return None
        n = int(wf.cfg.num_clients)
        m = attackers_per_round(n, len(self.malicious), k)
        # A retried round (attempt > 0) draws from a round key no real round uses.
        key = server_round if not attempt else server_round + attempt * 1_000_003
        return sample_with_attackers(int(wf.cfg.seed), key, n, k, self.malicious, m)

    def metrics(self, wf: Workflow, model: ClassifierModel, base: dict[str, Any]) -> dict[str, Any]:
        """MA (the clean accuracy in ``base``) and the attack's ASR/RA."""
        out: dict[str, Any] = {C.BACKDOOR_MA: base[C.EVAL_ACCURACY]}
        data = wf.federation.data
        out.update(
            self.attack_metrics(wf, model, data.test_x[wf.eval_idx], data.test_y[wf.eval_idx])
        )
        return out

    def attack_metrics(
        self, wf: Workflow, model: ClassifierModel, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, Any]:
        """The attack's ASR/RA on the images ``x`` with labels ``y`` (empty without an attack)."""
        if self.attack is None:
            return {}
        data = wf.federation.data
        return backdoor_metrics(
            model,
            x,
            y,
            self.attack,
            mean=data.mean,
            std=data.std,
            device=wf.device,
            batch_size=int(wf.cfg.eval_batch_size),
        )

    def evaluate(
        self, wf: Workflow, server_round: int, model: ClassifierModel, base: dict[str, Any]
    ) -> dict[str, Any]:
        out = self.metrics(wf, model, base)
        out[C.MALICIOUS_SAMPLED] = [p for p in wf.last_sampled if p in self.malicious]
        return out

    def summary(self, wf: Workflow, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        evals = [r for r in rounds if r.get(C.BACKDOOR_MA) is not None]
        if not evals:
            return {}
        keys = (C.BACKDOOR_MA, C.BACKDOOR_ASR, C.BACKDOOR_RA)
        return {f"final_{k}": evals[-1][k] for k in keys if evals[-1].get(k) is not None}
