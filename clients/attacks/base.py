"""The attack base class, the threat model (who is malicious, who attacks when) and the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch

from fedsim.data.client_data import ClientData
from fedsim.errors import invalid
from fedsim.registries import ATTACKS
from fedsim.schema import spec

#: Attack classes by name (:data:`fedsim.registries.ATTACKS`); ``none`` maps to ``None``.
ATTACKS.register("none")(None)

MALICIOUS_IDS = ("first", "seeded")
PER_ROUND = ("exact", "sampled")


def malicious_partitions(num_clients: int, mcr: float, seed: int, how: str = "first") -> list[int]:
    """The malicious partition ids: ``floor(num_clients * mcr)`` of them.

    ``first`` takes ids ``0 .. n-1`` (FLAIN's reference code); ``seeded`` draws them with the run
    seed.
    """
    n = int(np.floor(num_clients * mcr + 1e-9))
    if how == "first":
        return list(range(n))
    if how == "seeded":
        rng = np.random.default_rng([int(seed), 0xBAD])
        return sorted(int(i) for i in rng.choice(num_clients, size=n, replace=False))
    raise invalid("attack.malicious_ids", how, " or ".join(MALICIOUS_IDS))


def attackers_per_round(num_clients: int, num_malicious: int, k: int) -> int:
    """Malicious clients in each round's sample under ``per_round=exact``:
    ``floor(num_malicious * k / num_clients)`` (FLAIN: floor(N * MCR * fraction) = 5 of 25)."""
    return int(np.floor(num_malicious * k / num_clients + 1e-9))


def sample_with_attackers(
    seed: int, server_round: int, num_clients: int, k: int, malicious: list[int], m: int
) -> list[int]:
    """``k`` sorted partition ids with exactly ``m`` of them from ``malicious`` (seeded by seed and
    round)."""
    bad = sorted(malicious)
    good = sorted(set(range(num_clients)) - set(bad))
    m = min(m, len(bad), k)
    rng = np.random.default_rng([int(seed), int(server_round), 0xBD])
    chosen = list(rng.choice(bad, size=m, replace=False)) if m else []
    chosen += list(rng.choice(good, size=min(k - m, len(good)), replace=False)) if k > m else []
    return sorted(int(i) for i in chosen)


@dataclass(kw_only=True)
class Attack:
    """A targeted poisoning attack and its threat model.

    Parameters
    ----------
    mcr
        Malicious client ratio in [0, 1).
    malicious_ids
        ``first`` (ids 0..n-1, the reference) or ``seeded``.
    per_round
        ``exact``: every round samples ``floor(n_malicious * k / N)`` malicious clients (the
        reference); ``sampled``: plain seeded sampling, however many malicious clients it draws.
    start_round, end_round, every
        Malicious clients attack in rounds ``start_round <= r <= end_round`` (``None``: no end) with
        ``(r - start_round) % every == 0``; otherwise they train honestly. Continuous: 1, None, 1;
        single shot: ``start_round = end_round``.
    target
        The target label.
    source
        Source labels (one2one / many2one); ``None``: all labels but the target (all2one).
    poison_frac
        Fraction of a malicious client's eligible (source-class) samples it poisons.
    """

    mcr: Annotated[float, spec(low=0, high=1, high_open=True, doc="malicious client ratio")] = 0.2
    malicious_ids: Annotated[str, spec(choices=MALICIOUS_IDS)] = "first"
    per_round: Annotated[str, spec(choices=PER_ROUND)] = "exact"
    start_round: Annotated[int, spec(low=1)] = 1
    end_round: Annotated[int | None, spec(low=1, doc="null: no end")] = None
    every: Annotated[int, spec(low=1)] = 1
    target: Annotated[int, spec(low=0, doc="the target label")] = 5
    source: Annotated[list[int] | None, spec(low=0, doc="null: all-to-one")] = field(
        default_factory=lambda: [0]
    )
    poison_frac: Annotated[float, spec(low=0, high=1)] = 0.5

    #: whether ASR is measured on triggered images (False: on clean source images)
    uses_trigger = True

    def check(self, num_classes: int | None = None) -> None:
        """Raise one line for an invalid value."""
        if isinstance(self.mcr, bool) or not isinstance(self.mcr, int | float):
            raise invalid("attack.mcr", self.mcr, "a fraction in [0, 1)")
        if not 0 <= self.mcr < 1:
            raise invalid("attack.mcr", self.mcr, "a fraction in [0, 1)")
        if self.malicious_ids not in MALICIOUS_IDS:
            raise invalid("attack.malicious_ids", self.malicious_ids, " or ".join(MALICIOUS_IDS))
        if self.per_round not in PER_ROUND:
            raise invalid("attack.per_round", self.per_round, " or ".join(PER_ROUND))
        if not 0 <= self.poison_frac <= 1:
            raise invalid("attack.poison_frac", self.poison_frac, "a fraction in [0, 1]")
        if self.start_round < 1:
            raise invalid("attack.start_round", self.start_round, "an integer >= 1")
        if self.end_round is not None and self.end_round < self.start_round:
            raise invalid("attack.end_round", self.end_round, f">= start_round={self.start_round}")
        if self.every < 1:
            raise invalid("attack.every", self.every, "an integer >= 1")
        labels = [self.target, *(self.source or [])]
        if num_classes is not None and any(not 0 <= int(c) < num_classes for c in labels):
            raise invalid("attack.target/source", labels, f"labels in [0, {num_classes})")
        if self.source is not None and self.target in self.source:
            raise invalid("attack.source", self.source, f"labels other than target={self.target}")

    # ---- threat model ---------------------------------------------------------------------------
    def malicious(self, num_clients: int, seed: int) -> list[int]:
        """The malicious partition ids."""
        return malicious_partitions(num_clients, self.mcr, seed, self.malicious_ids)

    def attacks_in(self, server_round: int) -> bool:
        """Whether malicious clients attack in ``server_round``."""
        if server_round < self.start_round:
            return False
        if self.end_round is not None and server_round > self.end_round:
            return False
        return (server_round - self.start_round) % self.every == 0

    def eligible(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask of labels the attack turns into the target."""
        if self.source is None:
            return y != self.target
        return torch.isin(y, torch.as_tensor(self.source, dtype=y.dtype)) & (y != self.target)

    # ---- client side ----------------------------------------------------------------------------
    def poison_indices(self, data: ClientData, seed: int, partition_id: int) -> torch.Tensor:
        """The (fixed per client) indices of the samples this client poisons."""
        idx = torch.nonzero(self.eligible(data.y)).flatten().numpy()
        n = int(np.floor(self.poison_frac * len(idx) + 1e-9))
        rng = np.random.default_rng([int(seed), int(partition_id), 0xA7])
        return torch.from_numpy(np.sort(rng.choice(idx, size=n, replace=False)).astype(np.int64))

    def poison(
        self, data: ClientData, *, seed: int, partition_id: int, attacker_index: int
    ) -> ClientData:
        """The client's training data with its poisoned samples replaced."""
        idx = self.poison_indices(data, seed, partition_id)
        x, y = data.x.clone(), data.y.clone()
        if len(idx):
            x[idx] = self.stamp_train(data.x[idx], attacker_index)
            y[idx] = self.target
        return ClientData(
            x=x,
            y=y,
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
            label_kind=data.label_kind,
        )

    def stamp_train(self, x: torch.Tensor, attacker_index: int) -> torch.Tensor:
        """The trigger an attacker stamps on its poisoned training images."""
        return x

    def after_train(
        self, model: torch.nn.Module, global_state: dict[str, torch.Tensor], num_clients: int
    ) -> None:
        """Rewrite the trained model before it is sent (model replacement)."""

    # ---- server side ----------------------------------------------------------------------------
    def test_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Test images with the full trigger (for ASR)."""
        return x
