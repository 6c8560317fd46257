"""Checkpoints of the global model and the strategy's state, written atomically."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from fedsim.constants import CHECKPOINT_DIR

_NAME = re.compile(r"^round_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    """Where the checkpoint of ``server_round`` lives."""
    return Path(run_dir) / CHECKPOINT_DIR / f"round_{server_round:05d}.pt"


def save_checkpoint(run_dir: Path, server_round: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plain tensors, arrays and scalars) for ``server_round`` atomically."""
    path = checkpoint_path(run_dir, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"round": server_round, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the highest round in ``run_dir``, or None."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    return torch.load(path, map_location="cpu", weights_only=False)
