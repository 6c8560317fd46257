"""Backdoor and poisoning attacks run by malicious clients (config group ``attack``).

Malicious clients are ordinary ClientApp nodes: which partition ids are malicious follows from
``num_clients``, ``attack.mcr`` and the seed (:func:`malicious_partitions`), and whether one attacks
in a round follows from the attack's round schedule, so the same code runs in simulation and in
deployment. An attacking client poisons its data (:meth:`Attack.poison`), trains with the ordinary
:class:`~clients.learners.Learner` loop, and may then rewrite its model (:meth:`Attack.after_train`,
model replacement). The server stamps the full trigger on test images to measure ASR
(:meth:`Attack.test_inputs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clients.attacks import poisoning as _poisoning  # noqa: F401  (registers the attacks)
from clients.attacks.base import (
    ATTACKS,
    Attack,
    attackers_per_round,
    malicious_partitions,
    sample_with_attackers,
)
from fedsim.errors import ConfigError

NO_ATTACK = "none"


def attack_params(node: Mapping[Any, Any]) -> dict[str, Any]:
    """The attack's parameters (all keys of ``cfg.attack`` but ``name``)."""
    return {str(k): v for k, v in node.items() if k != "name"}


def build_attack(name: str, params: Mapping[str, Any]) -> Attack | None:
    """The attack registered as ``name`` (``None`` for ``none``); unknown parameters get one line
    naming the allowed ones."""
    cls = ATTACKS.get(name)
    if cls is None:
        if params:
            raise ConfigError(
                f"invalid attack parameter {sorted(params)[0]!r} for attack 'none': allowed none"
            )
        return None
    attack: Attack = ATTACKS.build(name, params)
    attack.check()
    return attack


def attack_from_config(cfg: Any) -> Attack | None:
    """The attack of a fedsim config (``None`` when ``attack`` is absent or ``none``)."""
    node = cfg.get("attack") if hasattr(cfg, "get") else None
    if node is None:
        return None
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node
    assert isinstance(plain, dict)
    return build_attack(str(plain.get("name", NO_ATTACK)), attack_params(plain))


__all__ = [
    "ATTACKS",
    "NO_ATTACK",
    "Attack",
    "attack_from_config",
    "attack_params",
    "attackers_per_round",
    "build_attack",
    "malicious_partitions",
    "sample_with_attackers",
]
