"""Supervised local training with cross-entropy: the base loop as is."""

from __future__ import annotations

from clients.learners.base import LOCAL, Learner


@LOCAL.register("supervised")
class Supervised(Learner):
    """Plain cross-entropy on clean labels (the FedAvg/FedProx client)."""
