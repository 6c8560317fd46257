"""The composite model of open-set FAL: a target and a detector in one module.

Open-set strategies (LfOSA, EAOA, BUAL) read a (K+1)-class detector besides the K-class target.
In federated mode both travel as one state dict (``target.*`` and ``detector.*``), so FedAvg
aggregates both with one call and every message carries models only. The pair is a
:class:`~fedsim.models.ClassifierModel` whose forward, features and classifier are the
target's: evaluation, validation and the query strategies' ``global`` outputs see the target.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models.base import ClassifierModel

__all__ = ["DetectorPair", "target_of"]


class DetectorPair(ClassifierModel):
    """``target`` (K outputs) and ``detector`` (K + 1 outputs, the last one "unknown").

    Parameters
    ----------
    target, detector
        Two freshly built models of the configured architecture.
    """

    def __init__(self, target: ClassifierModel, detector: ClassifierModel) -> None:
        super().__init__()
        self.target = target
        self.detector = detector
        self.embedding_dim = target.embedding_dim

    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]  # the target's head
        return self.target.classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The target's penultimate embedding."""
        return self.target.features(x)


def target_of(model: nn.Module) -> nn.Module:
    """The target of a :class:`DetectorPair`; any other model is its own target."""
    return model.target if isinstance(model, DetectorPair) else model
