"""What one client holds: its images and its (possibly weak) labels.

:class:`ClientData` is the core's type for a client's data (the federation builds it, learners,
attacks and query strategies read it); ``clients.learners`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: The kinds of labels a client can hold.
LABEL_KINDS = ("clean", "noisy", "partial", "semi")


@dataclass
class ClientData:
    """What one client holds: images (uint8, shared with the process) and its labels.

    ``y`` is ``-1`` where a sample has no single label (unlabeled ``semi`` samples, and every
    ``partial`` sample, whose label is the candidate set in ``candidates``, an ``n x C`` bool
    matrix).
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    num_classes: int
    label_kind: str = "clean"
    candidates: torch.Tensor | None = None
    #: The hidden true labels (a simulator knows them): only for metrics such as the accuracy of
    #: pseudo-labels, never for training. ``None`` when unknown.
    true_y: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def labeled_indices(self) -> torch.Tensor:
        """Positions of the samples with a single given label."""
        return torch.nonzero(self.y >= 0).flatten()

    def unlabeled_indices(self) -> torch.Tensor:
        """Positions of the samples with neither a label nor a candidate set."""
        has_set = self.candidates.any(1) if self.candidates is not None else None
        free = self.y < 0
        if has_set is not None:
            free &= ~has_set
        return torch.nonzero(free).flatten()

    def candidate_matrix(self) -> torch.Tensor:
        """``n x C`` bool candidate sets: ``candidates``, else the one-hot given labels."""
        if self.candidates is not None:
            return self.candidates
        out = torch.zeros(len(self), self.num_classes, dtype=torch.bool)
        lab = self.y >= 0
        out[lab, self.y[lab]] = True
        return out

    def subset(self, idx: torch.Tensor) -> ClientData:
        """The samples at ``idx`` (same statistics and kind)."""
        cand = self.candidates[idx] if self.candidates is not None else None
        return ClientData(
            x=self.x[idx],
            y=self.y[idx],
            mean=self.mean,
            std=self.std,
            num_classes=self.num_classes,
            label_kind=self.label_kind,
            candidates=cand,
            true_y=self.true_y[idx] if self.true_y is not None else None,
        )
