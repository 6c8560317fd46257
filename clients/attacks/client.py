"""The ClientApp's attack hook: whether this client attacks this round, and what it does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from clients.attacks import attack_from_config
from clients.attacks.base import Attack
from clients.learners import ClientData


@dataclass
class _Cached:
    attack: Attack | None
    malicious: list[int]
    per_round: int
    poisoned: dict[int, ClientData] = field(default_factory=dict)


_CACHE: dict[int, tuple[DictConfig, _Cached]] = {}


def _cached(cfg: DictConfig) -> _Cached:
    hit = _CACHE.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    from fedsim.config import clients_per_round

    attack = attack_from_config(cfg)
    malicious = attack.malicious(int(cfg.num_clients), int(cfg.seed)) if attack else []
    entry = _Cached(attack, malicious, clients_per_round(cfg))
    _CACHE.clear()
    _CACHE[id(cfg)] = (cfg, entry)
    return entry


@dataclass
class AttackStep:
    """What an attacking client does in one round."""

    attack: Attack
    partition_id: int
    attacker_index: int
    seed: int
    clients_per_round: int
    cache: dict[int, ClientData]

    def poison(self, data: ClientData) -> ClientData:
        """The client's poisoned training data (computed once per client)."""
        if self.partition_id not in self.cache:
            self.cache[self.partition_id] = self.attack.poison(
                data,
                seed=self.seed,
                partition_id=self.partition_id,
                attacker_index=self.attacker_index,
            )
        return self.cache[self.partition_id]

    def after_train(self, model: torch.nn.Module, global_state: dict[str, Any]) -> None:
        """Rewrite the trained model (model replacement); a no-op for data-only attacks."""
        self.attack.after_train(model, global_state, self.clients_per_round)


def attack_step(cfg: DictConfig, partition_id: int, server_round: int) -> AttackStep | None:
    """The attack this client runs in ``server_round``, or ``None`` when it trains honestly."""
    entry = _cached(cfg)
    if entry.attack is None or partition_id not in entry.malicious:
        return None
    if not entry.attack.attacks_in(server_round):
        return None
    return AttackStep(
        attack=entry.attack,
        partition_id=partition_id,
        attacker_index=entry.malicious.index(partition_id),
        seed=int(cfg.seed),
        clients_per_round=entry.per_round,
        cache=entry.poisoned,
    )
