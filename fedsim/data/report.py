"""Partition outputs: per-client label histogram as CSV and as a heatmap PNG."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsim.constants import PARTITION_CSV, PARTITION_PNG

__all__ = ["label_histogram", "write_partition_heatmap", "write_partition_report"]

# Annotate cells with their counts only when the grid is this small.
_ANNOTATE_MAX_CLIENTS = 30
_ANNOTATE_MAX_CLASSES = 20


def label_histogram(
    labels: np.ndarray, partitions: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Count the labels of each client.

    Parameters
    ----------
    labels
        1-D integer labels ``0 .. num_classes - 1``.
    partitions
        One index array into ``labels`` per client.
    num_classes
        Number of classes (columns).

    Returns
    -------
    numpy.ndarray
        ``int64`` array ``[num_clients, num_classes]`` of counts.
    """
    labels = np.asarray(labels)
    hist = np.zeros((len(partitions), num_classes), dtype=np.int64)
    for i, part in enumerate(partitions):
        hist[i] = np.bincount(labels[np.asarray(part, dtype=np.int64)], minlength=num_classes)[
            :num_classes
        ]
    return hist


def write_partition_report(
    run_dir: Path,
    labels: np.ndarray,
    partitions: Sequence[np.ndarray],
    num_classes: int,
    *,
    heatmap: bool = True,
) -> np.ndarray:
    """Write the label histogram of a partition to ``run_dir``.

    Writes :data:`~fedsim.constants.PARTITION_CSV` (header ``client,0,...,C-1,total``, one row
    per client) and :data:`~fedsim.constants.PARTITION_PNG`, a heatmap with clients on the y axis
    and classes on the x axis. Counts are printed in the cells for small grids only; the figure
    height is capped so that 1000 clients still give a readable image.

    Parameters
    ----------
    run_dir
        Output folder (created if missing).
    labels, partitions, num_classes
        As for :func:`label_histogram`.
    heatmap
        Also draw the PNG now (else call :func:`write_partition_heatmap` later).

    Returns
    -------
    numpy.ndarray
        The histogram, as :func:`label_histogram` returns it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    hist = label_histogram(labels, partitions, num_classes)

    with open(run_dir / PARTITION_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["client", *range(num_classes), "total"])
        for i, row in enumerate(hist):
            writer.writerow([i, *row.tolist(), int(row.sum())])

    if heatmap:
        write_partition_heatmap(run_dir, hist)
    return hist


def write_partition_heatmap(run_dir: Path, hist: np.ndarray) -> None:
    """Draw the histogram ``hist`` (clients x classes) to :data:`~fedsim.constants.PARTITION_PNG`
    in ``run_dir``."""
    _heatmap(hist, Path(run_dir) / PARTITION_PNG)


def _heatmap(hist: np.ndarray, path: Path) -> None:
    """Draw ``hist`` as a heatmap with the Agg renderer (no pyplot global state)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    k, c = hist.shape
    width = min(max(6.0, 0.45 * c + 2.5), 18.0)
    height = min(max(3.0, 0.32 * k + 1.5), 14.0)
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(hist, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="samples")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(f"Label distribution over {k} clients ({int(hist.sum())} samples)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(c, 20), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(k, 25), integer=True))
    if k <= _ANNOTATE_MAX_CLIENTS and c <= _ANNOTATE_MAX_CLASSES:
        threshold = hist.max() / 2 if hist.size else 0
        for i in range(k):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    str(hist[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if hist[i, j] > threshold else "white",
                )
    fig.tight_layout()
    fig.savefig(path)
