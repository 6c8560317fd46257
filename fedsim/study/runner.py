"""``fedsim study``: make a study's runs on one engine session, cached and resumable.

Every (cell, seed) is composed and checked before the first run starts. A run already complete
under its config's key is reused; an interrupted one continues from its last checkpoint; a run
another study process is making is left to it (and waited for at the end), so two processes
share a study's work. Progress (runs done/total, ETA) goes to stdout.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from fedsim.errors import RunStopped
from fedsim.study import cache
from fedsim.study.spec import Cell, StudySpec

#: Seconds between looks at runs another process is making.
POLL_SECONDS = 2.0
#: Libraries whose versions a complete run records: a run's numbers are bit-exact for a seed only
#: under the same versions (kernels and default algorithms change between releases).
RECORDED_LIBRARIES = ("torch", "torchvision", "numpy", "scikit-learn", "flwr", "ray")


def library_versions() -> dict[str, str]:
    """Python's and :data:`RECORDED_LIBRARIES`' installed versions ("-" where one is absent)."""
    out = {"python": platform.python_version()}
    for name in RECORDED_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


@dataclass
class PlannedRun:
    """One run of a study: a cell, a seed, its composed config and cache key."""

    cell: Cell
    seed: int
    cfg: DictConfig
    key: str
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.cell.name} seed={self.seed}"

    def info(self) -> dict[str, Any]:
        return {
            "labels": dict(self.cell.labels),
            "seed": self.seed,
            "key": self.key,
            "versions": library_versions(),
        }


def study_dir(spec: StudySpec, root: Path | None = None) -> Path:
    """Where ``spec``'s runs and tables go: ``<output>/<name>`` (relative to ``root``, default
    the current directory)."""
    out = Path(spec.output)
    if not out.is_absolute() and root is not None:
        out = root / out
    return out / spec.name


def runs_root(spec: StudySpec, root: Path | None = None) -> Path:
    """Where runs are cached: ``<output>/runs``, shared by every study with the same ``output``
    (a run two studies both declare, config for config, is made once)."""
    return study_dir(spec, root).parent / "runs"


def archive_dir(spec: StudySpec, root: Path | None = None) -> Path | None:
    """Where ``spec`` archives its complete runs (relative to ``root``), or None."""
    if spec.archive is None:
        return None
    out = Path(spec.archive)
    return root / out if not out.is_absolute() and root is not None else out


def restore(spec: StudySpec, runs: list[PlannedRun], root: Path | None = None) -> int:
    """Unpack into the cache each run of ``runs`` that the cache lacks and ``spec``'s archive
    holds; return how many."""
    archive = archive_dir(spec, root)
    if archive is None:
        return 0
    return sum(cache.restore_run(run.dir, archive) for run in runs)


def plan(spec: StudySpec, *, root: Path | None = None) -> list[PlannedRun]:
    """Compose and check every run of ``spec`` (one :class:`~fedsim.errors.ConfigError` line on
    the first bad one, naming its cell), before any work."""
    from fedsim.config import compose, validate
    from fedsim.errors import ConfigError

    runs_dir = runs_root(spec, root)
    runs = []
    for cell in spec.cells:
        for seed in spec.seeds:
            try:
                cfg = compose([*cell.overrides, f"seed={seed}"])
                cfg.progress = False
                validate(cfg)
            except ConfigError as exc:
                raise ConfigError(f"study {spec.name}, cell {cell.name}: {exc}") from None
            key = cache.run_key(cfg)
            runs.append(PlannedRun(cell, seed, cfg, key, runs_dir / key))
    return runs


def _eta(seconds: list[float], left: int) -> str:
    if not seconds or not left:
        return "-"
    total = sum(seconds) / len(seconds) * left
    return f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"


class Progress:
    """One line per event: ``study NAME: 12/40 done (8 cached) | ... | ETA 14 min``."""

    def __init__(self, spec: StudySpec, total: int, out: TextIO | None = None) -> None:
        self.name, self.total, self.out = spec.name, total, out or sys.stdout
        self.done = self.cached = 0
        self.seconds: list[float] = []

    def line(self, what: str) -> None:
        left = self.total - self.done
        print(
            f"study {self.name}: {self.done}/{self.total} done ({self.cached} cached) | {what} "
            f"| ETA {_eta(self.seconds, left)}",
            file=self.out,
            flush=True,
        )


def _make(run: PlannedRun, execute: Callable[[DictConfig], Any]) -> str | None:
    """Make ``run`` (resuming an interrupted one, unless its local method keeps per-client state:
    then it starts again, so that its metrics equal an uninterrupted run's), then mark it made;
    return why the server stopped it early, if it did (the study goes on)."""
    from fedsim.data.weak_clients import stateful_local_methods
    from fedsim.runner import resume_config

    if cache.can_resume(run.dir) and not stateful_local_methods(run.cfg):
        cfg = resume_config(run.dir, changes=run.cfg)  # e.g. more rounds than were made
    else:
        cache.clear(run.dir)
        cfg = run.cfg.copy()
        cfg.output_dir = str(run.dir)
    try:
        execute(cfg)
    except RunStopped as e:  # e.g. diverged: a result of this config, made again only on request
        cache.mark_done(run.dir, {**run.info(), cache.STOPPED_KEY: str(e)})
        return str(e)
    cache.mark_done(run.dir, run.info())
    return None


def _finish(spec: StudySpec, run: PlannedRun, archive: Path | None) -> None:
    """Apply the post-hoc variants to the complete ``run``, then archive it (if asked)."""
    _posthoc(spec, run)
    if archive is not None:
        cache.archive_run(run.dir, archive)


def _posthoc(spec: StudySpec, run: PlannedRun) -> None:
    """Apply each post-hoc variant of ``spec`` to the finished ``run`` (once)."""
    if not spec.posthoc or cache.stopped_reason(run.dir) is not None:
        return  # a stopped run has no final model to defend
    from fedsim.plugins import POSTHOC_DEFENSE, load_object

    apply = load_object(POSTHOC_DEFENSE)
    for label, defense in spec.posthoc.items():
        name = cache.posthoc_key(label, dict(defense))
        if not (run.dir / name).is_file():
            apply(run.dir, dict(defense), out_name=name)


def run_study(
    spec: StudySpec,
    *,
    root: Path | None = None,
    execute: Callable[[DictConfig], Any] | None = None,
    out: TextIO | None = None,
) -> list[PlannedRun]:
    """Make every run of ``spec`` that is not already made; return the plan.

    Parameters
    ----------
    spec
        The study.
    root
        The directory a relative ``spec.output`` is taken from (default: the current one).
    execute
        Runs one config (default: :meth:`EngineSession.run` on one session for the whole study).
    out
        Where progress lines go (default: stdout).
    """
    runs = plan(spec, root=root)
    progress = Progress(spec, len(runs), out)
    archive = archive_dir(spec, root)
    if restored := restore(spec, runs, root):
        progress.line(f"restored {restored} runs from {archive}")
    if execute is None:
        from fedsim.engine.session import EngineSession, open_session

        session = open_session()
        if session is None:
            with EngineSession(runs[0].cfg.engine) as opened:
                return _run_all(spec, runs, opened.run, progress, archive)
        return _run_all(spec, runs, session.run, progress, archive)
    return _run_all(spec, runs, execute, progress, archive)


def _run_all(
    spec: StudySpec,
    runs: list[PlannedRun],
    execute: Callable[[DictConfig], Any],
    progress: Progress,
    archive: Path | None,
) -> list[PlannedRun]:
    waiting: list[PlannedRun] = []
    for run in runs:
        if cache.is_done(run.dir):
            _finish(spec, run, archive)
            progress.done += 1
            progress.cached += 1
            continue
        if not _try(spec, run, execute, progress, archive):
            waiting.append(run)
    if waiting:
        progress.line(f"waiting for {len(waiting)} runs another process is making")
    while waiting:
        time.sleep(POLL_SECONDS)
        still = []
        for run in waiting:
            if cache.is_done(run.dir):
                _finish(spec, run, archive)
                progress.done += 1
            elif not _try(spec, run, execute, progress, archive):
                still.append(run)
        waiting = still
    progress.line("all runs made")
    return runs


def _try(
    spec: StudySpec,
    run: PlannedRun,
    execute: Callable[[DictConfig], Any],
    progress: Progress,
    archive: Path | None,
) -> bool:
    """Claim and make ``run``; False if another live process holds it."""
    claim = cache.try_claim(run.dir.with_suffix(".lock"))
    if claim is None:
        return False
    try:
        if not cache.is_done(run.dir):  # made meanwhile by the process that held it
            progress.line(f"running {run.name}")
            start = time.perf_counter()
            if (stopped := _make(run, execute)) is not None:
                progress.line(f"stopped early: {run.name}: {stopped}")
            progress.seconds.append(time.perf_counter() - start)
        _finish(spec, run, archive)
    finally:
        claim.release()
    progress.done += 1
    return True
