"""Report sections of the federated-active-learning studies (``conf/study/fal_*.yaml``).

Registered into :data:`fedsim.study.report.STUDY_REPORTS` on import; a study names them in its
``reports`` list. They read what the generic tables leave out: the stage records of each run's
``metrics.jsonl`` (one per stage, with the query cycle that follows it), which carry FairFAL's
r̄ and global/local model choice, and the class histograms of the queries.

- ``fal_fairfal_choice``: r̄ per cycle (the value used and the one computed that cycle), the mean
  divergence d_k and the share of clients whose uncertainty model M_u and gradient-embedding
  model M_g were the global model; a table and a plot.
- ``fal_query_balance``: the tail-class share of the queries per cycle (plot), the class
  histogram of all queries per method, and FairFAL minus each other method paired by seed
  (final accuracy, AULC, tail share), as the removed ``scripts/fal_table.py`` reported it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import constants as C
from fedsim.outputs import read_metrics
from fedsim.stats import format_paired, paired_difference
from fedsim.study import cache
from fedsim.study.report import STUDY_REPORTS
from fedsim.study.runner import PlannedRun
from fedsim.study.spec import StudySpec
from fedsim.study.tables import Row, axis_order

__all__ = ["cycle_rows", "fairfal_choice", "query_balance"]

#: The axis whose labels are the query strategies (one line per label in the plots).
METHOD = "method"
#: The label of FairFAL on that axis.
FAIRFAL = "fairfal"


def _mean(values: Any) -> float:
    vals = [float(v) for v in (values or []) if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def cycle_rows(runs: Sequence[PlannedRun]) -> list[Row]:
    """One row per made run and query cycle, from the run's stage records.

    Parameters
    ----------
    runs
        The study's planned runs; those not complete (:func:`fedsim.study.cache.is_done`) are
        skipped.

    Returns
    -------
    list of dict
        The run's axis labels and ``seed``, then ``cycle`` (the stage the cycle follows),
        ``labeled_ratio``, ``query_tail_share``, ``query_hist`` (a list) and, for FairFAL runs,
        ``rbar`` (used), ``rbar_computed``, ``divergence`` (mean d_k), ``imbalance_min`` /
        ``imbalance_max`` (g_k over clients), ``global_unc`` / ``global_grad`` (share of
        clients with M_u = G / M_g = G), ``pseudo_acc`` and ``rbar_threshold``.
    """
    rows: list[Row] = []
    for run in runs:
        if not cache.is_done(run.dir):
            continue
        query = run.cfg.get("query") or {}
        for rec in read_metrics(run.dir):
            if rec.get(C.RECORD_KIND) != "stage" or C.FAL_QUERY_HIST not in rec:
                continue  # the last stage has no query cycle
            row: Row = {**dict(run.cell.labels), "seed": run.seed, "cycle": int(rec[C.STAGE])}
            row[C.LABELED_RATIO] = rec.get(C.LABELED_RATIO)
            row[C.QUERY_TAIL_SHARE] = rec.get(C.QUERY_TAIL_SHARE)
            row[C.FAL_QUERY_HIST] = list(rec[C.FAL_QUERY_HIST])
            if C.RBAR in rec:
                g = [float(v) for v in rec.get("fairfal_imbalances") or []]
                row.update(
                    rbar=float(rec[C.RBAR]),
                    rbar_computed=float(rec.get("fairfal_rbar_computed", rec[C.RBAR])),
                    divergence=_mean(rec.get("fairfal_divergences")),
                    imbalance_min=min(g) if g else math.nan,
                    imbalance_max=max(g) if g else math.nan,
                    global_unc=_mean(rec.get(C.FAL_USE_GLOBAL_UNC)),
                    global_grad=_mean(rec.get(C.FAL_USE_GLOBAL_GRAD)),
                    pseudo_acc=_mean(rec.get(C.FAL_PSEUDO_ACC)),
                    rbar_threshold=float(query.get("rbar_threshold", 0.5)),
                )
            rows.append(row)
    return rows


def _groups(
    spec: StudySpec, rows: list[Row], skip: tuple[str, ...] = (METHOD,)
) -> list[tuple[str, list[Row]]]:
    """``(title, rows)`` per combination of the axes outside ``skip`` (default: all but the
    method axis)."""
    order = axis_order(spec)
    others = [a for a in spec.axes if a not in skip]
    out = []
    for combo in itertools.product(*(order[a] for a in others)):
        sub = [r for r in rows if all(r.get(a) == v for a, v in zip(others, combo, strict=True))]
        if sub:
            out.append((", ".join(f"{a}={v}" for a, v in zip(others, combo, strict=True)), sub))
    return out


def _fmt(values: list[float], digits: int = 2) -> str:
    """``mean [min, max]`` over seeds (``-`` when none)."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1 or min(vals) == max(vals):
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} [{min(vals):.{digits}f}, {max(vals):.{digits}f}]"


def choice_table(rows: list[Row]) -> str:
    """The FairFAL table of one group: a line per cycle, each value ``mean [min, max]`` over
    seeds."""
    head = (
        "| cycle | labeled ratio | seeds | r̄ used | r̄ computed | g_k range | mean d_k "
        "| M_u = G (clients) | M_g = G (clients) | pseudo-label acc |"
    )
    lines = [head, "|" + " --- |" * 10]
    for cycle in sorted({r["cycle"] for r in rows}):
        sub = [r for r in rows if r["cycle"] == cycle]
        col = {k: [float(r[k]) for r in sub] for k in sub[0] if k.startswith(("rbar", "glob"))}
        g_lo = min(r["imbalance_min"] for r in sub)
        g_hi = max(r["imbalance_max"] for r in sub)
        cells = [
            str(cycle),
            f"{sub[0][C.LABELED_RATIO]:.2f}",
            str(len(sub)),
            _fmt(col["rbar"]),
            _fmt(col["rbar_computed"]),
            f"{g_lo:.2f}-{g_hi:.2f}",
            _fmt([r["divergence"] for r in sub]),
            f"{np.mean(col['global_unc']):.0%}",
            f"{np.mean(col['global_grad']):.0%}",
            _fmt([r["pseudo_acc"] for r in sub]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(panels: int) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.4), squeeze=False)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # cycles
    return fig, axes[0]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _by_cycle(rows: list[Row], key: str) -> tuple[list[int], list[float]]:
    cycles = sorted({r["cycle"] for r in rows if math.isfinite(float(r.get(key, math.nan)))})
    means = [_mean([r[key] for r in rows if r["cycle"] == c]) for c in cycles]
    return cycles, means


def plot_choice(groups: list[tuple[str, list[Row]]], path: Path) -> Path | None:
    """r̄ (computed each cycle, and used) against the threshold, and the share of clients
    querying with the global model, per cycle; one line per group."""
    if not groups:
        return None
    fig, (ax_r, ax_g) = _figure(2)
    for title, sub in groups:
        label = title or "all"
        for key, style in (("rbar_computed", "o-"), ("rbar", "x--")):
            x, y = _by_cycle(sub, key)
            ax_r.plot(x, y, style, label=f"{label}: {key.replace('_', ' ')}")
        for key, style in (("global_unc", "o-"), ("global_grad", "s--")):
            x, y = _by_cycle(sub, key)
            ax_g.plot(x, [100 * v for v in y], style, label=f"{label}: {key.replace('_', ' ')}")
    thr = _mean([r["rbar_threshold"] for _, sub in groups for r in sub])
    ax_r.axhline(thr, color="k", lw=0.8, ls=":", label=f"threshold {thr:g}")
    ax_r.set(xlabel="cycle", ylabel="r̄ (mean over seeds)", title="FairFAL r̄ per cycle")
    ax_g.set(xlabel="cycle", ylabel="clients (%)", title="clients querying with G")
    ax_g.set_ylim(-5, 105)
    for ax in (ax_r, ax_g):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)


@STUDY_REPORTS.register("fal_fairfal_choice")
def fairfal_choice(
    spec: StudySpec,
    runs: list[PlannedRun],
    run_rows: list[Row],
    round_rows: list[Row],
    doc_dir: Path,
) -> str:
    """Markdown: FairFAL's r̄ and global/local model choice per cycle (table and plot)."""
    rows = [r for r in cycle_rows(runs) if "rbar" in r]
    parts = ["## FairFAL: r̄ and the global/local model choice per cycle"]
    if not rows:
        return parts[0] + "\n\nNo finished FairFAL run yet."
    parts.append(
        "r̄ = mean over clients of g_k = min/max of the global model's mean softmax over the "
        "client's labeled classes (on a class-balanced probe of its labeled pool). M_g = G iff "
        "r̄ < threshold; M_u = G iff s_k = 1 - (d_k + r̄)/2 > 0.75, i.e. d_k + r̄ < 0.5. "
        '"r̄ used" is frozen after the first cycle (Q1) unless `query.freeze_rbar=false`; '
        '"r̄ computed" is that cycle\'s value. Values: mean [min, max] over seeds; the M_u/M_g '
        "columns are shares of all clients. One table per FairFAL configuration (method label)."
    )
    groups = _groups(spec, rows, skip=())
    for title, sub in groups:
        parts.append((f"**{title}**\n\n" if title else "") + choice_table(sub))
    name = f"{spec.name}_fairfal_choice.png"
    if plot_choice(groups, doc_dir / name):
        parts.append(f"![FairFAL r̄ and model choice per cycle]({name})")
    return "\n\n".join(parts)


def plot_tail_share(spec: StudySpec, rows: list[Row], path: Path) -> Path | None:
    """The tail-class share of each cycle's queries (mean over seeds), one line per method,
    one panel per group of the other axes."""
    groups = _groups(spec, rows)
    if not groups:
        return None
    fig, axes = _figure(len(groups))
    for ax, (title, sub) in zip(axes, groups, strict=True):
        for method in axis_order(spec).get(METHOD, []):
            x, y = _by_cycle([r for r in sub if r.get(METHOD) == method], C.QUERY_TAIL_SHARE)
            if x:
                ax.plot(x, [100 * v for v in y], "o-" if method == FAIRFAL else ".--", label=method)
        ax.set(xlabel="cycle", ylabel="queries in the tail half (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def histogram_table(spec: StudySpec, rows: list[Row]) -> str:
    """Per group and method: the share (%) of all queries (cycles and seeds summed) per class."""
    parts = []
    for title, sub in _groups(spec, rows):
        num = max(len(r[C.FAL_QUERY_HIST]) for r in sub)
        head = "| method | queries | " + " | ".join(f"c{c}" for c in range(num)) + " |"
        lines = [head, "|" + " --- |" * (num + 2)]
        for method in axis_order(spec).get(METHOD, []):
            hists = [r[C.FAL_QUERY_HIST] for r in sub if r.get(METHOD) == method]
            if hists:
                total = np.sum(hists, axis=0).astype(float)
                share = total / max(total.sum(), 1.0)
                cells = [method, str(int(total.sum()))] + [f"{100 * s:.1f}" for s in share]
                lines.append("| " + " | ".join(cells) + " |")
        parts.append((f"**{title}**\n\n" if title else "") + "\n".join(lines))
    return "\n\n".join(parts)


def fairfal_minus_each(spec: StudySpec, run_rows: list[Row]) -> str:
    """FairFAL minus each other method, paired by seed (percentage points, with its 95 % interval
    and the seeds FairFAL wins), per group of the other axes."""
    keys = ((C.FINAL_ACCURACY, "final accuracy"), (C.AULC, "AULC"), (C.QUERY_TAIL_SHARE, "tail"))
    rows = [r for r in run_rows if r.get("variant", "trained") == "trained"]
    parts = []
    for title, sub in _groups(spec, rows):
        if not any(r.get(METHOD) == FAIRFAL for r in sub):
            continue
        head = "| FairFAL minus | " + " | ".join(f"{k[1]} Δ (wins/n)" for k in keys) + " |"
        lines = [head, "|" + " --- |" * (len(keys) + 1)]
        for method in axis_order(spec).get(METHOD, []):
            if method == FAIRFAL:
                continue
            cells = [method]
            for key, _ in keys:
                mine, other = _seeds(sub, FAIRFAL, key), _seeds(sub, method, key)
                cells.append(format_paired(paired_difference(mine, other), scale=100, digits=1))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append((f"**{title}**\n\n" if title else "") + "\n".join(lines))
    return "\n\n".join(parts)


def _seeds(rows: list[Row], method: str, key: str) -> dict[int, float]:
    out = {}
    for r in rows:
        v = r.get(key)
        if r.get(METHOD) == method and isinstance(v, int | float) and math.isfinite(v):
            out[int(r["seed"])] = float(v)
    return out


@STUDY_REPORTS.register("fal_query_balance")
def query_balance(
    spec: StudySpec,
    runs: list[PlannedRun],
    run_rows: list[Row],
    round_rows: list[Row],
    doc_dir: Path,
) -> str:
    """Markdown: tail-class share of the queries per cycle (plot), class histogram of all
    queries, and FairFAL minus each other method paired by seed."""
    rows = cycle_rows(runs)
    parts = ["## Class balance of the queries"]
    if not rows:
        return parts[0] + "\n\nNo finished run yet."
    tail = [r[C.QUERY_TAIL_SHARE] for r in rows if r.get(METHOD) == "random"]
    parts.append(
        "Tail share: the fraction of a cycle's picks whose true class is in the rarer half of "
        "the classes (by training count); `random` estimates the pool's own share"
        + (f" ({100 * np.mean(tail):.1f} %, mean over seeds and cycles)." if tail else ".")
    )
    name = f"{spec.name}_query_tail_share.png"
    if plot_tail_share(spec, rows, doc_dir / name):
        parts.append(f"![tail-class share of the queries per cycle]({name})")
    parts.append("**Share of all queries per class (%)**, class 0 the head class")
    parts.append(histogram_table(spec, rows))
    paired = fairfal_minus_each(spec, run_rows)
    if paired:
        parts.append("**FairFAL minus each method, paired by seed (points)**")
        parts.append(paired)
    return "\n\n".join(parts)
