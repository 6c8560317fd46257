"""Run outputs: atomic writes, per-round metrics, TensorBoard, summary and the accuracy plot.

A run directory holds :data:`~fedsim.constants.METRICS_FILE` (one JSON line per round),
TensorBoard event files under :data:`~fedsim.constants.TENSORBOARD_DIR`,
:data:`~fedsim.constants.SUMMARY_FILE` and :data:`~fedsim.constants.ACCURACY_PNG`.
Whole files are always written atomically, so a killed process never leaves a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from fedsim.constants import (
    ACCURACY_PNG,
    BEST_ACCURACY,
    EVAL_ACCURACY,
    EVAL_LOSS,
    FAILURES,
    FINAL_ACCURACY,
    FINAL_LOSS,
    METRICS_FILE,
    ROUND,
    ROUNDS_DONE,
    SEED,
    SUMMARY_FILE,
    TB_TAGS,
    TENSORBOARD_DIR,
    TOTAL_FAILURES,
    TOTAL_SECONDS,
    TRAIN_LOSS,
    WALL_SECONDS,
)


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    Parameters
    ----------
    path
        The final destination. Its parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_atomic(path: Path, write: Callable[[IO[str]], object]) -> None:
    """Write text through ``write`` into a temporary file, fsync it, then rename onto ``path``."""
    with _atomic_target(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Parameters
    ----------
    path
        Destination file.
    text
        The full file content.
    """
    _write_atomic(path, lambda fh: fh.write(text))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Parameters
    ----------
    path
        Destination file.
    obj
        A JSON-serialisable object.
    """
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _parse_metrics(text: str) -> list[dict]:
    """Parse JSON lines, skipping blank lines and an unparsable trailing partial line."""
    lines = text.split("\n")
    records: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a partial last line left by a killed process
                break
            raise
    return records


def read_metrics(run_dir: Path) -> list[dict]:
    """Read the per-round records of a run.

    Parameters
    ----------
    run_dir
        The run directory.

    Returns
    -------
    list of dict
        One record per line of :data:`METRICS_FILE`; empty if the file does not exist. A trailing
        partial line (left by a killed process) is ignored.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return _parse_metrics(path.read_text(encoding="utf-8"))


def _finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (bools excluded)."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class RunWriter:
    """Append per-round records to :data:`METRICS_FILE` and TensorBoard.

    Parameters
    ----------
    run_dir
        The run directory (created by :meth:`open`).
    tensorboard
        Whether to also write TensorBoard scalars under :data:`TENSORBOARD_DIR`.

    Examples
    --------
    >>> with RunWriter(run_dir).open() as writer:  # doctest: +SKIP
    ...     writer.log_round({"round": 1, "eval_accuracy": 0.5})
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.tensorboard = tensorboard
        self._fh: IO[str] | None = None
        self._tb: Any = None

    @property
    def metrics_path(self) -> Path:
        """Path of the metrics file."""
        return self.run_dir / METRICS_FILE

    def open(self, *, resume_after_round: int | None = None) -> RunWriter:
        """Create the run directory and open the metrics file and TensorBoard writer.

        Parameters
        ----------
        resume_after_round
            If given, keep only the records with ``round <= resume_after_round`` (later ones will be
            recomputed) and purge TensorBoard events after that step. Otherwise start fresh.

        Returns
        -------
        RunWriter
            ``self``, so that ``with RunWriter(d).open() as w:`` works.
        """
        if self._fh is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        purge_step: int | None = None
        if resume_after_round is not None:
            kept = [r for r in read_metrics(self.run_dir) if r.get(ROUND, 0) <= resume_after_round]
            write_text_atomic(
                self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
            )
            self._fh = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
            purge_step = resume_after_round + 1
        else:
            self._fh = open(self.metrics_path, "w", encoding="utf-8")  # noqa: SIM115
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step
            )
        return self

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Append one round's record (durably) and its numeric metrics to TensorBoard.

        Parameters
        ----------
        record
            A JSON-serialisable mapping that contains :data:`ROUND`.
        """
        if self._fh is None:
            raise RuntimeError("RunWriter.log_round called before open()")
        self._fh.write(json.dumps(dict(record), sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._tb is not None:
            step = int(record[ROUND])
            for key, tag in TB_TAGS.items():
                value = record.get(key)
                if value is not None and _finite_number(value):
                    self._tb.add_scalar(tag, float(value), global_step=step)
            self._tb.flush()

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """Write extra TensorBoard scalars ``{tag: value}`` at ``step`` (non-finite ones skipped)."""
        if self._tb is None:
            return
        for tag, value in scalars.items():
            if value is not None and _finite_number(value):
                self._tb.add_scalar(tag, float(value), global_step=int(step))
        self._tb.flush()

    def close(self) -> None:
        """Close the metrics file and the TensorBoard writer (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> RunWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_summary(
    run_dir: Path,
    metrics: list[dict],
    *,
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Compute the run summary from its per-round records and write :data:`SUMMARY_FILE`.

    Parameters
    ----------
    run_dir
        The run directory.
    metrics
        The per-round records, in round order.
    seed
        The run's seed.
    extra
        More entries to merge into the summary (they override computed ones).

    Returns
    -------
    dict
        The summary: final/best eval accuracy, final eval loss, rounds done, wall seconds,
        total failures and seed. Missing values are ``None``.
    """
    evals = [r for r in metrics if r.get(EVAL_ACCURACY) is not None]
    last_eval = evals[-1] if evals else {}
    summary: dict[str, Any] = {
        FINAL_ACCURACY: last_eval.get(EVAL_ACCURACY),
        FINAL_LOSS: last_eval.get(EVAL_LOSS),
        BEST_ACCURACY: max((r[EVAL_ACCURACY] for r in evals), default=None),
        ROUNDS_DONE: metrics[-1].get(ROUND) if metrics else 0,
        TOTAL_SECONDS: metrics[-1].get(WALL_SECONDS) if metrics else None,
        TOTAL_FAILURES: sum(int(r.get(FAILURES) or 0) for r in metrics),
        SEED: seed,
    }
    if extra:
        summary.update(extra)
    write_json_atomic(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


def plot_accuracy(run_dir: Path, metrics: list[dict]) -> Path:
    """Plot eval accuracy per round (and train loss on a second axis) to :data:`ACCURACY_PNG`.

    Parameters
    ----------
    run_dir
        The run directory.
    metrics
        The per-round records.

    Returns
    -------
    Path
        The written PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [(r[ROUND], r[EVAL_ACCURACY]) for r in metrics if _finite_number(r.get(EVAL_ACCURACY))]
    loss = [(r[ROUND], r[TRAIN_LOSS]) for r in metrics if _finite_number(r.get(TRAIN_LOSS))]
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        handles = []
        if acc:
            handles += ax.plot(
                *zip(*acc, strict=True), "o-", color="tab:blue", label="eval accuracy"
            )
        ax.set_xlabel("round")
        ax.set_ylabel("eval accuracy")
        if loss:
            ax2 = ax.twinx()
            handles += ax2.plot(
                *zip(*loss, strict=True), "s--", color="tab:orange", label="train loss"
            )
            ax2.set_ylabel("train loss")
        if handles:
            ax.legend(handles=handles, loc="best")
        ax.set_title(Path(run_dir).name)
        fig.tight_layout()
        out = Path(run_dir) / ACCURACY_PNG
        with _atomic_target(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out
