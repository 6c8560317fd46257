"""Batched inference of a classifier on uint8 image tensors: the one loop every evaluation, query
strategy, backdoor metric and defense goes through (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.data import to_float

T = TypeVar("T")


@torch.no_grad()
def batched(
    model: nn.Module,
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], T],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 1024,
) -> Iterator[tuple[int, T]]:
    """Yield ``(start, fn(normalised batch))`` over ``x`` in batches, with ``model`` in eval mode
    and no gradients (its train/eval mode is restored when the loop ends).

    ``fn`` usually calls ``model`` (``model``, ``model.forward_with_features``, a hooked
    forward); it receives each batch normalised with ``mean``/``std`` on ``device``.
    """
    was_training = model.training
    model.eval()
    try:
        for start in range(0, int(x.shape[0]), batch_size):
            yield start, fn(to_float(x[start : start + batch_size].to(device), mean, std))
    finally:
        model.train(was_training)


def predictions(
    model: nn.Module,
    x: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Predicted labels of uint8 images ``x`` (eval mode), on the CPU."""
    out = [
        p
        for _, p in batched(
            model,
            x,
            lambda xb: model(xb).argmax(1).cpu(),
            mean=mean,
            std=std,
            device=device,
            batch_size=batch_size,
        )
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def evaluate_per_class(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 1024,
    num_classes: int,
) -> tuple[float, float, list[float]]:
    """Mean cross-entropy, accuracy and per-class accuracy of ``model`` on ``(x, y)``.

    Returns
    -------
    tuple
        ``(loss, accuracy, per-class accuracy)``; NaN for a class absent from ``y``, and
        ``(nan, nan, [nan, ...])`` for an empty set.
    """
    n = int(y.shape[0])
    if n == 0:
        return float("nan"), float("nan"), [float("nan")] * num_classes
    loss_sum, preds = 0.0, []
    for start, logits in batched(
        model, x, model, mean=mean, std=std, device=device, batch_size=batch_size
    ):
        yb = y[start : start + batch_size].to(device)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        preds.append(logits.argmax(dim=1).cpu())
    p, t = torch.cat(preds).numpy(), y.numpy()
    per_class = [
        float((p[t == c] == c).mean()) if (t == c).any() else float("nan")
        for c in range(num_classes)
    ]
    return loss_sum / n, float((p == t).mean()), per_class


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
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``; ``(nan, nan)`` when empty.

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
    """
    num_classes = int(y.max()) + 1 if y.numel() else 1
    loss, acc, _ = evaluate_per_class(
        model,
        x,
        y,
        mean=mean,
        std=std,
        device=device,
        batch_size=batch_size,
        num_classes=num_classes,
    )
    return loss, acc
