"""Writing a study's results: ``runs.csv``, ``rounds.csv`` and (FAL studies) ``stages.csv`` in the
study directory, then the Markdown document (``doc``: header with command, scale, seeds and commit;
the tables; the plots) whose hand-written findings, below :data:`FINDINGS_MARKER`, are kept when it
is regenerated."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedsim.outputs import write_text_atomic
from fedsim.plugins import load_plugins
from fedsim.registry import Registry
from fedsim.study import cache
from fedsim.study.runner import PlannedRun, study_dir
from fedsim.study.spec import Plot, StudySpec
from fedsim.study.tables import (
    Row,
    apply_selections,
    axis_order,
    collect,
    markdown_table,
    metric_value,
    write_csv,
)

#: Everything below this line of a study's document is kept when the document is regenerated.
FINDINGS_MARKER = "<!-- findings: hand-written below this line, kept on regeneration -->"

ReportFn = Callable[[StudySpec, list[PlannedRun], list[Row], list[Row], Path], str]
#: Extra report sections a study names in ``reports`` (a function of the spec, the runs, the
#: run rows, the round rows and the document's directory, returning Markdown).
#: Plugins register into it (``fedsim.plugins`` entry points), so a lookup loads them first.
STUDY_REPORTS: Registry[ReportFn] = Registry("study report", loader=load_plugins)


def _commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: Panels per row of a faceted plot; more facets wrap onto further rows.
MAX_PANELS_PER_ROW = 5


def plot(spec: StudySpec, p: Plot, rows: list[Row], order: dict, path: Path) -> Path | None:
    """Draw plot ``p`` (the mean over seeds per ``x``) of ``rows`` (round or stage rows, as
    ``p.records`` says) into ``path``; None when no row has the metric against ``x``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facets = [None]
    if p.facet:
        facets = [f for f in order[p.facet] if any(r.get(p.facet) == f for r in rows)]
    if not rows or not facets:
        return None
    ncols = min(len(facets), MAX_PANELS_PER_ROW)
    nrows = -(-len(facets) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(facets) :]:
        ax.set_visible(False)
    drawn = 0
    for ax, facet in zip(axes, facets, strict=False):
        sub = [r for r in rows if facet is None or r.get(p.facet) == facet]
        for hue in order[p.hue]:
            pts: dict[float, list[float]] = {}
            for r in sub:
                if r.get(p.hue) == hue and p.x in r:
                    v = metric_value(r, p.metric)
                    if math.isfinite(v):
                        pts.setdefault(float(r[p.x]), []).append(v)
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker=".", label=hue)
                drawn += 1
        ax.set_title(f"{p.facet}={facet}" if facet is not None else (p.title or p.metric))
        ax.set_xlabel(p.x)
        ax.set_ylabel(p.metric)
        ax.grid(alpha=0.3)
    if not drawn:  # the metric is in none of the rows: no empty figure
        plt.close(fig)
        return None
    axes[len(facets) - 1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def environments(runs: Sequence[PlannedRun]) -> str:
    """The library versions the complete runs recorded, each set with its run count; runs made
    before versions were recorded are counted apart."""
    found: dict[str, int] = {}
    for run in runs:
        done = run.dir / cache.DONE_FILE
        if not done.is_file():
            continue
        versions = json.loads(done.read_text()).get("versions")
        text = ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "not recorded"
        found[text] = found.get(text, 0) + 1
    return "; ".join(f"{text} ({n} runs)" for text, n in found.items()) or "no run made yet"


#: Characters of a stop reason the report quotes.
REASON_CHARS = 240


def stopped_section(runs: Sequence[PlannedRun]) -> str:
    """The runs the server stopped early (kept as results, left out of every table and plot),
    each with its labels, seed and the start of the reason; empty when there are none."""
    lines = []
    for run in runs:
        reason = cache.stopped_reason(run.dir)
        if reason is None:
            continue
        labels = ", ".join(f"{k}={v}" for k, v in run.cell.labels)
        short = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + " ..."
        lines.append(f"- {labels}, seed {run.seed}: {short}")
    if not lines:
        return ""
    return (
        f"**Stopped early ({len(lines)} {'run' if len(lines) == 1 else 'runs'}).** The server "
        "stopped these runs before their last "
        "round; they count as made (a rerun does not repeat them) and are left out of every "
        "table and plot below, so a cell's n counts only its complete runs.\n\n" + "\n".join(lines)
    )


def _header(spec: StudySpec, runs: Sequence[PlannedRun], made: int, root: Path) -> str:
    stopped = sum(cache.stopped_reason(r.dir) is not None for r in runs)
    lines = [
        f"# Study `{spec.name}`",
        "",
        spec.description.strip(),
        "",
        f"- **Command:** `fedsim study {spec.name}` (regenerates this file; runs are cached by "
        "config hash, so a rerun only makes missing runs)",
        f"- **Scale:** {spec.scale.strip() or 'as configured'}",
        f"- **Seeds:** {', '.join(map(str, spec.seeds))}; **runs:** {made} of {len(runs)} made"
        + (f" ({stopped} more stopped early, listed below)" if stopped else ""),
        f"- **Commit:** `{_commit(root)}`; **libraries:** {environments(runs)}",
        f"- **Common overrides:** `{' '.join(spec.base) or '(none)'}`",
        "- Means with a Student-t 95 % interval over seeds; Δ is the paired difference to the "
        "baseline over the seeds both have, with its 95 % interval and the seeds won.",
    ]
    if spec.select:
        lines.append(
            "- Rows chosen on validation: "
            + "; ".join(
                f"`{s.name}` = the `{s.axis}` of {list(s.among)} with the best mean "
                f"`{s.metric}` ({s.mode})"
                for s in spec.select
            )
        )
    return "\n".join(lines)


def write_report(
    spec: StudySpec, runs: list[PlannedRun], *, root: Path, doc: Path | None = None
) -> str:
    """Write the tidy tables and (when ``spec.doc`` or ``doc`` is set) the document; return its
    Markdown."""
    out_dir = study_dir(spec, root)
    run_rows, round_rows, stage_rows = collect(spec, runs)
    lead = [*spec.axes, "seed", "variant", "key"]
    write_csv(out_dir / "runs.csv", run_rows, lead)
    write_csv(out_dir / "rounds.csv", round_rows, [*lead, "round"])
    if stage_rows:
        write_csv(out_dir / "stages.csv", stage_rows, [*lead, "stage"])
    rows, choices = apply_selections(spec, run_rows)
    if choices:
        write_csv(out_dir / "selections.csv", choices, ["selection", "chosen", "metric", "value"])
    order = axis_order(spec)
    doc_path = doc or (root / spec.doc if spec.doc else None)
    parts = [_header(spec, runs, len({r["key"] for r in run_rows}), root)]
    parts.append(stopped_section(runs))
    for t in spec.tables:
        parts.append(markdown_table(spec, t, rows, order))
    if choices:
        parts.append(
            "**Choices made on validation**\n\n"
            + "\n".join(
                f"- {c['selection']}: `{c['chosen']}` ({c['metric']} = {c['value']:.4f})"
                + "".join(f", {a}={c[a]}" for a in spec.axes if a in c)
                + (f" (provisional: {c['not_yet_run']} not run yet)" if c["not_yet_run"] else "")
                for c in choices
            )
        )
    where = doc_path.parent if doc_path else out_dir
    for i, p in enumerate(spec.plots):
        name = f"{spec.name}_{p.metric.replace(' ', '')}_{i}.png"
        source = stage_rows if p.records == "stages" else round_rows
        if plot(spec, p, source, order, where / name):
            parts.append(f"![{p.title or p.metric}]({name})")
        else:
            parts.append(
                f"(Plot `{p.title or p.metric}`: no run has `{p.metric}` against "
                f"`{p.x}` in its {p.records} records yet.)"
            )
    import fedsim.study.extras  # noqa: F401  (registers the core's report sections)

    for name in spec.reports:
        parts.append(STUDY_REPORTS.get(name)(spec, runs, rows, round_rows, where))
    text = "\n\n".join(x for x in parts if x) + "\n"
    if doc_path is not None:
        findings = ""
        if doc_path.is_file() and FINDINGS_MARKER in doc_path.read_text():
            findings = doc_path.read_text().split(FINDINGS_MARKER, 1)[1]
        write_text_atomic(doc_path, text + "\n" + FINDINGS_MARKER + (findings or "\n"))
    return text


def run_and_report(
    name: str,
    overrides: Sequence[str] = (),
    *,
    root: Path | None = None,
    report_only: bool = False,
    execute: Callable[[Any], Any] | None = None,
) -> str:
    """``fedsim study NAME``: make the runs (unless ``report_only``), then write the report."""
    from fedsim.study.runner import plan, restore, run_study
    from fedsim.study.spec import load_study

    root = Path.cwd() if root is None else root
    spec = load_study(name, overrides)
    if report_only:
        runs = plan(spec, root=root)
        restore(spec, runs, root)
    else:
        runs = run_study(spec, root=root, execute=execute)
    return write_report(spec, runs, root=root)
