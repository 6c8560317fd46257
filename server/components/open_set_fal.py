"""Open-set federated active learning (component ``open_set_fal``; spec ``open_set_fal.md``).

The clients' pools hold samples of classes outside the task (``open_set`` config group). This
component drives the same stages and query cycles as :class:`~server.components.fal.ActiveLearning`
with the open-set differences:

- budgets (section 1.4): the initial pool is ``int(N^kn_100 * initial_ratio / K)`` known samples
  per client, each cycle ``int(N_100 * query_ratio / K)`` picks over the whole pool, for
  ``open_set.cycles`` cycles;
- per cycle (section 7): micro and macro query precision, the precision lift over the known share
  of each client's unlabeled pool, the cumulative recall of known samples (with and without the
  initial pool), labels spent; per client in the cycle record;
- the summary: AULC over the spent ratio, mean precision over cycles, final recall.

The math is in :func:`cycle_metrics` and :func:`open_set_budgets` (pure functions).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp import Grid
from omegaconf import DictConfig

from fedsim import constants as C
from fedsim.errors import ConfigError
from fedsim.osal import open_set_spec
from server.components.base import register
from server.components.fal import ActiveLearning
from server.fal_math import aulc, tail_classes

if TYPE_CHECKING:
    from clients.query import QueryStrategy
    from fedsim.federation import Federation
    from server.workflow import Workflow

log = logging.getLogger("fedsim")

#: cycle-record keys (also TensorBoard ``osal/<key>``)
PRECISION = "query_precision"  # micro: known picks / picks, over the federation
PRECISION_MACRO = "query_precision_macro"
LIFT = "precision_lift"  # mean over clients of precision - known share before the query
RECALL = "known_recall"  # labeled known / known, the initial pool included
RECALL_QUERY = "known_recall_query"  # known picks so far / known unlabeled at the start
SPENT = "labels_spent"
SPENT_RATIO = "spent_ratio"


def open_set_budgets(
    pool_sizes: list[int], known_sizes: list[int], *, initial_ratio: float, query_ratio: float
) -> tuple[int, int]:
    """``(b0, b)`` per client: ``b0 = int(N^kn_100 * initial_ratio / K)`` with ``N^kn`` the
    federation's known samples, ``b = int(N_100 * query_ratio / K)`` with ``N`` the whole pool
    (``x_100``: rounded to the nearest hundred; K clients)."""
    k = len(pool_sizes)
    n100 = int(round(sum(pool_sizes) / 100.0)) * 100
    kn100 = int(round(sum(known_sizes) / 100.0)) * 100
    return int(kn100 * initial_ratio / k), int(n100 * query_ratio / k)


def cycle_metrics(replies: list[dict[str, Any]], initial_known: int) -> dict[str, Any]:
    """Federation metrics of one cycle from the clients' select replies (spec section 7).

    Parameters
    ----------
    replies
        Each client's reply: ``n_picks``, ``n_known_picks``, ``known_share_before``,
        ``labeled_known``, ``labeled_unknown``, ``known_count`` (after this query).
    initial_known
        Labeled known samples of the initial pools (for the query-only recall).
    """
    picks = np.array([r[C.OSAL_PICKS] for r in replies], dtype=np.float64)
    kp = np.array([r[C.OSAL_KNOWN_PICKS] for r in replies], dtype=np.float64)
    share = np.array([r[C.OSAL_KNOWN_SHARE] for r in replies], dtype=np.float64)
    lab_kn = float(sum(r[C.OSAL_LABELED_KNOWN] for r in replies))
    known = float(sum(r[C.OSAL_KNOWN] for r in replies))
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(picks > 0, kp / np.maximum(picks, 1), np.nan)
    has = picks > 0
    return {
        PRECISION: float(kp.sum() / picks.sum()) if picks.sum() else float("nan"),
        PRECISION_MACRO: float(np.mean(per[has])) if has.any() else float("nan"),
        LIFT: float(np.mean(per[has] - share[has])) if has.any() else float("nan"),
        RECALL: lab_kn / known if known else float("nan"),
        RECALL_QUERY: (
            (lab_kn - initial_known) / (known - initial_known)
            if known > initial_known
            else float("nan")
        ),
        "precision_per_client": [float(v) for v in per],
        "lift_per_client": [float(v) for v in per - share],
        "labeled_unknown_per_client": [int(r[C.OSAL_LABELED_UNKNOWN]) for r in replies],
        "labeled_known_per_client": [int(r[C.OSAL_LABELED_KNOWN]) for r in replies],
        "picks_per_client": [int(v) for v in picks],
    }


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` rows (Mann-Whitney: the
    probability that a positive outscores a negative, ties counting one half); NaN without both
    kinds."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_aurocs(
    wf: Workflow, arrays: Any, strategy: QueryStrategy | None = None
) -> dict[str, float]:
    """Known-vs-unknown AUROCs on the detection test set (spec section 1.5): the target's maximum
    softmax probability, and with a detector its known score ``1 - p_D(unknown)`` and the
    strategy's own known-score (:meth:`QueryStrategy.known_score`: LfOSA's MAV, EAOA's
    ``-e1``, BUAL's ``1 - p_aux(K)``, E2OAL's margin ``m``)."""
    import torch

    from clients.query.local_only import infer
    from fedsim.records import torch_state

    assert wf.federation.detection is not None
    x, known = wf.federation.detection
    model = wf.build_model()
    model.load_state_dict(torch_state(arrays))
    data = wf.federation.data
    kw: dict[str, Any] = {"device": wf.device, "batch_size": int(wf.cfg.eval_batch_size)}
    out = {"auroc_msp": auroc(infer(model, x, data.mean, data.std, **kw).probs.max(1), known)}
    det = getattr(model, "detector", None)
    if isinstance(det, torch.nn.Module):
        det_out = infer(det, x, data.mean, data.std, **kw)  # type: ignore[arg-type]
        out["auroc_detector"] = auroc(1.0 - det_out.probs[:, -1], known)
        z = det_out.logits if det_out.logits is not None else det_out.log_probs
        own = None if strategy is None else strategy.known_score(z, data.num_classes)
        if own is not None:
            out["auroc_method"] = auroc(own, known)
    return out


def _pool_stats(wf: Workflow, order: list[int]) -> list[dict[str, Any]]:
    """Each client's pool: size, known count, unknown share and the (hidden) source-class
    histogram (spec section 1.3; diagnostics only, from the simulated federation)."""
    from fedsim.data.open_set import pool_stats

    fed = wf.federation
    assert fed.source_y is not None
    k = fed.data.num_classes
    num_source = int(fed.source_y.max()) + 1
    y = fed.data.train_y.numpy()
    out = []
    for pid in order:
        part = fed.partitions[pid]
        stats = pool_stats(y[part], fed.source_y[part], k, num_source)
        out.append({"partition": pid, **stats})
        log.info(
            "open-set pool of client %d: %d samples, %d known, unknown share %.3f",
            pid,
            stats["pool_size"],
            stats["known"],
            stats["unknown_share"],
        )
    return out


def check_budgets(
    cfg: DictConfig, pools: list[int], known: list[int], b0: int, b: int, cycles: int
) -> None:
    """Refuse empty budgets, or a client whose pool cannot supply its initial pool and every
    cycle (unless ``fal.allow_shortfall``), with one line."""
    if b0 < 1 or b < 1:
        raise ConfigError(
            f"open-set FAL budgets of {sum(pools)} samples ({sum(known)} known) over "
            f"{len(pools)} clients are empty (initial {b0}, per cycle {b}): use more data, "
            "fewer clients or larger open_set.initial_ratio / query_ratio"
        )
    if bool(cfg.fal.allow_shortfall):
        return
    for pid, (n, kn) in enumerate(zip(pools, known, strict=True)):
        need = min(b0, kn) + cycles * b
        if need > n:
            raise ConfigError(
                f"open_set.cycles={cycles}: client {pid} holds {n} samples, but its initial "
                f"pool ({min(b0, kn)}) and {cycles} cycles of {b} need {need}: allowed "
                f"open_set.cycles <= {(n - min(b0, kn)) // b}, or fal.allow_shortfall=true"
            )


@register
class OpenSetActiveLearning(ActiveLearning):
    """FAL stages and query cycles on open-set pools (see the module docstring)."""

    name = "open_set_fal"
    summary_promises = (
        *ActiveLearning.summary_promises,
        "mean_query_precision",
        "final_known_recall",
    )

    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        return cfg.get("query") is not None and open_set_spec(cfg) is not None

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        from fedsim.data import load_dataset
        from fedsim.data.open_set import check_open_set

        for group in ("attack", "defense"):
            name = str((cfg.get(group) or {}).get("name", "none"))
            if name != "none":
                raise ConfigError(
                    f"open_set={cfg.open_set.name} with {group}={name}: open-set FAL runs "
                    f"without a backdoor {group}; allowed {group}=none"
                )
        spec = open_set_spec(cfg)
        data = load_dataset(
            str(cfg.dataset.name), root=str(cfg.dataset.root), download=bool(cfg.dataset.download)
        )
        check_open_set(spec, data.num_classes)
        if cfg.get("resume") and not bool(spec and spec.get("log_picks")):  # type: ignore[union-attr]
            raise ConfigError(
                "resume with open_set.log_picks=false: the pick positions stayed on the clients, "
                "so the labeled pools cannot be restored; allowed: open_set.log_picks=true runs"
            )

    @classmethod
    def check_data(cls, cfg: DictConfig, federation: Federation) -> None:
        """The budgets against the partition, before any work (again against the clients'
        replies in :meth:`on_nodes`)."""
        k = federation.data.num_classes
        y = federation.data.train_y.numpy()
        pools = [len(p) for p in federation.partitions]
        known = [int((y[p] < k).sum()) for p in federation.partitions]
        spec = open_set_spec(cfg) or {}
        b0, b = open_set_budgets(
            pools,
            known,
            initial_ratio=float(spec["initial_ratio"]),
            query_ratio=float(spec["query_ratio"]),
        )
        check_budgets(cfg, pools, known, b0, b, int(spec["cycles"]))

    # ---- setup --------------------------------------------------------------------------------
    def on_nodes(self, wf: Workflow, grid: Grid, *, resumed: bool) -> None:
        if resumed:
            super().on_nodes(wf, grid, resumed=True)
            return
        cfg, data = wf.cfg, wf.federation.data
        spec = open_set_spec(cfg) or {}
        k = data.num_classes
        sizes = self._ask(wf, grid, {C.CONFIG_KEY: {C.FAL_PHASE: C.FAL_PHASE_SIZE}})
        order = sorted(sizes)
        pools = [int(sizes[p][C.FAL_POOL_SIZE]) for p in order]
        known = [int(sizes[p][C.OSAL_KNOWN]) for p in order]
        b0, b = open_set_budgets(
            pools,
            known,
            initial_ratio=float(spec["initial_ratio"]),
            query_ratio=float(spec["query_ratio"]),
        )
        cycles = int(spec["cycles"])
        check_budgets(cfg, pools, known, b0, b, cycles)
        init = self._ask(
            wf, grid, {C.CONFIG_KEY: {C.FAL_PHASE: C.FAL_PHASE_INIT, C.FAL_BUDGET: b0}}
        )
        got = [int(init[p][C.FAL_LABELED]) for p in order]
        short = [p for p, g in zip(order, got, strict=True) if g < b0]
        if short:
            log.warning("open-set FAL: clients %s hold fewer than %d known samples", short, b0)
        n = sum(pools)
        spent0 = sum(got)
        ratios = [round((spent0 + s * b * len(pools)) / n, 6) for s in range(cycles + 1)]
        log.info(
            "open-set FAL: N=%d (%d known), b0=%d known, b=%d per client, %d cycles",
            n,
            sum(known),
            b0,
            b,
            cycles,
        )
        y = data.train_y.numpy()[wf.federation.train_indices]
        counts = np.bincount(y[y < k], minlength=k)
        self.st = {
            "b0": b0,
            "b": b,
            "ratios": ratios,
            "pool_size": n,
            "known_size": sum(known),
            "tail": tail_classes(counts).tolist(),
            "labeled_hist": np.sum([init[p][C.FAL_LABELED_HIST] for p in order], axis=0),
            "cum_query": np.zeros(k, dtype=np.int64),
            "rbar": None,
            "stage_acc": [],
            "stage_evals": [],
            "query_tail": [],
            "picks": {p: [] for p in sorted(wf.node_of)},
            "initial_known": spent0,
            "spent": [spent0],
            "labeled_known": [spent0],
            "precision": [],
            "recall": [],
            "pool_stats": _pool_stats(wf, order),
        }

    def train_config(self, wf: Workflow, server_round: int) -> dict[str, Any]:
        from clients.osal import STAGE_KEY

        return {**super().train_config(wf, server_round), STAGE_KEY: int(wf.stage)}

    # ---- cycles -------------------------------------------------------------------------------
    def cycle_extras(self, wf: Workflow, replies: list[dict[str, Any]]) -> dict[str, Any]:
        st = self.st
        out = cycle_metrics(replies, int(st["initial_known"]))
        spent = int(st["spent"][-1]) + sum(int(r[C.OSAL_PICKS]) for r in replies)
        st["spent"] = [*st["spent"], spent]
        st["labeled_known"] = [
            *st["labeled_known"],
            sum(int(r[C.OSAL_LABELED_KNOWN]) for r in replies),
        ]
        st["precision"] = [*st["precision"], out[PRECISION]]
        st["recall"] = [*st["recall"], out[RECALL]]
        out[SPENT] = spent
        out[SPENT_RATIO] = spent / float(st["pool_size"])
        for key in {k for r in replies for k in r if str(k).startswith("osal_")}:
            vals = [float(r[key]) for r in replies if key in r]
            out[key] = float(np.mean(vals))
        if wf.writer is not None:
            wf.writer.log_scalars(
                {f"osal/{k}": out[k] for k in (PRECISION, PRECISION_MACRO, LIFT, RECALL)},
                step=len(st["precision"]) - 1,
            )
        return out

    def on_stage_end(self, wf: Workflow, grid: Grid, stage: int, arrays: Any) -> dict[str, Any]:
        record = super().on_stage_end(wf, grid, stage, arrays)
        st = self.st
        record["labels_spent_before"] = int(st["spent"][stage])
        record["labeled_known_before"] = int(st["labeled_known"][stage])
        if wf.federation.detection is not None:
            aurocs = detection_aurocs(wf, arrays, self.query)
            record.update(aurocs)
            st["auroc"] = [*st.get("auroc", []), aurocs]
        return record

    def summary(self, wf: Workflow, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().summary(wf, rounds)
        st = self.st
        spent = [s / float(st["pool_size"]) for s in st["spent"][: len(st["stage_acc"])]]
        out[C.AULC] = aulc(spent, st["stage_acc"])
        out[C.LABELED_RATIOS] = spent
        out["labels_spent"] = list(st["spent"])
        out["mean_query_precision"] = (
            float(np.nanmean(st["precision"])) if st["precision"] else None
        )
        out["final_known_recall"] = st["recall"][-1] if st["recall"] else None
        out["query_precisions"] = list(st["precision"])
        out["known_recalls"] = list(st["recall"])
        out["known_size"] = st["known_size"]
        out["client_pools"] = st["pool_stats"]
        if st.get("auroc"):
            out["final_auroc_msp"] = st["auroc"][-1]["auroc_msp"]
            out["final_auroc_detector"] = st["auroc"][-1].get("auroc_detector")
            out["final_auroc_method"] = st["auroc"][-1].get("auroc_method")
        out["open_set"] = str((open_set_spec(wf.cfg) or {}).get("mode"))
        return out
