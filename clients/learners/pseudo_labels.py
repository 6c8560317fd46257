"""Pseudo-labelling math shared by the semi-supervised learners (pure functions), and the count of
how many pseudo-labels were used and how many were right (the simulator knows the true labels).

- :func:`confident_pseudo_labels`: argmax labels and the mask of those at or above a threshold.
- :func:`expert_scores` / :func:`fedlabel_select` / :func:`fedlabel_loss`: FedLabel's choice, per
  sample, of the local or the global model as pseudo-labeler, and its loss with the global-local
  consistency term (spec section 2.2).
- :class:`PseudoLabelStats`: per-round counts reported in the client's train metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedsim.constants import (
    PSEUDO_LABEL_ACCURACY,
    PSEUDO_LABEL_CORRECT,
    PSEUDO_LABEL_COUNT,
    PSEUDO_LABEL_SEEN,
)

SCORES = ("variance", "max_prob", "neg_entropy")


def confident_pseudo_labels(
    probs: torch.Tensor, threshold: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(argmax p, max p >= T)`` for an ``n x C`` probability matrix.

    ``threshold`` is a number or one per class (indexed by the argmax class).
    """
    conf, pseudo = probs.max(1)
    t = threshold[pseudo] if isinstance(threshold, torch.Tensor) else threshold
    return pseudo, conf >= t


def expert_scores(probs: torch.Tensor, score: str) -> torch.Tensor:
    """How much of an expert a model is on each sample, from its ``n x C`` probabilities.

    ``variance``: the variance of the probability vector over the classes (population variance);
    ``max_prob``: the top probability; ``neg_entropy``: ``sum p log p``. Higher is more confident.
    """
    if score == "variance":
        return probs.var(dim=1, unbiased=False)
    if score == "max_prob":
        return probs.max(1).values
    if score == "neg_entropy":
        return (probs * probs.clamp_min(1e-12).log()).sum(1)
    raise ValueError(f"unknown FedLabel score {score!r}: allowed {', '.join(SCORES)}")


@dataclass
class FedLabelChoice:
    """FedLabel's per-sample decision (all tensors of length ``n``; ``other`` is ``n x C``).

    Attributes
    ----------
    pseudo
        The expert's argmax label.
    mask
        The expert's top probability is at least ``beta``.
    local_is_expert
        True where the local model won (ties go to the global model).
    agree
        The two models' argmax labels agree (the consistency term applies there).
    weight
        ``s_other / s_expert`` in [0, 1] (0 where the expert's score is not positive).
    other
        The probabilities of the model that was not chosen.
    """

    pseudo: torch.Tensor
    mask: torch.Tensor
    local_is_expert: torch.Tensor
    agree: torch.Tensor
    weight: torch.Tensor
    other: torch.Tensor


def fedlabel_select(
    p_local: torch.Tensor, p_global: torch.Tensor, *, score: str, beta: float
) -> FedLabelChoice:
    """Pick, per sample, the more expert of the local and the global model (spec 2.2).

    The expert ``e = argmax_{L, G} s(p)``; ``y = argmax p_e``, kept where ``max p_e >= beta``.
    """
    s_l, s_g = expert_scores(p_local, score), expert_scores(p_global, score)
    local_wins = s_l > s_g
    lw = local_wins.unsqueeze(1)
    p_e = torch.where(lw, p_local, p_global)
    other = torch.where(lw, p_global, p_local)
    s_e = torch.where(local_wins, s_l, s_g)
    s_o = torch.where(local_wins, s_g, s_l)
    conf, pseudo = p_e.max(1)
    if score == "neg_entropy":  # scores <= 0: compare entropies, H_e / H_o <= 1 flips the ratio
        h_e, h_o = -s_e, -s_o
        weight = torch.where(h_o > 0, h_e / h_o.clamp_min(1e-12), torch.ones_like(h_o))
    else:
        weight = torch.where(s_e > 0, s_o / s_e.clamp_min(1e-12), torch.zeros_like(s_e))
    return FedLabelChoice(
        pseudo=pseudo,
        mask=conf >= beta,
        local_is_expert=local_wins,
        agree=p_local.argmax(1) == p_global.argmax(1),
        weight=weight.clamp(0.0, 1.0),
        other=other,
    )


def consistency_term(logits_student: torch.Tensor, p_other: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(p_other || softmax(logits_student))`` (0 where they are equal)."""
    logq = F.log_softmax(logits_student, dim=1)
    p = p_other.clamp_min(1e-12)
    return (p_other * (p.log() - logq)).sum(1)


def fedlabel_loss(
    logits_strong: torch.Tensor,
    choice: FedLabelChoice,
    *,
    lambda0: float,
    consistency: bool = True,
) -> torch.Tensor:
    """``mean[1(mask) CE(f(x_s), y) + 1(agree) lambda0 (s_o / s_e) KL(p_o || f(x_s))]``."""
    ce = F.cross_entropy(logits_strong, choice.pseudo, reduction="none")
    loss = ce * choice.mask.to(ce.dtype)
    if consistency and lambda0 > 0:
        kl = consistency_term(logits_strong, choice.other)
        loss = loss + lambda0 * choice.weight * choice.agree.to(ce.dtype) * kl
    return loss.mean()


class PseudoLabelStats:
    """Counts over one training call: unlabeled sample views seen, pseudo-labels used (passing
    the threshold) and how many of those equal the hidden true label."""

    def __init__(self) -> None:
        self.seen = 0
        self.count = 0
        self.correct = 0

    def add(self, pseudo: torch.Tensor, mask: torch.Tensor, true: torch.Tensor | None) -> None:
        """Count one batch (``true`` None: the true labels are unknown, nothing is counted)."""
        if true is None:
            return
        mask = mask.detach().cpu().bool()
        self.seen += int(mask.numel())
        self.count += int(mask.sum())
        self.correct += int((pseudo.detach().cpu()[mask] == true.cpu()[mask]).sum())

    def metrics(self) -> dict[str, float]:
        """The counts and the accuracy of the used pseudo-labels (0 when none was used)."""
        if self.seen == 0:
            return {}
        return {
            PSEUDO_LABEL_SEEN: float(self.seen),
            PSEUDO_LABEL_COUNT: float(self.count),
            PSEUDO_LABEL_CORRECT: float(self.correct),
            PSEUDO_LABEL_ACCURACY: self.correct / self.count if self.count else 0.0,
        }
