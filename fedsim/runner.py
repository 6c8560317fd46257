"""``run(cfg)``: one federated run, as a plain function (the CLI only wraps it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from fedsim import constants as C
from fedsim.config import validate
from fedsim.errors import ConfigError, RunStopped
from fedsim.outputs import write_text_atomic

if TYPE_CHECKING:
    from fedsim.engine.session import EngineSession

#: Keys that may change when a run is resumed (everything else must match the saved config).
RESUMABLE_KEYS = (
    "rounds",
    "progress",
    "verbose",
    "tensorboard",
    "device",
    "round_timeout",
    "checkpoint_every",
    "engine",
    "min_clients",
    "too_few_replies",
    "round_retries",
    "faults",
)


def resume_config(run_dir: Path, changes: DictConfig | None = None) -> DictConfig:
    """The saved config of ``run_dir``, with the allowed ``changes`` applied.

    Raises
    ------
    ConfigError
        If ``run_dir`` holds no fedsim config, or ``changes`` touches a key that cannot change.
    """
    path = Path(run_dir) / C.CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: no {C.CONFIG_FILE} there (not a fedsim run directory)"
        )
    saved = OmegaConf.load(path)
    assert isinstance(saved, DictConfig)
    if changes is not None:
        for key in RESUMABLE_KEYS:
            if key in changes:
                saved[key] = changes[key]
    saved.resume = str(run_dir)
    saved.output_dir = str(run_dir)
    return saved


def prepare(cfg: DictConfig) -> None:
    """Everything that can fail on bad input, before any output is written."""
    from fedsim.federation import build_federation
    from fedsim.models import model_for

    validate(cfg)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    if not cfg.get("output_dir"):
        raise ConfigError(
            "output_dir is not set: pass output_dir=PATH (the CLI sets Hydra's run dir)"
        )
    fed = build_federation(cfg)  # loads the data once; refuses more clients than samples
    model_for(cfg, fed.data)  # refuses a model the data's shape cannot feed
    from fedsim.config import check_data

    # The strategy and the learners were built once by their plugins' config checks (validate).
    check_data(cfg, fed.data)  # the plugins' checks against the data (attack, components)


def run(cfg: DictConfig, *, session: EngineSession | None = None) -> dict[str, Any]:
    """Run one simulated federation described by ``cfg``; return its summary.

    Writes the resolved config and the partition histogram, then lets the configured engine
    drive the Flower apps; the partition heatmap follows when the engine returns (or fails).
    The ServerApp writes metrics, checkpoints, TensorBoard events, the accuracy plot and
    ``summary.json`` into ``cfg.output_dir``.

    Parameters
    ----------
    cfg
        A composed config with ``output_dir`` set.
    session
        The :class:`~fedsim.engine.session.EngineSession` to run on; None: the session open in
        this process (see :func:`fedsim.engine.session.open_session`), else a one-run session
        (Ray starts for this run and stops when it ends).
    """
    from fedsim.config import check_simulation_device, validate_engine
    from fedsim.engine import ENGINES
    from fedsim.engine.session import EngineSession, open_session

    if not cfg.get("output_dir"):
        raise ConfigError(
            "output_dir is not set: pass output_dir=PATH (the CLI sets Hydra's run dir)"
        )
    validate_engine(cfg)  # what starting the engine reads (no torch import: milliseconds)
    check_simulation_device(cfg)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    session = session or open_session()
    if session is None:
        with EngineSession(cfg.engine, verbose=bool(cfg.get("verbose"))) as one_run:
            return run(cfg, session=one_run)
    engine = ENGINES.get(str(cfg.engine.name))
    # Start Ray and the workers first, then validate the rest and load the data while the
    # workers import their libraries (seconds). Bad input is still reported before any output is
    # written. Doing both at once, in two threads, was no faster: the checker's torch import
    # held the GIL that ray.init needs, so Ray came up in 3.2-4.8 s instead of about 2 s, and
    # round 1 ended no sooner (8.9 s, against 9.3 s; means of 6).
    handle = session.begin(cfg)
    failed = True
    try:
        _validate_and_load(cfg)
        summary = _run(cfg, engine, handle)
        failed = False
        return summary
    finally:
        session.end(handle, failed=failed)


def _validate_and_load(cfg: DictConfig) -> None:
    from fedsim.federation import build_federation

    validate(cfg)
    build_federation(cfg)  # cached: prepare() in _run finds it built


def _run(cfg: DictConfig, engine: Any, handle: Any) -> dict[str, Any]:
    from fedsim.data import write_partition_heatmap, write_partition_report
    from fedsim.federation import build_federation

    prepare(cfg)
    run_dir = Path(cfg.output_dir).resolve()
    cfg.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / C.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    fed = build_federation(cfg)
    labels = fed.data.train_y.numpy()
    hist = write_partition_report(
        run_dir, labels, list(fed.partitions), fed.data.num_classes, heatmap=False
    )
    from fedsim.data.weak_clients import write_label_quality

    write_label_quality(run_dir / C.LABEL_QUALITY_CSV, cfg, fed.weak, fed.weak_groups)
    if not cfg.get("verbose"):
        for name in ("flwr", "alembic", "ray"):
            logging.getLogger(name).setLevel(logging.WARNING)

    if cfg.progress:
        from fedsim.config import config_summary

        print(f"fedsim: {config_summary(cfg)}\nfedsim: run dir {run_dir}", flush=True)
    try:
        if handle is not None:
            engine(cfg, handle)
        else:
            engine(cfg)
    finally:
        # The heatmap is drawn once the rounds end (the CSV above has the same counts): at
        # start-up matplotlib's import and the drawing (about 1 CPU-s) would compete with the
        # workers' start-up, and the accuracy plot imports matplotlib at the end anyway.
        write_partition_heatmap(run_dir, hist)
    summary_path = run_dir / C.SUMMARY_FILE
    stopped = run_dir / C.STOPPED_FILE
    if stopped.is_file():  # the server stopped it (the engine may have swallowed the exception)
        raise RunStopped(stopped.read_text().strip())
    if not summary_path.is_file():
        raise RuntimeError(f"the run ended without writing {summary_path}")
    import json

    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary
