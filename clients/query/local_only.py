"""Training of the local-only model ``L_k`` (spec section 5.1 step 1) and batched inference.

``L_k`` starts from the cycle's shared initialisation and trains on the labeled pool only, with
SGD, at most ``max_epochs`` epochs, stopping once the training accuracy (eval mode) reaches
``stop_train_acc``. The reference steps its LR milestone per mini-batch (quirk Q3,
``milestone_unit: iteration``); ``epoch`` counts epochs. The reference measures the stopping accuracy
on its augmented training loader (Q10); fedsim trains without augmentation, so both are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clients.learners.base import SGD
from clients.query import ModelOutputs
from fedsim.data import to_float
from fedsim.errors import invalid
from fedsim.evaluation import batched
from fedsim.models import ClassifierModel

__all__ = ["infer", "train_local_only"]


@torch.no_grad()
def infer(
    model: ClassifierModel,
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device,
    batch_size: int = 512,
) -> ModelOutputs:
    """Log-probabilities and penultimate features of ``model`` on uint8 images ``x`` (eval mode,
    batches of ``batch_size``)."""
    logps, feats, raw = [], [], []
    for _, (logits, emb) in batched(
        model,
        x,
        model.forward_with_features,
        mean=mean,
        std=std,
        device=device,
        batch_size=batch_size,
    ):
        logps.append(F.log_softmax(logits.float(), dim=1).cpu())
        feats.append(emb.float().cpu())
        raw.append(logits.float().cpu())
    if not logps:
        c = model.num_classes
        empty = np.zeros((0, c))
        return ModelOutputs(empty, np.zeros((0, getattr(model, "embedding_dim", 0))), empty)
    return ModelOutputs(
        torch.cat(logps).double().numpy(),
        torch.cat(feats).double().numpy(),
        torch.cat(raw).double().numpy(),
    )


def train_local_only(
    model: ClassifierModel,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device,
    generator: torch.Generator,
    max_epochs: int = 50,
    stop_train_acc: float = 0.99,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-5,
    batch_size: int = 64,
    lr_milestone: int = 37,
    milestone_unit: str = "iteration",
    gamma: float = 0.1,
    infer_batch_size: int = 512,
) -> int:
    """Train ``model`` in place on ``(x, y)``; return the epochs run."""
    if milestone_unit not in ("iteration", "epoch"):
        raise invalid("fal.local_only.milestone_unit", milestone_unit, "iteration, epoch")
    n = int(y.shape[0])
    if n == 0:
        return 0
    model.to(device)
    opt = SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    step = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            if idx.numel() < 2 and n >= 2:  # BatchNorm needs > 1 sample
                continue
            unit = step if milestone_unit == "iteration" else epoch - 1
            opt.lr = lr * (gamma if unit >= lr_milestone else 1.0)
            xb = to_float(x[idx].to(device), mean, std)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        out = infer(model, x, mean, std, device=device, batch_size=infer_batch_size)
        acc = float((out.log_probs.argmax(1) == y.numpy()).mean())
        if acc >= stop_train_acc:
            return epoch
    return max_epochs


def class_histogram(labels: np.ndarray, num_classes: int) -> list[int]:
    """Counts of each class in ``labels``."""
    return [int(v) for v in np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)]
