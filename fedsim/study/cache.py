"""A study's run cache: each run lives under the hash of its fully resolved config, and a run
being made is claimed by one process at a time (a lock file, taken over when its holder died).

Layout under a study's ``output`` (default ``outputs/studies``)::

    runs/<key>/            the run directory (config.yaml, metrics.jsonl, summary.json, ...),
                           shared by the studies that declare the same run
    runs/<key>/study.json  written last: the run is complete (cell labels, seed, key)
    runs/<key>.lock        held while a process makes the run (pid, host)
    <study>/               the study's tables (runs.csv, rounds.csv, selections.csv)

A study with an ``archive`` folder (the results studies: ``docs/results/runs``) also keeps each
complete run's records there as ``<key>.tar.gz`` (config, metrics, summary and post-hoc files:
no checkpoints), committed with the tables. A fresh checkout restores them into the cache, so
its report regenerates, and an unfinished study resumes, without making those runs again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
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
#: The key of :data:`DONE_FILE` that records why the server stopped a run early.
STOPPED_KEY = "stopped"


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
    """Whether the run in ``run_dir`` is made: complete, or stopped early by the server
    (:func:`stopped_reason`)."""
    if not (run_dir / DONE_FILE).is_file():
        return False
    return (run_dir / C.SUMMARY_FILE).is_file() or stopped_reason(run_dir) is not None


def stopped_reason(run_dir: Path) -> str | None:
    """Why the server stopped the made run in ``run_dir`` early (e.g. every sampled client sent
    NaN weights: the training diverged), or None. A stopped run is a result of its config, kept
    like a complete one; delete its directory (and archive) to make it again."""
    done = run_dir / DONE_FILE
    if not done.is_file():
        return None
    reason = json.loads(done.read_text()).get(STOPPED_KEY)
    return str(reason) if reason else None


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


#: Suffixes of the run files an archive keeps (top level of the run directory only).
ARCHIVED_SUFFIXES = (".json", ".jsonl", ".csv", ".yaml")


def archive_path(run_dir: Path, archive: Path) -> Path:
    """The archive file of the run in ``run_dir``: ``<archive>/<key>.tar.gz``."""
    return archive / f"{run_dir.name}.tar.gz"


def _archived_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.is_file() and p.suffix in ARCHIVED_SUFFIXES)


def _members(path: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        return sorted(tar.getnames())


def archive_run(run_dir: Path, archive: Path) -> bool:
    """Write the complete run in ``run_dir`` to its archive file (byte-identical for the same
    files: no timestamps), unless that file already holds the same files; True if written."""
    if not is_done(run_dir):
        raise ValueError(f"run {run_dir} is not complete: nothing to archive")
    files = _archived_files(run_dir)
    target = archive_path(run_dir, archive)
    if target.is_file() and _members(target) == [p.name for p in files]:
        return False
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            info = tarfile.TarInfo(path.name)
            data = path.read_bytes()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    archive.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, target)
    return True


def restore_run(run_dir: Path, archive: Path) -> bool:
    """Unpack the archived run of ``run_dir`` into it when the cache lacks a complete run there
    (what an interrupted run left is replaced); True if restored."""
    source = archive_path(run_dir, archive)
    if is_done(run_dir) or not source.is_file():
        return False
    clear(run_dir)
    tmp = run_dir.with_name(f"{run_dir.name}.restoring{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(source, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or Path(member.name).name != member.name:
                raise ValueError(f"{source}: unexpected member {member.name!r}")
            extracted = tar.extractfile(member)
            assert extracted is not None
            (tmp / member.name).write_bytes(extracted.read())
    try:
        os.replace(tmp, run_dir)
    except OSError:  # another process restored or made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_done(run_dir):
            raise
    return True
