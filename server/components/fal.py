"""Federated active learning (component ``fal``): a stage driver. Each stage is ``cfg.rounds``
FL rounds on the clients' labeled pools; between stages a query cycle lets every client pick
samples to label (FAL/FairFAL spec, sections 1, 5, 9, 11).

The query phase runs on the clients through ``query.fal`` messages (``clients/fal.py``): the
server ships only models, budgets and FairFAL's scalar ``rbar``, and receives scalars, class
histograms and the positions each client picked (kept so that a resumed run can restore every
client's labeled pool). Budgets and pool sizes are checked against the partition before any work.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig

from clients.fal import PHASE_RESTORE, PICKS_KEY
from clients.query import build_query
from fedsim import constants as C
from fedsim.errors import ConfigError
from fedsim.osal import open_set_spec
from fedsim.records import array_record
from fedsim.seeding import derive_seed
from fedsim.ssfl import ssfl_setting
from server.components.base import Component, register
from server.components.fal_cycle import query_cycle, stage_record
from server.fal_math import aulc, fal_budgets, tail_classes
from server.rounds import ask_all

if TYPE_CHECKING:
    from fedsim.federation import Federation
    from server.workflow import Workflow

log = logging.getLogger("fedsim")


def plan(cfg: DictConfig, sizes: list[int]) -> tuple[int, int, list[float]]:
    """``(b0, b, ratios)`` for pools of ``sizes`` (see :func:`~server.fal_math.fal_budgets`)."""
    fal = cfg.fal
    return fal_budgets(
        sum(sizes),
        len(sizes),
        initial_ratio=float(fal.initial_ratio),
        query_ratio=float(fal.query_ratio),
        end_ratio=float(fal.end_ratio),
    )


def check_budgets(cfg: DictConfig, sizes: list[int]) -> None:
    """Refuse budgets that are empty, or that some client's pool cannot supply (a shortfall,
    unless ``fal.allow_shortfall``), with one line naming the largest ``fal.end_ratio`` that fits."""
    b0, b, ratios = plan(cfg, sizes)
    if b0 < 1 or b < 1:
        raise ConfigError(
            f"FAL budgets of {sum(sizes)} samples over {len(sizes)} clients are empty "
            f"(initial {b0}, per cycle {b}): use more data, fewer clients or larger fal ratios"
        )
    if bool(cfg.fal.allow_shortfall):
        return
    cycles = len(ratios) - 1
    fits = min((n - min(b0, n)) // b for n in sizes)
    if fits >= cycles:
        return
    pid = int(np.argmin(sizes))
    need = min(b0, sizes[pid]) + cycles * b
    most = f"<= {ratios[fits]}" if fits < len(ratios) else ""
    raise ConfigError(
        f"fal.end_ratio={cfg.fal.end_ratio}: client {pid} holds {sizes[pid]} samples, but its "
        f"initial pool ({min(b0, sizes[pid])}) and {cycles} query cycles of {b} need {need}: "
        f"allowed fal.end_ratio {most} for this partition, or fal.allow_shortfall=true"
    )


@register
class ActiveLearning(Component):
    """FAL stages and query cycles (see the module docstring)."""

    name = "fal"
    order = 40
    drives_stages = True
    summary_promises: ClassVar[tuple[str, ...]] = (
        C.AULC,
        C.MEAN_STAGE_ACCURACY,
        C.STAGE_ACCURACIES,
        C.LABELED_RATIOS,
    )

    def __init__(self) -> None:
        self.st: dict[str, Any] = {}

    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        return cfg.get("query") is not None and open_set_spec(cfg) is None

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        setting = ssfl_setting(cfg)
        if setting != "none":
            raise ConfigError(
                f"query={cfg.query.name} with ssfl={setting}: active learning decides which "
                "samples are labeled, and so does the SSFL setting; use one of them (FAL with "
                "weak labels works: e.g. weak_labels=noisy for a noisy oracle)"
            )
        kind = str(cfg.get("weak_labels", {}).get("name", "clean"))
        if kind in ("semi", "partial"):
            raise ConfigError(
                f"query={cfg.query.name} with weak_labels={kind}: the FAL oracle reveals one "
                "label per picked sample; allowed weak_labels=clean or noisy"
            )

    @classmethod
    def check_data(cls, cfg: DictConfig, federation: Federation) -> None:
        check_budgets(cfg, [len(p) for p in federation.partitions])

    def state_dict(self) -> dict[str, Any]:
        return dict(self.st)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.st = dict(state)

    # ---- setup --------------------------------------------------------------------------------
    def setup(self, wf: Workflow) -> None:
        cfg = wf.cfg
        self.query = build_query(
            str(cfg.query.name), {k: v for k, v in cfg.query.items() if k != "name"}
        )
        needed = self.query.models()
        self.save_last_local = "last_local" in needed
        self.needs_local = "local_only" in needed
        n = cfg.fal.get("test_subset")
        if n is not None and int(n) < len(wf.eval_idx):
            rng = np.random.default_rng(derive_seed(int(cfg.seed), 0x7E57))
            keep = np.sort(rng.permutation(len(wf.eval_idx))[: int(n)])
            wf.eval_idx = wf.eval_idx[torch.from_numpy(keep)]

    def _ask(self, wf: Workflow, grid: Grid, content: dict[str, Any]) -> dict[int, dict[str, Any]]:
        config = content[C.CONFIG_KEY]
        phase = (config(min(wf.node_of)) if callable(config) else config)[C.FAL_PHASE]
        return ask_all(
            grid,
            wf.node_of,
            f"query.{C.FAL_QUERY_ACTION}",
            content,
            timeout=float(wf.cfg.round_timeout),
            what=f"FAL phase {phase!r}",
        )

    def on_nodes(self, wf: Workflow, grid: Grid, *, resumed: bool) -> None:
        cfg, data = wf.cfg, wf.federation.data
        if resumed:  # the clients' pools: the seeded initial pool plus every pick so far
            picks = self.st["picks"]
            self._ask(
                wf,
                grid,
                {
                    C.CONFIG_KEY: lambda pid: {
                        C.FAL_PHASE: PHASE_RESTORE,
                        C.FAL_BUDGET: int(self.st["b0"]),
                        PICKS_KEY: [int(i) for i in picks[pid]],
                    }
                },
            )
            return
        sizes = self._ask(wf, grid, {C.CONFIG_KEY: {C.FAL_PHASE: C.FAL_PHASE_SIZE}})
        pools = [int(sizes[p][C.FAL_POOL_SIZE]) for p in sorted(sizes)]
        check_budgets(cfg, pools)
        b0, b, ratios = plan(cfg, pools)
        log.info("FAL: N=%d, b0=%d, b=%d per client, ratios %s", sum(pools), b0, b, ratios)
        init = self._ask(
            wf, grid, {C.CONFIG_KEY: {C.FAL_PHASE: C.FAL_PHASE_INIT, C.FAL_BUDGET: b0}}
        )
        counts = np.bincount(
            data.train_y.numpy()[wf.federation.train_indices], minlength=data.num_classes
        )
        self.st = {
            "b0": b0,
            "b": b,
            "ratios": ratios,
            "pool_size": sum(pools),
            "tail": tail_classes(counts).tolist(),
            "labeled_hist": np.sum([m[C.FAL_LABELED_HIST] for m in init.values()], axis=0),
            "cum_query": np.zeros(data.num_classes, dtype=np.int64),
            "rbar": None,
            "stage_acc": [],
            "stage_evals": [],
            "query_tail": [],
            "picks": {p: [] for p in sorted(wf.node_of)},
        }

    def cycle_extras(self, wf: Workflow, replies: list[dict[str, Any]]) -> dict[str, Any]:
        """More entries of a cycle's record from the clients' select replies (in partition
        order); closed-set FAL adds none."""
        return {}

    # ---- stages -------------------------------------------------------------------------------
    def num_stages(self, wf: Workflow) -> int:
        return len(self.st["ratios"])

    def on_stage_start(self, wf: Workflow, stage: int, arrays: ArrayRecord | None) -> ArrayRecord:
        self.st["stage_evals"] = []
        if arrays is None or str(wf.cfg.fal.reset) == "random":
            model = wf.build_model(derive_seed(int(wf.cfg.seed), stage, 0x57A6E))
            return array_record(model.state_dict())
        return arrays

    def train_config(self, wf: Workflow, server_round: int) -> dict[str, Any]:
        fal, rounds = wf.cfg.fal, int(wf.cfg.rounds)
        decay = math.floor(float(fal.lr_decay_at) * rounds)
        out: dict[str, Any] = {
            C.FAL_LR_SCALE: float(fal.lr_gamma) if wf.stage_round > decay else 1.0
        }
        if self.save_last_local and wf.stage_round == rounds:
            out[C.FAL_SAVE_LAST_LOCAL] = True
        return out

    def round_record(
        self, wf: Workflow, server_round: int, train_metrics: dict[str, Any]
    ) -> dict[str, Any]:
        return {C.STAGE: wf.stage, C.LABELED_RATIO: self.st["ratios"][wf.stage]}

    def evaluate(self, wf: Workflow, server_round: int, model: Any, base: dict[str, Any]) -> dict:
        acc = float(base[C.EVAL_ACCURACY])
        self.st["stage_evals"].append(acc)
        if wf.writer is not None:
            wf.writer.log_scalars({f"fal/stage_{wf.stage}/test_acc": acc}, step=wf.stage_round)
        return {}

    def on_stage_end(
        self, wf: Workflow, grid: Grid, stage: int, arrays: ArrayRecord
    ) -> dict[str, Any]:
        st = self.st
        record = stage_record(wf, st, stage)
        if stage < len(st["ratios"]) - 1:
            record.update(query_cycle(wf, grid, self, stage, arrays))
        if wf.writer is not None:
            wf.writer.log_scalars(
                {tag: record.get(key) for key, tag in C.TB_FAL_TAGS.items()}, step=stage
            )
        log.info(
            "FAL stage %d (ratio %.2f): test accuracy %.4f",
            stage,
            st["ratios"][stage],
            record[C.EVAL_ACCURACY],
        )
        return record

    # ---- the end ------------------------------------------------------------------------------
    def summary(self, wf: Workflow, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        st = self.st
        qtail = st["query_tail"]
        return {
            C.AULC: aulc(st["ratios"], st["stage_acc"]),
            C.MEAN_STAGE_ACCURACY: float(np.mean(st["stage_acc"])),
            C.STAGE_ACCURACIES: list(st["stage_acc"]),
            C.LABELED_RATIOS: list(st["ratios"]),
            C.QUERY_TAIL_SHARE: float(np.mean(qtail)) if qtail else None,
            "query_hist_total": np.asarray(st["cum_query"]).tolist(),
            "labeled_hist_final": np.asarray(st["labeled_hist"]).tolist(),
            "budget_initial": st["b0"],
            "budget_per_cycle": st["b"],
            "pool_size": st["pool_size"],
            "query": str(wf.cfg.query.name),
        }
