"""Seeds derived from the run seed, so that every random choice is reproducible."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integer ``parts`` (stable across processes and platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of a client's local randomness in a round (batch order, dropout, augmentation)."""
    return derive_seed(seed, server_round, partition_id, 0xC1)


def sample_partitions(
    seed: int, server_round: int, num_clients: int, k: int, attempt: int = 0
) -> list[int]:
    """The ``k`` partition ids sampled in ``server_round`` (sorted; seeded by seed and round).

    ``attempt`` > 0 draws the sample of a retried round (``too_few_replies=retry``), seeded too.
    """
    key = [int(seed), int(server_round), 0x5A] + ([int(attempt)] if attempt else [])
    rng = np.random.default_rng(key)
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
