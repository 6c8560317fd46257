"""Batched evaluation of a classifier on uint8 image tensors (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.data import to_float


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    Parameters
    ----------
    model
        A classifier returning logits.
    x, y
        uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``.
    mean, std
        Per-channel normalisation of the dataset.
    device
        Where to run.
    batch_size
        Inference batch size.

    Returns
    -------
    tuple of float
        ``(loss, accuracy)``; ``(nan, nan)`` for an empty set.
    """
    n = int(y.shape[0])
    if n == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        xb = to_float(x[start : start + batch_size].to(device), mean, std)
        yb = y[start : start + batch_size].to(device)
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return loss_sum / n, correct / n
