"""Supervised local training with cross-entropy: the base loop as is."""

from __future__ import annotations

from typing import ClassVar

from clients.learners.base import LOCAL, Learner


@LOCAL.register("supervised")
class Supervised(Learner):
    """Plain cross-entropy (the FedAvg/FedProx client). It takes clean and noisy labels (CE is the
    noisy-label baseline) and ``semi`` labels, of which it uses the labeled part only; it refuses
    partial labels."""

    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean", "noisy", "semi"})
    #: it ignores unlabeled samples, so a client without labels has nothing to train on
    labeled_only: ClassVar[bool] = True
    vectorizable: ClassVar[bool] = True
