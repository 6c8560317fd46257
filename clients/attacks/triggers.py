"""Backdoor triggers as pure functions on uint8 images.

A trigger is a boolean ``[H, W]`` mask and a pixel value; :func:`stamp` writes the value into every
channel of the masked pixels. DBA (Xie et al., 2020) splits the global trigger into parts, one per
attacker (by its index among the malicious clients); the test always uses the full trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedsim.errors import ConfigError, invalid

TRIGGER_SHAPES = ("square", "plus")


def trigger_mask(shape: str, size: int, position: Sequence[int], image_size: int) -> np.ndarray:
    """The global trigger as a boolean ``[image_size, image_size]`` mask.

    Parameters
    ----------
    shape
        ``square``: a ``size x size`` patch whose top-left pixel is ``position``; ``plus``: a
        "+" of bar length ``size`` inside that same box, centred in it (FLAIN's MNIST DBA trigger:
        rows/cols 23-27, centre 25).
    size
        Side of the trigger's bounding box in pixels.
    position
        ``(row, col)`` of the bounding box's top-left pixel.
    image_size
        Height and width of the images.
    """
    if shape not in TRIGGER_SHAPES:
        raise invalid("attack.trigger", shape, " or ".join(TRIGGER_SHAPES))
    r, c = int(position[0]), int(position[1])
    if size < 1 or r < 0 or c < 0 or r + size > image_size or c + size > image_size:
        raise ConfigError(
            f"invalid trigger: a {size}x{size} box at (row {r}, col {c}) does not fit "
            f"{image_size}x{image_size} images"
        )
    mask = np.zeros((image_size, image_size), dtype=bool)
    if shape == "square":
        mask[r : r + size, c : c + size] = True
    else:
        mid = size // 2
        mask[r : r + size, c + mid] = True  # vertical bar
        mask[r + mid, c : c + size] = True  # horizontal bar
    return mask


def trigger_part(
    mask: np.ndarray, shape: str, size: int, position: Sequence[int], num_parts: int, part: int
) -> np.ndarray:
    """Part ``part`` (of ``num_parts``) of a global trigger, for DBA.

    A ``plus`` split in 2 gives the vertical bar (part 0, even attackers) and the horizontal bar
    (part 1, odd attackers), as FLAIN's MNIST DBA. Otherwise the trigger's rows are cut into
    ``num_parts`` contiguous bands (the DBA paper's local horizontal bars).
    """
    if num_parts < 1:
        raise invalid("attack.num_parts", num_parts, "an integer >= 1")
    part %= num_parts
    if num_parts == 1:
        return mask.copy()
    r, c = int(position[0]), int(position[1])
    out = np.zeros_like(mask)
    if shape == "plus" and num_parts == 2:
        mid = size // 2
        if part == 0:
            out[r : r + size, c + mid] = True
        else:
            out[r + mid, c : c + size] = True
        return out
    bands = np.array_split(np.arange(r, r + size), num_parts)
    if len(bands[part]) == 0:
        raise invalid("attack.num_parts", num_parts, f"at most trigger_size={size} parts")
    rows = bands[part]
    out[rows] = mask[rows]
    return out


def stamp(x: torch.Tensor, mask: np.ndarray, value: int) -> torch.Tensor:
    """A copy of uint8 images ``x`` ``[N, C, H, W]`` with ``value`` written at ``mask`` (all
    channels)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"stamp expects uint8 images, got {x.dtype}")
    out = x.clone()
    m = torch.from_numpy(mask)
    out[..., m] = int(value)
    return out
