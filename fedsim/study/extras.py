"""Report sections any study can name in ``reports`` (registered in
:data:`fedsim.study.report.STUDY_REPORTS`)."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from fedsim import constants as C
from fedsim.study.report import STUDY_REPORTS
from fedsim.study.runner import PlannedRun
from fedsim.study.spec import StudySpec
from fedsim.study.tables import Row

QUALITY_COLUMNS = ("noise_rate", "mean_candidates", "coverage")


def mean_quality(path: Path) -> dict[str, float]:
    """The mean over clients of a run's ``label_quality.csv`` columns :data:`QUALITY_COLUMNS`
    (labeled share: labeled / n summed over clients)."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out = {k: statistics.fmean(float(r[k]) for r in rows) for k in QUALITY_COLUMNS}
    out["labeled_share"] = sum(int(r["labeled"]) for r in rows) / sum(int(r["n"]) for r in rows)
    return out


@STUDY_REPORTS.register("label_quality")
def label_quality(
    spec: StudySpec, runs: list[PlannedRun], rows: list[Row], rounds: list[Row], where: Path
) -> str:
    """The realised label quality per value of the study's first axis: the clients' mean noise
    rate, candidate-set size, coverage of the true label and labeled share, averaged over runs."""
    axis = spec.axes[0]
    per: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        path = run.dir / C.LABEL_QUALITY_CSV
        if path.is_file():
            per.setdefault(run.cell.label(axis), []).append(mean_quality(path))
    if not per:
        return ""
    cols = (*QUALITY_COLUMNS, "labeled_share")
    lines = [
        "**Realised label quality** (mean over clients and runs, from `label_quality.csv`)",
        "",
        f"| {axis} | " + " | ".join(cols) + " |",
        "|" + " --- |" * (len(cols) + 1),
    ]
    for label, qs in per.items():
        vals = [statistics.fmean(q[c] for q in qs) for c in cols]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)
