"""One FAL query cycle and the stage record (the server side of ``query.fal``; see
:mod:`server.components.fal`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedsim import constants as C
from fedsim.outputs import write_json_atomic
from fedsim.records import array_record
from fedsim.seeding import derive_seed
from server.fal_math import class_balance

if TYPE_CHECKING:
    from server.components.fal import ActiveLearning
    from server.workflow import Workflow


def stage_record(wf: Workflow, st: dict[str, Any], stage: int) -> dict[str, Any]:
    """The record of a finished stage (before its query cycle); records its accuracy in ``st``."""
    evals = st["stage_evals"]
    acc = evals[-1]
    st["stage_acc"] = [*st["stage_acc"], acc]
    lab = np.asarray(st["labeled_hist"])
    return {
        C.ROUND: wf.stage * int(wf.cfg.rounds) + wf.stage_round,
        C.RECORD_KIND: "stage",
        C.STAGE: stage,
        C.LABELED_RATIO: st["ratios"][stage],
        C.FAL_LABELED: int(lab.sum()),
        C.EVAL_ACCURACY: acc,
        "eval_accuracy_last5_mean": float(np.mean(evals[-5:])),
        C.PER_CLASS_ACCURACY: list(wf.per_class),
        C.FAL_LABELED_HIST: lab.tolist(),
        C.LABELED_TAIL_SHARE: class_balance(lab, np.asarray(st["tail"]))["tail_share"],
    }


def query_cycle(
    wf: Workflow, grid: Grid, fal: ActiveLearning, stage: int, arrays: ArrayRecord
) -> dict[str, Any]:
    """The query cycle after ``stage``: FairFAL's statistics phase where the strategy needs it,
    then every client's selection; updates ``fal.st`` and returns the cycle's record entries."""
    cfg, st, query = wf.cfg, fal.st, fal.query
    out: dict[str, Any] = {}
    payload: dict[str, Any] = {C.ARRAYS_KEY: arrays}
    if fal.needs_local:  # one initialisation shared by every client's local-only model
        theta0 = wf.build_model(derive_seed(int(cfg.seed), stage, 0x10CA1))
        payload[C.FAL_LOCAL_ARRAYS] = array_record(theta0.state_dict())
    base: dict[str, Any] = {C.FAL_CYCLE: stage, C.FAL_BUDGET: int(st["b"])}
    if query.needs_stats:
        stats = fal._ask(
            wf, grid, {C.CONFIG_KEY: {**base, C.FAL_PHASE: C.FAL_PHASE_STATS}, **payload}
        )
        g = [float(stats[p][C.FAL_IMBALANCE]) for p in sorted(stats)]
        computed = float(np.mean(g))
        out["fairfal_rbar_computed"] = computed
        out["fairfal_divergences"] = [float(stats[p][C.FAL_DIVERGENCE]) for p in sorted(stats)]
        out["fairfal_imbalances"] = g
        payload = {C.ARRAYS_KEY: arrays}  # L_k is kept on the client
        # Q1: the reference computes rbar in the first cycle only and keeps it.
        rbar = st["rbar"]
        frozen = bool(getattr(query, "freeze_rbar", False))
        use = computed if rbar is None or not frozen else rbar
        out[C.RBAR] = use
        st["rbar"] = float(use)
        base[C.FAL_RBAR] = float(use)
    picks = fal._ask(wf, grid, {C.CONFIG_KEY: {**base, C.FAL_PHASE: C.FAL_PHASE_SELECT}, **payload})
    order = sorted(picks)
    qh = np.sum([picks[p][C.FAL_QUERY_HIST] for p in order], axis=0)
    out[C.FAL_QUERY_HIST] = qh.tolist()
    out["query_hist_per_client"] = [list(picks[p][C.FAL_QUERY_HIST]) for p in order]
    for key in (C.FAL_USE_GLOBAL_UNC, C.FAL_USE_GLOBAL_GRAD, C.FAL_PSEUDO_ACC, C.FAL_QUOTAS):
        if key in picks[order[0]]:
            vals = [picks[p].get(key) for p in order]
            out[key] = [list(v) if isinstance(v, list) else v for v in vals]
    write_json_atomic(
        wf.run_dir / C.FAL_DIR / f"cycle_{stage}.json",
        {str(p): dict(picks[p].items()) for p in order},
    )
    for p in order:
        st["picks"][p] = [*st["picks"][p], *(int(i) for i in picks[p].get("picks", []))]
    st["cum_query"] = np.asarray(st["cum_query"]) + qh
    tail = np.asarray(st["tail"])
    qs = class_balance(qh, tail)
    out[C.QUERY_TAIL_SHARE] = qs["tail_share"]
    out[C.QUERY_ENTROPY] = qs["entropy"]
    out["query_min_max"] = qs["min_max"]
    out[C.QUERY_MISSING] = int((st["cum_query"] == 0).sum())
    st["query_tail"] = [*st["query_tail"], qs["tail_share"]]
    st["labeled_hist"] = np.sum([picks[p][C.FAL_LABELED_HIST] for p in order], axis=0)
    out.update(fal.cycle_extras(wf, [dict(picks[p].items()) for p in order]))
    return out
