"""Report sections of the backdoor studies (``conf/study/flain_*.yaml``).

Registered into :data:`fedsim.study.report.STUDY_REPORTS` on import; a study names them in its
``reports`` list. They show what the generic tables leave out:

- ``flain_details``: per post-training defense, what it did to each trained model: FLAIN's k*
  per seed, the number of fc1 inputs flipped, those exactly zero on the aux set, the aux
  accuracy drop and guard hits; dormant pruning's number of zeroed inputs.
- ``flain_eps_per_model``: FLAIN's tolerance eps chosen per trained model (each seed's model on
  its own validation numbers, as a user with one model would choose), by two criteria: the
  trigger-aware ``final_val_accuracy - final_val_asr`` (the study's ``select`` criterion, made
  per model instead of on the mean over seeds) and a trigger-free one (the largest eps whose
  validation accuracy stays within :data:`VAL_BUDGET` of the undefended model's). The chosen eps
  per seed, then MA and ASR with paired differences to the baseline.

No choice here uses a test-split number: only ``final_val_*`` keys of the defended models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.stats import format_ci, format_paired, mean_ci, paired_difference
from fedsim.study.report import STUDY_REPORTS
from fedsim.study.runner import PlannedRun
from fedsim.study.spec import StudySpec
from fedsim.study.tables import Row, axis_order, metric_value

__all__ = ["choose_per_model", "eps_of", "flain_candidates", "flain_details", "flain_eps_per_model"]

#: The axis whose labels are the defenses (the post-hoc axis of fedsim's studies).
METHOD = "method"
#: Trigger-free criterion: the largest eps whose defended validation accuracy is at most this far
#: (absolute, as a fraction) below the undefended model's.
VAL_BUDGET = 0.005
#: The trigger-aware criterion (the studies' ``select`` metric).
TRIGGER_AWARE = "final_val_accuracy - final_val_asr"
#: FLAIN's reference tolerance on a dataset without an explicit one (MNIST/EMNIST, spec §1.4).
DEFAULT_EPS = 0.0


def _num(row: Row, key: str) -> float:
    v = row.get(key)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return math.nan


def _fmt(values: Sequence[float], digits: int = 1, scale: float = 1.0) -> str:
    return format_ci(mean_ci([v for v in values if math.isfinite(v)]), scale=scale, digits=digits)


def _per_seed(values: Mapping[int, float], fmt: Callable[[float], str]) -> str:
    return ", ".join(f"{s}: {fmt(v)}" for s, v in sorted(values.items())) or "-"


def eps_of(defense: Mapping[str, Any], dataset: str | None = None) -> float:
    """The tolerance eps a FLAIN post-hoc variant runs with.

    Parameters
    ----------
    defense
        The variant's defense mapping (``{name: flain, tolerance: ...}``).
    dataset
        The runs' dataset name, for the reference schedule when ``tolerance`` is unset.

    Returns
    -------
    float
        ``defense['tolerance']``, else the dataset's reference tolerance
        (:data:`server.flain.SCHEDULES`), else :data:`DEFAULT_EPS`.
    """
    if defense.get("tolerance") is not None:
        return float(defense["tolerance"])
    from server import flain as fl

    ref = fl.SCHEDULES.get(dataset or "")
    return float(ref[3]) if ref is not None else DEFAULT_EPS


def flain_candidates(spec: StudySpec, dataset: str | None = None) -> dict[str, float]:
    """The study's reference-mode FLAIN variants, label -> eps, in increasing eps (the first
    declared wins a tie)."""
    found = {
        label: eps_of(d, dataset)
        for label, d in spec.posthoc.items()
        if d.get("name") == "flain" and d.get("mode", "reference") == "reference"
    }
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def _groups(spec: StudySpec, rows: Sequence[Row]) -> dict[tuple, dict[str, Row]]:
    """(other axes' labels, seed) -> method label -> row; selection copies are left out."""
    others = [a for a in spec.axes if a != METHOD]
    out: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        if "selected" in r or r.get(METHOD) is None:
            continue
        key = (*(r.get(a) for a in others), int(r["seed"]))
        out.setdefault(key, {})[str(r[METHOD])] = r
    return out


def choose_per_model(
    spec: StudySpec,
    rows: Sequence[Row],
    criterion: str,
    *,
    dataset: str | None = None,
    budget: float = VAL_BUDGET,
) -> list[Row]:
    """For each trained model (each group of the other axes and seed), the FLAIN variant chosen
    on that model's validation numbers.

    Parameters
    ----------
    spec
        The study; its FLAIN variants are :func:`flain_candidates`.
    rows
        Run rows (trained and post-hoc).
    criterion
        ``"trigger_aware"``: the highest ``final_val_accuracy - final_val_asr`` (ties: the
        smaller eps); ``"trigger_free"``: the largest eps whose ``final_val_accuracy`` is at
        least the baseline row's minus ``budget`` (eps = 0's variant when none is).
    dataset
        For :func:`eps_of`.
    budget
        The trigger-free criterion's allowed validation-accuracy drop.

    Returns
    -------
    list of dict
        The chosen variant's row per model, with ``chosen`` (its label) and ``eps``.
    """
    cands = flain_candidates(spec, dataset)
    base = spec.baseline.get(METHOD)
    out: list[Row] = []
    for members in _groups(spec, rows).values():
        have = [lab for lab in cands if lab in members]
        if not have:
            continue
        if criterion == "trigger_aware":
            scored = [(metric_value(members[lab], TRIGGER_AWARE), lab) for lab in have]
            finite = [(v, lab) for v, lab in scored if math.isfinite(v)]
            if not finite:
                continue
            best = max(v for v, _ in finite)
            pick = next(lab for v, lab in finite if v == best)
        elif criterion == "trigger_free":
            ref = _num(members.get(base, {}), "final_val_accuracy") if base else math.nan
            if not math.isfinite(ref):
                continue
            ok = [lab for lab in have if _num(members[lab], "final_val_accuracy") >= ref - budget]
            pick = ok[-1] if ok else have[0]
        else:
            raise ValueError(f"unknown criterion {criterion!r}: trigger_aware or trigger_free")
        out.append({**members[pick], "chosen": pick, "eps": cands[pick]})
    return out


def _dataset(runs: Sequence[PlannedRun]) -> str | None:
    return str(runs[0].cfg.dataset.name) if runs else None


def flain_details(
    spec: StudySpec,
    runs: list[PlannedRun],
    rows: list[Row],
    round_rows: list[Row],
    doc_dir: Path,
) -> str:
    """Markdown: what each post-training defense did, per seed (see the module docstring)."""
    order = axis_order(spec)[METHOD]
    labels = [lab for lab in order if lab in spec.posthoc]
    lines = [
        "**What the post-training defenses did** (per seed `seed: value`; aux = the 80/class "
        "set held out of the test split that the defenses search on)",
        "",
        "| defense | k* per seed | fc1 inputs flipped / zeroed | of them exactly 0 on aux | "
        "aux accuracy drop (points) | k_cap reached |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    others = [a for a in spec.axes if a != METHOD]
    for label in labels:
        mine = [r for r in rows if r.get(METHOD) == label and "selected" not in r]
        if not mine:
            continue
        for combo in sorted({tuple(r.get(a) for a in others) for r in mine}, key=str):
            sub = [r for r in mine if tuple(r.get(a) for a in others) == combo]
            name = label + "".join(f", {a}={v}" for a, v in zip(others, combo, strict=True))
            pruning = spec.posthoc[label].get("name") == "dormant_pruning"
            k = {int(r["seed"]): _num(r, "defense_k_star") for r in sub}
            changed = [_num(r, "defense_pruned" if pruning else "defense_flip_count") for r in sub]
            zero = [_num(r, "defense_dormant_inputs") for r in sub]
            drop = [_num(r, "defense_aux_acc_drop") for r in sub]
            cap = sum(_num(r, "defense_terminated_without_stop") == 1 for r in sub)
            k_text = _per_seed(k, lambda v: "none" if math.isnan(v) else f"{v:.3g}")
            lines.append(
                f"| {name} | {'-' if pruning else k_text} | {_fmt(changed, 0)} | "
                f"{'-' if pruning else _fmt(zero, 0)} | {_fmt(drop, 2, 100)} | "
                f"{'-' if pruning else f'{cap}/{len(sub)}'} |"
            )
    if len(lines) == 4:
        return "**What the post-training defenses did**: no post-hoc variant made yet."
    lines += [
        "",
        "k* none: rollback kept θ_T (no flip). With eps = 0 the walk stops at the first k whose "
        "flips do not raise the aux accuracy (spec §1.5); flips of inputs that are exactly 0 on "
        "every aux image cannot change it.",
    ]
    return "\n".join(lines)


def flain_eps_per_model(
    spec: StudySpec,
    runs: list[PlannedRun],
    rows: list[Row],
    round_rows: list[Row],
    doc_dir: Path,
) -> str:
    """Markdown: FLAIN's eps chosen per trained model on validation, two criteria, with MA/ASR
    and paired differences to the baseline (see the module docstring)."""
    dataset = _dataset(runs)
    base_label = spec.baseline.get(METHOD)
    cands = flain_candidates(spec, dataset)
    if not cands or base_label is None:
        return ""
    others = [a for a in spec.axes if a != METHOD]
    base = {k: g[base_label] for k, g in _groups(spec, rows).items() if base_label in g}
    head = [
        f"**FLAIN's eps chosen per trained model on validation** (among eps "
        f"{', '.join(f'{e:g}' for e in cands.values())}; trigger-aware: the highest val "
        f"accuracy - val ASR of the defended model; trigger-free: the largest eps whose val "
        f"accuracy is within {100 * VAL_BUDGET:g} point of the undefended model's, needing no "
        "triggered images; Δ paired with the baseline's seeds)",
        "",
        "| criterion | eps per seed | MA (%) | MA Δ vs baseline | ASR (%) | ASR Δ vs baseline |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines = list(head)
    for criterion in ("trigger_aware", "trigger_free"):
        chosen = choose_per_model(spec, rows, criterion, dataset=dataset)
        for combo in sorted({tuple(r.get(a) for a in others) for r in chosen}, key=str):
            sub = [r for r in chosen if tuple(r.get(a) for a in others) == combo]
            name = criterion + "".join(f", {a}={v}" for a, v in zip(others, combo, strict=True))
            cells = [name, _per_seed({int(r["seed"]): r["eps"] for r in sub}, lambda v: f"{v:g}")]
            for metric, hib in (("final_ma", True), ("final_asr", False)):
                mine = {int(r["seed"]): _num(r, metric) for r in sub}
                ref = {
                    k[-1]: _num(b, metric)
                    for k, b in base.items()
                    if tuple(k[:-1]) == combo and math.isfinite(_num(b, metric))
                }
                mine = {s: v for s, v in mine.items() if math.isfinite(v)}
                p = paired_difference(mine, ref, higher_is_better=hib)
                cells += [_fmt(list(mine.values()), 1, 100), format_paired(p, scale=100)]
            lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == len(head):
        return "**FLAIN's eps chosen per trained model on validation**: no FLAIN variant made yet."
    return "\n".join(lines)


STUDY_REPORTS.register("flain_details")(flain_details)
STUDY_REPORTS.register("flain_eps_per_model")(flain_eps_per_model)
