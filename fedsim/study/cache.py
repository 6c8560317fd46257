"""A study's run cache: each run lives under the hash of its fully resolved config, and a run
being made is claimed by one process at a time (a lock file, taken over when its holder died).

Layout under a study's ``output`` (default ``outputs/studies``)::

    runs/<key>/            the run directory (config.yaml, metrics.jsonl, summary.json, ...),
                           shared by the studies that declare the same run
    runs/<key>/study.json  written last: the run is complete (cell labels, seed, key)
    runs/<key>.lock        held while a process makes the run (pid, host)
    <study>/               the study's tables (runs.csv, rounds.csv, selections.csv)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsim import constants as C
from fedsim.outputs import write_json_atomic

#: Config keys that do not change a run's results (display, where it is written).
VOLATILE_KEYS = ("output_dir", "resume", "progress", "verbose")
DONE_FILE = "study.json"


def run_key(cfg: DictConfig) -> str:
    """The cache key of a run: a hash of its fully resolved config (less :data:`VOLATILE_KEYS`);
    any other change gives another key, so the run is made again.

    The ``engine`` group says how fast a run goes, not what it computes (both engines give
    identical metrics, a test checks it), so it is left out, and a new engine setting does not
    make every cached run again. The exception is ``engine.vectorize=on``, whose batched pass
    equals the per-client loop only within float rounding: it is part of the key.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    for key in VOLATILE_KEYS:
        plain.pop(key, None)
    engine = plain.pop("engine", None) or {}
    if isinstance(engine, dict) and engine.get("vectorize") == "on":
        plain["engine.vectorize"] = "on"
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def posthoc_key(label: str, defense: dict[str, Any]) -> str:
    """The file a post-hoc variant writes in its run directory (changes with its parameters)."""
    digest = hashlib.sha256(json.dumps(defense, sort_keys=True).encode()).hexdigest()[:8]
    return f"posthoc_{label}_{digest}.json"


@dataclass
class Claim:
    """A run's lock file; :meth:`release` removes it."""

    path: Path

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def holder(lock: Path) -> dict[str, Any] | None:
    """Who holds ``lock`` (``{"pid", "host", "since"}``), or None when it is free or stale (its
    holder on this host has died; a holder on another host is trusted)."""
    try:
        info = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        # being written by its creator right now: held
        return {"pid": -1, "host": "?", "since": time.time()}
    if info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", -1))):
        return None
    return dict(info)


def try_claim(lock: Path) -> Claim | None:
    """Take ``lock`` for this process; None if a live process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if holder(lock) is not None:
                return None
            lock.unlink(missing_ok=True)  # stale: its holder died; try once more
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
        return Claim(lock)
    return None


def is_done(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` is complete."""
    return (run_dir / DONE_FILE).is_file() and (run_dir / C.SUMMARY_FILE).is_file()


def can_resume(run_dir: Path) -> bool:
    """Whether an interrupted run left a checkpoint to continue from."""
    from fedsim.checkpoint import latest_checkpoint

    return (run_dir / C.CONFIG_FILE).is_file() and latest_checkpoint(run_dir) is not None


def mark_done(run_dir: Path, info: dict[str, Any]) -> None:
    """Record that the run in ``run_dir`` is complete (the last file written)."""
    write_json_atomic(run_dir / DONE_FILE, info)


def clear(run_dir: Path) -> None:
    """Remove what an interrupted run left without a checkpoint."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
