"""Helpers shared by the weak-supervision learners: several optimizers as one, a module's weights
in the client state, the cumulative-epoch counter, and image augmentation on uint8 batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

EPOCHS_KEY = "epochs_done"  # cumulative local epochs of this client over its participations


class Optimizers:
    """Several optimizers stepped together (e.g. the model's and a local peer network's)."""

    def __init__(self, optimizers: Iterable[Any]) -> None:
        self.optimizers = list(optimizers)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def save_module(state: dict[str, Any], prefix: str, module: nn.Module) -> None:
    """Put ``module``'s state dict into ``state`` as numpy arrays under ``prefix``."""
    for k, v in module.state_dict().items():
        state[f"{prefix}{k}"] = v.detach().cpu().numpy().copy()


def load_module(state: dict[str, Any], prefix: str, module: nn.Module) -> bool:
    """Load ``module`` from ``state`` (saved by :func:`save_module`); False when absent."""
    keys = list(module.state_dict())
    if not keys or f"{prefix}{keys[0]}" not in state:
        return False
    sd = {k: torch.as_tensor(np.asarray(state[f"{prefix}{k}"])) for k in keys}
    module.load_state_dict(sd)
    return True


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule that can (uses the seeded global torch generator)."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if m is not module and callable(reset):
            reset()


def table(state: dict[str, Any], key: str, init: torch.Tensor) -> torch.Tensor:
    """A per-sample table from ``state`` (``init`` when absent or of another shape)."""
    if key in state:
        arr = torch.as_tensor(np.asarray(state[key]))
        if tuple(arr.shape) == tuple(init.shape):
            return arr.clone()
    return init.clone()


# ---- augmentation on uint8 NCHW batches ---------------------------------------------------------
def weak_augment(x: torch.Tensor, *, flip: bool = True, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip (optional) and a random crop after ``pad`` reflect padding.

    Uses the global torch generator (seeded per client and round by the ClientApp).
    """
    n, _, h, w = x.shape
    out = x
    if flip:
        mask = torch.rand(n) < 0.5
        if mask.any():
            out = out.clone()
            out[mask] = out[mask].flip(-1)
    if pad > 0:
        padded = torch.nn.functional.pad(out.float(), (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,))
        dx = torch.randint(0, 2 * pad + 1, (n,))
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        bidx = torch.arange(n).view(n, 1, 1, 1)
        cidx = torch.arange(x.shape[1]).view(1, -1, 1, 1)
        out = padded[bidx, cidx, rows, cols].to(torch.uint8)
    return out


_RANDAUGMENT: dict[tuple[int, int], Any] = {}


def strong_augment(
    x: torch.Tensor,
    *,
    num_ops: int = 2,
    magnitude: int = 10,
    flip: bool = True,
    pad: int = 2,
    per_image: bool = True,
) -> torch.Tensor:
    """The weak augmentation followed by torchvision's RandAugment, drawn per image (or once
    for the whole batch with ``per_image=False``)."""
    from torchvision.transforms import RandAugment

    key = (num_ops, magnitude)
    if key not in _RANDAUGMENT:
        _RANDAUGMENT[key] = RandAugment(num_ops=num_ops, magnitude=magnitude)
    ra = _RANDAUGMENT[key]
    base = weak_augment(x, flip=flip, pad=pad)
    if not per_image:
        return ra(base)
    return torch.stack([ra(img) for img in base])
