"""Report sections of the open-set FAL studies (``conf/study/open_set_fal*.yaml``).

Registered into :data:`fedsim.study.report.STUDY_REPORTS` on import; a study names them in its
``reports`` list. They read the per-client lists of each run's stage records (one per query
cycle, written by :func:`server.components.open_set_fal.cycle_metrics`), which the generic
tables leave out.

- ``osal_precision``: every method's mean query precision minus random's, paired by seed (spec
  claim 4's second half: FairFAL as-is within 5 points of random), the same for the final
  known-class accuracy (spec claim 2), and how the clients' own
  precision settles after the first cycles (spec claim 3: EAOA's and E2OAL's feedback loops aim
  at 0.6).
- ``osal_detector_control``: the federated detector against the local one (axis ``detector``,
  labels ``federated`` and ``local``), the per-client precision lift split by how many labeled
  unknowns the client's local detector had (spec claim 4).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedsim import constants as C
from fedsim.outputs import read_metrics
from fedsim.stats import format_paired, mean_ci, paired_difference
from fedsim.study import cache
from fedsim.study.report import STUDY_REPORTS
from fedsim.study.runner import PlannedRun
from fedsim.study.spec import StudySpec
from fedsim.study.tables import Row, axis_order

__all__ = ["client_matrix", "lift_by_group", "settling", "unknowns_before"]

METHOD = "method"
RANDOM = "random"
DETECTOR = "detector"
FEDERATED = "federated"
LOCAL = "local"
#: Spec claim 3: the feedback loops' target precision, the tolerance, and the first cycle counted.
TARGET, TOLERANCE, SETTLE_FROM = 0.6, 0.1, 3
#: The run summary's mean precision over the cycles.
MEAN_PRECISION = "mean_query_precision"
#: The run summary's known-class test accuracy after the last stage (spec claim 2).
FINAL_ACCURACY = "final_accuracy"
#: The adaptive parameters the strategies report (mean over clients), shown with claim 3.
ADAPTIVE = {"eaoa": "osal_k", "e2oal": "osal_tau"}


def client_matrix(records: Sequence[Mapping], key: str) -> np.ndarray:
    """``(cycles, clients)`` array of the per-client list ``key`` of the stage records that have
    it (query cycles in stage order), NaN where a value is missing."""
    rows = [[math.nan if v is None else float(v) for v in r[key]] for r in records if key in r]
    if not rows:
        return np.zeros((0, 0))
    width = max(len(r) for r in rows)
    return np.array([r + [math.nan] * (width - len(r)) for r in rows], dtype=np.float64)


def settling(
    precision: np.ndarray,
    *,
    start: int = SETTLE_FROM,
    target: float = TARGET,
    tol: float = TOLERANCE,
) -> tuple[float, float, float]:
    """How the clients' query precision settles.

    Parameters
    ----------
    precision
        ``(cycles, clients)`` per-client precision, NaN where a client picked nothing.
    start
        The first cycle (0-based) counted.
    target, tol
        The band ``[target - tol, target + tol]``.

    Returns
    -------
    tuple
        The share of clients whose mean precision over cycles ``>= start`` lies in the band,
        the mean of those client means, and their standard deviation over clients (population);
        NaNs when no cycle ``>= start`` exists.
    """
    tail = precision[start:]
    if tail.size == 0:
        return math.nan, math.nan, math.nan
    with np.errstate(all="ignore"):
        per = np.nanmean(tail, axis=0)
    per = per[np.isfinite(per)]
    if per.size == 0:
        return math.nan, math.nan, math.nan
    inside = np.abs(per - target) <= tol + 1e-12
    return float(inside.mean()), float(per.mean()), float(per.std())


def unknowns_before(after: np.ndarray) -> np.ndarray:
    """Labeled unknowns per client before each query, from the counts after it: 0 before the
    first (the initial pool holds known samples only), then the previous cycle's count."""
    if after.size == 0:
        return after
    return np.vstack([np.zeros((1, after.shape[1])), after[:-1]])


def lift_by_group(
    fed_lift: np.ndarray, local_lift: np.ndarray, local_unknowns: np.ndarray
) -> dict[str, tuple[float, float]]:
    """Mean precision lift of the federated and the local detector's runs on two groups of
    clients: ``small`` (the clients whose local detector had at most the median, over clients,
    of labeled unknowns, averaged over the cycles) and ``large`` (the others).

    Parameters
    ----------
    fed_lift, local_lift
        ``(cycles, clients)`` per-client lift (precision minus the pool's known share) of the
        two runs (same seed and pools).
    local_unknowns
        ``(cycles, clients)`` labeled unknowns before each query in the local run.

    Returns
    -------
    dict
        ``{"small": (fed, local), "large": (fed, local)}``: each the mean over the group's
        clients of the client's mean lift over the cycles.
    """
    with np.errstate(all="ignore"):
        fed = np.nanmean(fed_lift, axis=0)
        loc = np.nanmean(local_lift, axis=0)
    unk = local_unknowns.mean(axis=0)
    small = unk <= np.median(unk)
    out = {}
    for name, mask in (("small", small), ("large", ~small)):
        keep = mask & np.isfinite(fed) & np.isfinite(loc)
        out[name] = (
            (float(fed[keep].mean()), float(loc[keep].mean())) if keep.any() else (math.nan,) * 2
        )
    return out


def _records(run: PlannedRun) -> list[dict]:
    return [
        r
        for r in read_metrics(run.dir)
        if r.get(C.RECORD_KIND) == "stage" and "precision_per_client" in r
    ]


def _groups(spec: StudySpec, skip: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """``(title, labels)`` per combination of the axes outside ``skip``."""
    order = axis_order(spec)
    others = [a for a in spec.axes if a not in skip]
    out = []
    for combo in itertools.product(*(order[a] for a in others)):
        labels = dict(zip(others, combo, strict=True))
        out.append((", ".join(f"{a}={v}" for a, v in labels.items()), labels))
    return out


def _match(labels: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(labels.get(a) == v for a, v in want.items())


def _done(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    return [r for r in runs if cache.is_done(r.dir)]


def _by_seed(rows: list[Row], want: Mapping[str, str], key: str) -> dict[int, float]:
    out = {}
    for r in rows:
        v = r.get(key)
        if _match(r, want) and isinstance(v, int | float) and math.isfinite(v):
            out[int(r["seed"])] = float(v)
    return out


def versus_random(spec: StudySpec, run_rows: list[Row], key: str = MEAN_PRECISION) -> str:
    """Each method's ``key`` (default: mean query precision) minus random's, paired by seed,
    per group of the other axes (points, 95 % interval, the seeds with the higher value)."""
    methods = [m for m in axis_order(spec).get(METHOD, []) if m != RANDOM]
    groups = _groups(spec, (METHOD,))
    head = "| method | " + " | ".join(t or "all" for t, _ in groups) + " |"
    lines = [head, "|" + " --- |" * (len(groups) + 1)]
    for m in methods:
        cells = [m]
        for _, want in groups:
            mine = _by_seed(run_rows, {**want, METHOD: m}, key)
            ref = _by_seed(run_rows, {**want, METHOD: RANDOM}, key)
            cells.append(format_paired(paired_difference(mine, ref), scale=100, digits=1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settling_table(spec: StudySpec, runs: Sequence[PlannedRun]) -> str:
    """Per method and group: the share of clients whose precision over cycles >= 3 averages
    within 0.6 +- 0.1, their mean and spread, and the adaptive parameter at the last cycle."""
    head = (
        f"| method | group | runs | clients within {TARGET} ± {TOLERANCE} | mean client "
        "precision | std over clients | adaptive parameter, last cycle |"
    )
    lines = [head, "|" + " --- |" * 7]
    for m in axis_order(spec).get(METHOD, []):
        for title, want in _groups(spec, (METHOD,)):
            stats, last = [], []
            for run in runs:
                labels = dict(run.cell.labels)
                if not _match(labels, {**want, METHOD: m}):
                    continue
                recs = _records(run)
                stats.append(settling(client_matrix(recs, "precision_per_client")))
                key = ADAPTIVE.get(m)
                if key and recs and key in recs[-1]:
                    last.append(float(recs[-1][key]))
            if not stats:
                continue
            share, mean, std = (np.nanmean([s[i] for s in stats]) for i in range(3))
            adaptive = f"{ADAPTIVE[m]} {np.mean(last):.2f}" if last else "-"
            lines.append(
                f"| {m} | {title or 'all'} | {len(stats)} | {100 * share:.0f} % | "
                f"{100 * mean:.1f} % | {100 * std:.1f} | {adaptive} |"
            )
    return "\n".join(lines)


def _against_random(spec: StudySpec, run_rows: list[Row]) -> list[str]:
    """The two paired tables against random: mean query precision and final accuracy."""
    parts = [
        "**Mean query precision minus random's, paired by seed (points; wins/n = seeds with "
        "the higher precision).** Spec claim 4 expects FairFAL as-is within ±5 points of random."
    ]
    trained = [r for r in run_rows if r.get("variant") == "trained"]
    parts.append(versus_random(spec, trained))
    if any(FINAL_ACCURACY in r for r in trained):
        parts.append(
            "**Known-class test accuracy after the last stage minus random's, paired by seed "
            "(points; wins/n = seeds with the higher accuracy).** Spec claim 2 expects LfOSA's "
            "edge over random to shrink or reverse as openness falls (BUAL's Table 1 on "
            "CIFAR-10: -9.6 points at openness 0.2, +1.7 at 0.8)."
        )
        parts.append(versus_random(spec, trained, FINAL_ACCURACY))
    return parts


@STUDY_REPORTS.register("osal_precision")
def osal_precision(
    spec: StudySpec, runs: list[PlannedRun], run_rows: list[Row], rounds: list[Row], where: Path
) -> str:
    """Markdown: precision and accuracy against random (paired; where the study has random
    runs), and the per-client settling table."""
    done = _done(runs)
    has_random = RANDOM in axis_order(spec).get(METHOD, [])  # without random runs: settling only
    title = "Precision and accuracy against random, and per-client" if has_random else "Per-client"
    parts = [f"## {title} settling"]
    if not done:
        return parts[0] + "\n\nNo finished run yet."
    if has_random:
        parts.extend(_against_random(spec, run_rows))
    parts.append(
        f"**Per-client precision from cycle {SETTLE_FROM} on (0-based; the last cycle is "
        f"{int(spec_cycles(done))}).** Each client's mean precision over those cycles, then per "
        "run the share of clients within the band, the mean and the spread over clients, "
        "averaged over runs. Spec claim 3 expects EAOA's (k) and E2OAL's (τ) feedback loops to "
        f"hold every client near {TARGET} ± {TOLERANCE} after about 3 cycles."
    )
    parts.append(settling_table(spec, done))
    return "\n\n".join(parts)


def spec_cycles(runs: Sequence[PlannedRun]) -> float:
    """The index of the last query cycle of the first finished run (for the text)."""
    for run in runs:
        recs = _records(run)
        if recs:
            return float(len(recs) - 1)
    return math.nan


def detector_rows(runs: Sequence[PlannedRun], spec: StudySpec) -> list[Row]:
    """One row per (group of the other axes, seed) with both detector runs made: the
    federated and local runs' mean lift on the ``small`` and ``large`` client groups."""
    done = {(tuple(sorted(dict(r.cell.labels).items())), r.seed): r for r in _done(runs)}
    rows: list[Row] = []
    for title, want in _groups(spec, (DETECTOR,)):
        for seed in spec.seeds:
            pair = {}
            for det in (FEDERATED, LOCAL):
                key = (tuple(sorted({**want, DETECTOR: det}.items())), seed)
                if key in done:
                    pair[det] = _records(done[key])
            if len(pair) < 2:
                continue
            fed, loc = pair[FEDERATED], pair[LOCAL]
            unk = unknowns_before(client_matrix(loc, "labeled_unknown_per_client"))
            groups = lift_by_group(
                client_matrix(fed, "lift_per_client"), client_matrix(loc, "lift_per_client"), unk
            )
            rows.append({"group": title, "seed": seed, **want, "lift": groups})
    return rows


def detector_table(rows: list[Row], titles: list[str]) -> str:
    """Per group of the other axes (and pooled over them) and client group: the mean lift of
    each detector and federated minus local, paired by seed (pooled: by seed and group, so a
    unit is one pair of runs)."""
    head = "| group | clients | seeds | federated lift | local lift | federated − local (wins/n) |"
    lines = [head, "|" + " --- |" * 6]
    for title in [*titles, "pooled"]:
        sub = rows if title == "pooled" else [r for r in rows if r["group"] == title]
        if not sub:
            continue
        for cg in ("small", "large"):
            fed = {i: r["lift"][cg][0] for i, r in enumerate(sub)}
            loc = {i: r["lift"][cg][1] for i, r in enumerate(sub)}
            p = paired_difference(fed, loc)
            lines.append(
                f"| {title} | {cg} | {len(sub)} | {100 * mean_ci(list(fed.values())).mean:.1f} "
                f"| {100 * mean_ci(list(loc.values())).mean:.1f} | "
                f"{format_paired(p, scale=100, digits=1)} |"
            )
    return "\n".join(lines)


#: Per-run numbers the pooled detector table pairs: (label, summary key or record reader, scale).
POOLED = (
    ("mean query precision (points)", MEAN_PRECISION, 100),
    ("final accuracy (points)", C.FINAL_ACCURACY, 100),
    ("AULC (points)", C.AULC, 100),
    ("accuracy after the first query (points)", "stage1_accuracy", 100),
    ("class entropy of the first query's known picks", "entropy_cycle0", 1),
    ("class entropy of the known picks, mean over cycles", "entropy_mean", 1),
)


def run_numbers(run: PlannedRun) -> dict[str, float]:
    """A made run's summary numbers and, from its stage records, the stage-1 accuracy and the
    normalised class entropy of the known picks (first cycle, and mean over the cycles)."""
    summary = json.loads((run.dir / C.SUMMARY_FILE).read_text())
    out = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    stages = [r for r in read_metrics(run.dir) if r.get(C.RECORD_KIND) == "stage"]
    ent = [float(r[C.QUERY_ENTROPY]) for r in stages if C.QUERY_ENTROPY in r]
    if len(stages) > 1 and C.EVAL_ACCURACY in stages[1]:
        out["stage1_accuracy"] = float(stages[1][C.EVAL_ACCURACY])
    if ent:
        out["entropy_cycle0"], out["entropy_mean"] = ent[0], float(np.mean(ent))
    return out


def pooled_table(spec: StudySpec, runs: Sequence[PlannedRun]) -> str:
    """Per method: local minus federated, each number of :data:`POOLED` paired over every
    (setting, seed) with both runs made."""
    done = {(tuple(sorted(dict(r.cell.labels).items())), r.seed): r for r in _done(runs)}
    head = "| method | number | pairs | federated | local | local − federated (wins/n) |"
    lines = [head, "|" + " --- |" * 6]
    for m in axis_order(spec).get(METHOD, []):
        pairs = []
        for _, want in _groups(spec, (DETECTOR, METHOD)):
            for seed in spec.seeds:
                got = [
                    done.get((tuple(sorted({**want, METHOD: m, DETECTOR: d}.items())), seed))
                    for d in (FEDERATED, LOCAL)
                ]
                if got[0] is not None and got[1] is not None:
                    pairs.append((run_numbers(got[0]), run_numbers(got[1])))
        for label, key, scale in POOLED:
            fed = {i: f[key] for i, (f, lo) in enumerate(pairs) if key in f and key in lo}
            loc = {i: pairs[i][1][key] for i in fed}
            if not fed:
                continue
            p = paired_difference(loc, fed)
            digits = 1 if scale == 100 else 2
            lines.append(
                f"| {m} | {label} | {len(fed)} | {scale * np.mean(list(fed.values())):.{digits}f} "
                f"| {scale * np.mean(list(loc.values())):.{digits}f} | "
                f"{format_paired(p, scale=scale, digits=digits)} |"
            )
    return "\n".join(lines)


@STUDY_REPORTS.register("osal_detector_control")
def osal_detector_control(
    spec: StudySpec, runs: list[PlannedRun], run_rows: list[Row], rounds: list[Row], where: Path
) -> str:
    """Markdown: the federated against the local detector, per client group (spec claim 4)."""
    parts = ["## Federated against local detector, by the clients' labeled unknowns"]
    rows = detector_rows(runs, spec)
    if not rows:
        return parts[0] + "\n\nNo seed has both detector runs yet."
    parts.append(
        "Per seed, the clients are split at the median (over clients) of the labeled unknowns "
        "their local detector had before each query, averaged over the cycles: `small` at or "
        "below it, `large` above. A client's lift is its precision minus its pool's known "
        "share, averaged over the cycles; a row gives the mean over its group's clients and "
        "seeds, and federated minus local paired by seed (pooled: every pair of the other axes and seeds). Spec "
        "claim 4 expects federated − local > 0 on the `small` clients."
    )
    parts.append(detector_table(rows, [t for t, _ in _groups(spec, (DETECTOR,))]))
    parts.append(
        "**Local minus federated detector, pooled over the settings** (each pair: one setting "
        "and seed; class entropy: the normalised entropy of a cycle's known-pick class "
        "histogram, 1 = balanced)"
    )
    parts.append(pooled_table(spec, runs))
    return "\n\n".join(parts)
