"""Federated active learning: stages of FL training on the clients' labeled pools, separated by
query cycles in which the clients pick samples to label (FAL/FairFAL spec, sections 1, 5, 9, 11).

:class:`FALWorkflow` reuses :class:`~server.workflow.FLWorkflow`'s node discovery, round, evaluation
and strategy plumbing; a whole FAL run is one Flower run. The query phase runs on the clients
through ``query.fal`` messages (``clients/fal.py``): the server ships only models, budgets and
FairFAL's scalar ``rbar``, and receives scalars and class histograms. The pure functions here
(budgets, AULC, class-balance statistics) are what the tests check by hand.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from clients.query import build_query
from fedsim import constants as C
from fedsim.checkpoint import save_checkpoint
from fedsim.config import clients_per_round, resolve_device
from fedsim.errors import ConfigError
from fedsim.federation import build_federation
from fedsim.models import ClassifierModel, build_model
from fedsim.outputs import RunWriter, plot_accuracy, read_metrics, write_json_atomic, write_summary
from fedsim.records import array_record, torch_state
from fedsim.seeding import derive_seed, sample_partitions
from server.fal_math import (
    RESETS,
    aulc,
    class_balance,
    evaluate_per_class,
    fal_budgets,
    tail_classes,
    validate_fal,
)
from server.messaging import send_and_receive
from server.workflow import FLWorkflow
from strategies import build_strategy

log = logging.getLogger("fedsim")


# ---- the workflow -----------------------------------------------------------------------------
class FALWorkflow(FLWorkflow):
    """FAL stages (``cfg.rounds`` FL rounds each) and query cycles; see the module docstring."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self._stage_round = 1
        self._save_last_local = False

    # hooks
    def train_config(self, server_round: int) -> dict[str, Any]:
        fal = self.cfg.fal
        rounds = int(self.cfg.rounds)
        decay = math.floor(float(fal.lr_decay_at) * rounds)
        scale = float(fal.lr_gamma) if self._stage_round > decay else 1.0
        out: dict[str, Any] = {C.FAL_LR_SCALE: scale}
        if self._save_last_local and self._stage_round == rounds:
            out[C.FAL_SAVE_LAST_LOCAL] = True
        return out

    def _test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.federation.data
        n = self.cfg.fal.get("test_subset")
        if n is None or int(n) >= int(data.test_y.shape[0]):
            return data.test_x, data.test_y
        rng = np.random.default_rng(derive_seed(int(self.cfg.seed), 0x7E57))
        idx = torch.from_numpy(np.sort(rng.permutation(int(data.test_y.shape[0]))[: int(n)]))
        return data.test_x[idx], data.test_y[idx]

    def evaluate(self, server_round: int, model: ClassifierModel) -> dict[str, float]:
        """Test loss, accuracy and per-class accuracy in one batched pass (on a seeded subset of
        ``fal.test_subset`` test images when set)."""
        data = self.federation.data
        x, y = self._test_split()
        loss, acc, pca = evaluate_per_class(
            model,
            x,
            y,
            data.mean,
            data.std,
            device=self.device,
            batch_size=int(self.cfg.eval_batch_size),
            num_classes=data.num_classes,
        )
        self._per_class = pca
        return {C.EVAL_LOSS: loss, C.EVAL_ACCURACY: acc}

    def _model(self, seed: int) -> ClassifierModel:
        data = self.federation.data
        torch.manual_seed(seed)
        return build_model(
            str(self.cfg.model.name),
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            params=dict(self.cfg.model.get("params") or {}),
        ).to(self.device)

    def _ask(
        self, grid: Grid, config: dict[str, Any], arrays: dict[str, Any] | None = None
    ) -> dict[int, dict[str, Any]]:
        """Send one ``query.fal`` message to every client; their metrics by partition id."""
        pid_of = {nid: pid for pid, nid in self.node_of.items()}
        messages = []
        for pid in sorted(self.node_of):
            content = RecordDict({C.CONFIG_KEY: ConfigRecord(config)})
            for key, rec in (arrays or {}).items():
                content[key] = rec
            messages.append(
                Message(
                    content,
                    dst_node_id=self.node_of[pid],
                    message_type=f"query.{C.FAL_QUERY_ACTION}",
                )
            )
        replies = send_and_receive(grid, messages, timeout=float(self.cfg.round_timeout))
        out: dict[int, dict[str, Any]] = {}
        for reply in replies:
            pid = pid_of.get(reply.metadata.src_node_id, -1)
            if reply.has_error():
                raise RuntimeError(
                    f"FAL phase {config[C.FAL_PHASE]!r}: client {pid} failed: {reply.error.reason}"
                )
            out[pid] = dict(reply.content.metric_records[C.METRICS_KEY])
        missing = sorted(set(self.node_of) - set(out))
        if missing:
            raise RuntimeError(
                f"FAL phase {config[C.FAL_PHASE]!r}: no reply from clients {missing}"
            )
        return out

    def run(self, grid: Grid) -> dict[str, Any]:
        """Run every stage and query cycle; return the summary (with AULC)."""
        cfg = self.cfg
        fal = cfg.fal
        self.device = torch.device(resolve_device(str(cfg.device)))
        self.federation = build_federation(cfg)
        data = self.federation.data
        nc = data.num_classes
        query = build_query(
            str(cfg.query.name), {k: v for k, v in cfg.query.items() if k != "name"}
        )
        models_needed = query.models()
        self._save_last_local = "last_local" in models_needed
        needs_local = "local_only" in models_needed
        self.discover_nodes(grid)
        k = clients_per_round(cfg)
        n_clients = int(cfg.num_clients)
        rounds = int(cfg.rounds)
        train_counts = np.bincount(
            data.train_y.numpy()[self.federation.train_indices], minlength=nc
        )
        tail = tail_classes(train_counts)
        sizes = self._ask(grid, {C.FAL_PHASE: C.FAL_PHASE_SIZE})
        n_total = sum(int(m[C.FAL_POOL_SIZE]) for m in sizes.values())
        b0, b, ratios = fal_budgets(
            n_total,
            n_clients,
            initial_ratio=float(fal.initial_ratio),
            query_ratio=float(fal.query_ratio),
            end_ratio=float(fal.end_ratio),
        )
        if b0 < 1 or b < 1:
            raise ConfigError(
                f"FAL budgets of {n_total} samples over {n_clients} clients are empty "
                f"(initial {b0}, per cycle {b}): use more data or fewer clients"
            )
        log.info("FAL: N=%d, b0=%d, b=%d per client, ratios %s", n_total, b0, b, ratios)
        init = self._ask(grid, {C.FAL_PHASE: C.FAL_PHASE_INIT, C.FAL_BUDGET: b0})
        labeled_hist = np.sum([m[C.FAL_LABELED_HIST] for m in init.values()], axis=0)
        cum_query = np.zeros(nc, dtype=np.int64)
        rbar: float | None = None
        stage_acc: list[float] = []
        gr = 0
        t0 = time.monotonic()
        arrays = None
        fal_dir = self.run_dir / C.FAL_DIR
        with RunWriter(self.run_dir, tensorboard=bool(cfg.tensorboard)).open() as writer:
            for s, ratio in enumerate(ratios):
                if arrays is None or str(fal.reset) == "random":
                    model = self._model(derive_seed(int(cfg.seed), s, 0x57A6E))
                    arrays = array_record(model.state_dict())
                strategy = build_strategy(cfg)
                stage_evals: list[float] = []
                for r in range(1, rounds + 1):
                    gr += 1
                    self._stage_round = r
                    t_round = time.monotonic()
                    sampled = sample_partitions(int(cfg.seed), gr, n_clients, k)
                    arrays, tm, failures = self.train_round(grid, strategy, gr, arrays, sampled)
                    record: dict[str, Any] = {
                        C.ROUND: gr,
                        C.STAGE: s,
                        C.LABELED_RATIO: ratio,
                        C.TRAIN_LOSS: tm.get(C.TRAIN_LOSS),
                        C.TRAIN_ACCURACY: tm.get(C.TRAIN_ACCURACY),
                        C.CLIENTS_SAMPLED: sampled,
                        C.FAILURES: failures,
                    }
                    if r % int(cfg.eval_every) == 0 or r == rounds:
                        model.load_state_dict(torch_state(arrays))
                        record.update(self.evaluate(gr, model))
                        stage_evals.append(float(record[C.EVAL_ACCURACY]))
                        writer.log_scalars(
                            {f"fal/stage_{s}/test_acc": record[C.EVAL_ACCURACY]}, step=r
                        )
                    now = time.monotonic()
                    record[C.ROUND_SECONDS] = now - t_round
                    record[C.WALL_SECONDS] = now - t0
                    record[C.TIMESTAMP] = time.time()
                    writer.log_round(record)
                    self._progress(record, rounds * len(ratios))
                save_checkpoint(
                    self.run_dir, gr, {"arrays": {n: v.numpy() for n, v in arrays.items()}}
                )
                pca = self._per_class
                acc = stage_evals[-1]
                stage_acc.append(acc)
                lab_stats = class_balance(labeled_hist, tail)
                stage: dict[str, Any] = {
                    C.ROUND: gr,
                    C.RECORD_KIND: "stage",
                    C.STAGE: s,
                    C.LABELED_RATIO: ratio,
                    C.FAL_LABELED: int(labeled_hist.sum()),
                    C.EVAL_ACCURACY: acc,
                    "eval_accuracy_last5_mean": float(np.mean(stage_evals[-5:])),
                    C.PER_CLASS_ACCURACY: pca,
                    C.FAL_LABELED_HIST: labeled_hist.tolist(),
                    C.LABELED_TAIL_SHARE: lab_stats["tail_share"],
                }
                if s < len(ratios) - 1:
                    stage.update(
                        self._query_cycle(grid, query, s, arrays, b, rbar, needs_local, fal_dir)
                    )
                    if C.RBAR in stage:
                        rbar = float(stage[C.RBAR])
                    qh = np.asarray(stage[C.FAL_QUERY_HIST])
                    cum_query += qh
                    qs = class_balance(qh, tail)
                    stage[C.QUERY_TAIL_SHARE] = qs["tail_share"]
                    stage[C.QUERY_ENTROPY] = qs["entropy"]
                    stage["query_min_max"] = qs["min_max"]
                    stage[C.QUERY_MISSING] = int((cum_query == 0).sum())
                    labeled_hist = np.asarray(stage.pop("labeled_hist_after"))
                stage[C.WALL_SECONDS] = time.monotonic() - t0
                stage[C.TIMESTAMP] = time.time()
                writer.log_round(stage)
                writer.log_scalars(
                    {tag: stage.get(key) for key, tag in C.TB_FAL_TAGS.items()}, step=s
                )
                log.info("FAL stage %d (ratio %.2f): test accuracy %.4f", s, ratio, acc)
        rounds_only = [r for r in read_metrics(self.run_dir) if r.get(C.RECORD_KIND) != "stage"]
        qtail = [
            r[C.QUERY_TAIL_SHARE]
            for r in read_metrics(self.run_dir)
            if r.get(C.RECORD_KIND) == "stage" and C.QUERY_TAIL_SHARE in r
        ]
        extra = {
            C.AULC: aulc(ratios, stage_acc),
            C.MEAN_STAGE_ACCURACY: float(np.mean(stage_acc)),
            C.STAGE_ACCURACIES: stage_acc,
            C.LABELED_RATIOS: ratios,
            C.QUERY_TAIL_SHARE: float(np.mean(qtail)) if qtail else None,
            "query_hist_total": cum_query.tolist(),
            "labeled_hist_final": labeled_hist.tolist(),
            "budget_initial": b0,
            "budget_per_cycle": b,
            "pool_size": n_total,
            "query": str(cfg.query.name),
        }
        summary = write_summary(self.run_dir, rounds_only, seed=int(cfg.seed), extra=extra)
        plot_accuracy(self.run_dir, rounds_only)
        self.on_run_end(summary)
        return summary

    def _query_cycle(
        self,
        grid: Grid,
        query: Any,
        s: int,
        arrays: Any,
        budget: int,
        rbar: float | None,
        needs_local: bool,
        fal_dir: Path,
    ) -> dict[str, Any]:
        """One query cycle after stage ``s``; the cycle's record entries."""
        cfg = self.cfg
        out: dict[str, Any] = {}
        payload: dict[str, Any] = {C.ARRAYS_KEY: arrays}
        if needs_local:  # one initialisation shared by every client's local-only model
            theta0 = self._model(derive_seed(int(cfg.seed), s, 0x10CA1))
            payload[C.FAL_LOCAL_ARRAYS] = array_record(theta0.state_dict())
        base: dict[str, Any] = {C.FAL_CYCLE: s, C.FAL_BUDGET: budget}
        if query.needs_stats:
            stats = self._ask(grid, {**base, C.FAL_PHASE: C.FAL_PHASE_STATS}, payload)
            g = [float(stats[p][C.FAL_IMBALANCE]) for p in sorted(stats)]
            computed = float(np.mean(g))
            out["fairfal_rbar_computed"] = computed
            out["fairfal_divergences"] = [float(stats[p][C.FAL_DIVERGENCE]) for p in sorted(stats)]
            out["fairfal_imbalances"] = g
            payload = {C.ARRAYS_KEY: arrays}  # L_k is kept on the client
            # Q1: the reference computes rbar in the first cycle only and keeps it.
            use = computed if rbar is None or not bool(query.freeze_rbar) else rbar
            out[C.RBAR] = use
            base[C.FAL_RBAR] = float(use)
        picks = self._ask(grid, {**base, C.FAL_PHASE: C.FAL_PHASE_SELECT}, payload)
        order = sorted(picks)
        out[C.FAL_QUERY_HIST] = np.sum([picks[p][C.FAL_QUERY_HIST] for p in order], axis=0).tolist()
        out["labeled_hist_after"] = np.sum(
            [picks[p][C.FAL_LABELED_HIST] for p in order], axis=0
        ).tolist()
        out["query_hist_per_client"] = [list(picks[p][C.FAL_QUERY_HIST]) for p in order]
        for key in (C.FAL_USE_GLOBAL_UNC, C.FAL_USE_GLOBAL_GRAD, C.FAL_PSEUDO_ACC, C.FAL_QUOTAS):
            if key in picks[order[0]]:
                vals = [picks[p].get(key) for p in order]
                out[key] = [list(v) if isinstance(v, list) else v for v in vals]
        write_json_atomic(
            fal_dir / f"cycle_{s}.json",
            {str(p): {k: v for k, v in picks[p].items()} for p in order},
        )
        return out


__all__ = [
    "FALWorkflow",
    "aulc",
    "class_balance",
    "fal_budgets",
    "evaluate_per_class",
    "tail_classes",
    "validate_fal",
    "RESETS",
]
