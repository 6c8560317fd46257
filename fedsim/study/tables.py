"""A study's results: tidy tables (a row per run, a row per run and round), validation-chosen
rows, and Markdown tables with 95 % intervals and paired differences to the baseline."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim import constants as C
from fedsim.outputs import read_metrics
from fedsim.stats import format_ci, format_paired, mean_ci, paired_difference
from fedsim.study import cache
from fedsim.study.runner import PlannedRun
from fedsim.study.spec import Selection, StudySpec, Table, metric_terms

Row = dict[str, Any]


def _scalars(obj: Mapping[str, Any], prefix: str = "") -> Row:
    """The finite numbers of ``obj`` (booleans and non-finite values left out)."""
    out: Row = {}
    for k, v in obj.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = v
    return out


def posthoc_row(base: Row, result: Mapping[str, Any]) -> Row:
    """A post-hoc variant's row: the trained run's numbers with each ``<key>_after`` of the
    variant's result as ``final_<key>`` (the defended final model), its other numbers as
    ``defense_<key>``."""
    row = dict(base)
    for key, value in _scalars(result).items():
        if key.endswith("_after"):
            row[f"final_{key[: -len('_after')]}"] = value
        elif not key.endswith("_before"):
            row[f"defense_{key}"] = value
    return row


def collect(spec: StudySpec, runs: Sequence[PlannedRun]) -> tuple[list[Row], list[Row], list[Row]]:
    """``(run rows, round rows, stage rows)`` of the made runs: the axes' labels, the seed, the
    key and the variant (``trained`` or a post-hoc label), then every number of the summary
    and, as ``last_<key>``, the last value of each round-record key (run rows), or every number
    of each round's record (round rows), or of each per-stage record (stage rows: FAL's query
    cycles; none for runs without stages)."""
    run_rows: list[Row] = []
    round_rows: list[Row] = []
    stage_rows: list[Row] = []
    for run in runs:
        if not cache.is_done(run.dir) or cache.stopped_reason(run.dir) is not None:
            continue  # not made, or stopped early (listed apart by the report)
        summary = json.loads((run.dir / C.SUMMARY_FILE).read_text())
        base: Row = {**dict(run.cell.labels), "seed": run.seed, "key": run.key}
        trained = {**base, "variant": "trained", **_scalars(summary)}
        last: Row = {}
        for rec in read_metrics(run.dir):
            if rec.get(C.RECORD_KIND) == "stage":
                stage_rows.append({**base, "variant": "trained", **_scalars(rec)})
                continue
            if C.ROUND not in rec:
                continue
            numbers = _scalars(rec)
            round_rows.append({**base, "variant": "trained", **numbers})
            last.update(numbers)
        trained.update({f"last_{k}": v for k, v in last.items()})  # each key's last value
        run_rows.append(trained)
        for label, defense in spec.posthoc.items():
            path = run.dir / cache.posthoc_key(label, dict(defense))
            if path.is_file():
                row = posthoc_row(trained, json.loads(path.read_text()))
                row.update({spec.posthoc_axis: label, "variant": label})
                run_rows.append(row)
    return run_rows, round_rows, stage_rows


def write_csv(path: Path, rows: Sequence[Row], first: Sequence[str]) -> None:
    """``rows`` as CSV, the columns ``first`` leading and the rest sorted."""
    cols = list(first) + sorted({k for r in rows for k in r} - set(first))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def metric_value(row: Row, expr: str) -> float:
    """The value of the metric expression ``expr`` (:func:`~fedsim.study.spec.metric_terms`) in
    ``row``; nan when a key is missing."""
    total = 0.0
    for sign, key in metric_terms(expr):
        value = row.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return math.nan
        total += sign * float(value)
    return total


def apply_selections(spec: StudySpec, rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """The rows with each selection's rows added, and one record per choice made.

    For each group of the other axes, the label of ``sel.among`` with the best mean over seeds
    of the validation ``sel.metric`` is chosen; its rows are copied under the label
    ``sel.name`` (with ``selected`` naming the choice).
    """
    out, choices = list(rows), []
    for sel in spec.select:
        others = [a for a in spec.axes if a != sel.axis]
        groups: dict[tuple, list[Row]] = {}
        for r in rows:
            if r.get(sel.axis) in sel.among:
                groups.setdefault(tuple(r.get(a) for a in others), []).append(r)
        for group, members in groups.items():
            choice = _choose(sel, members)
            if choice is None:
                continue
            missing = [a for a in sel.among if not any(r[sel.axis] == a for r in members)]
            choices.append(
                {
                    **dict(zip(others, group, strict=True)),
                    "selection": sel.name,
                    "chosen": choice[0],
                    "metric": sel.metric,
                    "value": choice[1],
                    "not_yet_run": " ".join(missing),
                }
            )
            for r in members:
                if r[sel.axis] == choice[0]:
                    out.append({**r, sel.axis: sel.name, "selected": choice[0]})
    return out, choices


def _choose(sel: Selection, members: list[Row]) -> tuple[str, float] | None:
    means = {}
    for label in sel.among:
        vals = [metric_value(r, sel.metric) for r in members if r[sel.axis] == label]
        finite = [v for v in vals if math.isfinite(v)]
        if finite:
            means[label] = sum(finite) / len(finite)
    if not means:
        return None
    pick = max if sel.mode == "max" else min
    best = pick(means.values())
    label = next(lab for lab in sel.among if means.get(lab) == best)  # ties: the first listed
    return label, best


def _labels(rows: Iterable[Row], axis: str, order: Sequence[str]) -> list[str]:
    seen = {r.get(axis) for r in rows if r.get(axis) is not None}
    known = [lab for lab in order if lab in seen]
    return known + sorted(str(s) for s in seen - set(known))


def markdown_table(spec: StudySpec, table: Table, rows: list[Row], order: Mapping) -> str:
    """One Markdown table (or one per combination of the axes it does not show)."""
    shown = [table.rows] + ([table.cols] if table.cols else [])
    others = [a for a in spec.axes if a not in shown and len(_labels(rows, a, order[a])) > 1]
    parts = []
    combos = itertools.product(*(_labels(rows, a, order[a]) for a in others)) if others else [()]
    for combo in combos:
        sub = [r for r in rows if all(r.get(a) == v for a, v in zip(others, combo, strict=True))]
        if not sub:
            continue
        head = f"**{table.title or table.metric}**" + (
            " (" + ", ".join(f"{a}={v}" for a, v in zip(others, combo, strict=True)) + ")"
            if combo
            else ""
        )
        parts.append(head + "\n\n" + _one_table(spec, table, sub, order))
    return "\n\n".join(parts)


def _one_table(spec: StudySpec, table: Table, rows: list[Row], order: Mapping) -> str:
    base = spec.baseline.get(table.rows)
    cols: list[str | None] = [None]
    if table.cols:
        cols = list(_labels(rows, table.cols, order[table.cols]))
    header = [table.rows]
    for c in cols:
        name = c if c is not None else table.metric
        header.append(f"{name}: mean [95% CI]")
        if base is not None:
            header.append(f"{name}: Δ vs {base} (wins/n)")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label in _labels(rows, table.rows, order[table.rows]):
        cells = [label]
        for c in cols:
            mine = _by_seed(rows, table, label, c)
            n = len(mine)
            cells.append(
                format_ci(mean_ci(list(mine.values())), scale=table.scale, digits=table.digits)
                + (f" (n={n})" if n else "")
            )
            if base is not None:
                if label == base:
                    cells.append("baseline" if mine else "-")
                else:
                    p = paired_difference(
                        mine,
                        _by_seed(rows, table, base, c),
                        higher_is_better=table.higher_is_better,
                    )
                    cells.append(format_paired(p, scale=table.scale, digits=table.digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_seed(rows: list[Row], table: Table, label: str, col: str | None) -> dict[int, float]:
    out = {}
    for r in rows:
        if r.get(table.rows) == label and (col is None or r.get(table.cols or "") == col):
            value = metric_value(r, table.metric)
            if math.isfinite(value):
                out[int(r["seed"])] = value
    return out


def axis_order(spec: StudySpec) -> dict[str, list[str]]:
    """Each axis's labels in declaration order (post-hoc and selection labels after them)."""
    order: dict[str, list[str]] = {a: [] for a in spec.axes}
    for cell in spec.cells:
        for a, lab in cell.labels:
            if lab not in order[a]:
                order[a].append(lab)
    if spec.posthoc:
        order[spec.posthoc_axis] += [lab for lab in spec.posthoc if lab not in order["method"]]
    for sel in spec.select:
        order[sel.axis].append(sel.name)
    return order
