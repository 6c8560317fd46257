"""The one FL workflow: stages of rounds (seeded sampling, local training, validated aggregation,
evaluation, metrics, checkpoints), with the run's features plugged in as components
(:mod:`server.components`).

One round's flow through the components (``c`` runs over them in their ``order``)::

    sampled  = c.sample(...) or the seeded default      # e.g. exact attacker counts
    trainers = c.trainers(sampled)                       # e.g. SSFL: clients that can train
    strategy = c.round_strategy(strategy, arrays)        # e.g. SSFL: a reply filter
    arrays   = aggregate(train(trainers))                # retries on too few usable replies
    arrays   = c.after_aggregate(arrays, metrics)        # e.g. SSFL's server step
    record  += c.round_record(...), evaluation + c.evaluate(...)
    checkpoint: arrays, the strategy's own state and every component's state_dict()

A stage driver (FAL) splits the run into stages of ``cfg.rounds`` rounds:
``on_stage_start`` gives a stage's first model, ``on_stage_end`` runs the query cycle. Retries,
federated evaluation, checkpoints and resume work the same inside every stage. After the last
round, ``summary`` and ``on_run_end`` (post-training defenses) add to the summary.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from fedsim import constants as C
from fedsim.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fedsim.config import clients_per_round, config_summary, resolve_device
from fedsim.errors import RunStopped
from fedsim.evaluation import evaluate_per_class
from fedsim.federation import Federation, build_federation
from fedsim.models import ClassifierModel, model_for
from fedsim.outputs import RunWriter, plot_accuracy, read_metrics, write_summary
from fedsim.records import array_record, torch_state
from fedsim.seeding import sample_partitions
from server.components import Component, build_components
from server.rounds import (
    TooFewReplies,
    discover_nodes,
    federated_evaluate,
    keep_dtypes,
    train_clients,
)
from server.workflow_parts import Holdout, client_state_warning, progress_line
from strategies import build_strategy
from strategies.state import bind_partitions, load_strategy_state, strategy_state

log = logging.getLogger("fedsim")

__all__ = ["Workflow", "FLWorkflow", "TooFewReplies", "keep_dtypes", "config_summary"]


class Workflow:
    """Federated training for ``cfg`` in ``run_dir`` with ``components`` plugged in.

    Parameters
    ----------
    cfg
        The resolved fedsim config.
    run_dir
        The run directory (metrics, checkpoints, TensorBoard, plots).
    components
        The active components (default: those ``cfg`` turns on).
    """

    def __init__(
        self, cfg: DictConfig, run_dir: Path, components: list[Component] | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.components = build_components(cfg) if components is None else components
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.last_sampled: list[int] = []
        self.per_class: list[float] = []  # of the last evaluation
        self.stage = 0
        self.stage_round = 0  # 1-based round within the stage
        self.writer: RunWriter | None = None

    # ---- what components use ----------------------------------------------------------------------
    def component(self, name: str) -> Component | None:
        """The active component called ``name``."""
        return next((c for c in self.components if c.name == name), None)

    def build_model(self, seed: int | None = None) -> ClassifierModel:
        """A model of the configured architecture on the workflow's device, initialised from
        ``seed`` (default: the run's seed)."""
        data = self.federation.data
        torch.manual_seed(int(self.cfg.seed) if seed is None else seed)
        return model_for(self.cfg, data).to(self.device)

    def evaluate_on(
        self, model: ClassifierModel, idx: torch.Tensor | None = None
    ) -> tuple[float, float, list[float]]:
        """Loss, accuracy and per-class accuracy of ``model`` on the test images ``idx`` (default:
        the evaluation set), in one batched pass."""
        data = self.federation.data
        idx = self.eval_idx if idx is None else idx
        return evaluate_per_class(
            model,
            data.test_x[idx],
            data.test_y[idx],
            mean=data.mean,
            std=data.std,
            device=self.device,
            batch_size=int(self.cfg.eval_batch_size),
            num_classes=data.num_classes,
        )

    # ---- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build the federation, the server's held-out sets and every component (no messages)."""
        cfg = self.cfg
        self.device = torch.device(resolve_device(str(cfg.device)))
        self.federation: Federation = build_federation(cfg)
        n_test = int(self.federation.data.test_y.shape[0])
        self.eval_idx = torch.arange(n_test)
        self.holdout: Holdout | None = None
        if any("holdout" in c.needs for c in self.components):
            self.holdout = Holdout.from_config(cfg, self.federation.data.test_y.numpy())
            self.eval_idx = self.holdout.clean
        for c in self.components:
            c.setup(self)
        self.driver = next((c for c in self.components if c.drives_stages), None)

    def strategy(self) -> Strategy:
        """A fresh strategy, wrapped by the components, bound to this run's nodes."""
        strategy = build_strategy(self.cfg)
        for c in self.components:
            strategy = c.wrap_strategy(self, strategy)
        bind_partitions(strategy, self.node_of)
        return strategy

    def sample(self, server_round: int, attempt: int = 0) -> list[int]:
        """The partitions that train in ``server_round`` (seeded; ``attempt`` > 0 on a retry)."""
        k = clients_per_round(self.cfg)
        for c in self.components:
            chosen = c.sample(self, server_round, k, attempt)
            if chosen is not None:
                return chosen
        return sample_partitions(
            int(self.cfg.seed), server_round, int(self.cfg.num_clients), k, attempt
        )

    # ---- one round ----------------------------------------------------------------------------
    def train_round(
        self, grid: Grid, strategy: Strategy, server_round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, dict[str, Any], dict[str, Any]]:
        """Sample, train and aggregate one round; on too few usable replies, retry with a fresh
        seeded sample (``too_few_replies=retry``, up to ``round_retries`` times) or stop.

        Returns the new arrays, the train metrics and the round's bookkeeping (sampled clients,
        failures, failed clients, retries).

        Raises
        ------
        RunStopped
            When the round cannot get ``min_clients`` usable replies.
        """
        cfg = self.cfg
        retry = cfg.get("too_few_replies") == "retry"
        retries = int(cfg.get("round_retries") or 0) if retry else 0
        failed: list[dict[str, Any]] = []
        config: dict[str, Any] = {}
        for c in self.components:
            config.update(c.train_config(self, server_round))
        for attempt in range(retries + 1):
            sampled = self.last_sampled = self.sample(server_round, attempt)
            trainers = sampled
            round_strategy = strategy
            for c in self.components:
                trainers = c.trainers(self, trainers)
                round_strategy = c.round_strategy(self, round_strategy, arrays)
            try:
                new, metrics, bad = (
                    train_clients(
                        grid,
                        round_strategy,
                        server_round,
                        arrays,
                        node_of=self.node_of,
                        partitions=trainers,
                        config=config,
                        timeout=float(cfg.round_timeout),
                        min_clients=int(cfg.min_clients),
                    )
                    if trainers
                    else (arrays, {}, [])
                )
            except TooFewReplies as e:
                failed += [dict(f, attempt=attempt) for f in e.failures]
                if attempt < retries:
                    log.warning("%s; retrying (%d of %d)", e, attempt + 1, retries)
                    continue
                how = (
                    f"after {retries} retries (too_few_replies=retry)"
                    if retries
                    else (f"(too_few_replies={cfg.get('too_few_replies', 'stop')})")
                )
                last = "; ".join(f"client {f['client']}: {f['reason']}" for f in e.failures)
                raise RunStopped(
                    f"{e}; stopped {how}. Last failures: {last or 'none'}. Rounds before "
                    f"{server_round} are saved; continue with resume={self.run_dir}"
                ) from None
            failed += [dict(f, attempt=attempt) for f in bad]
            for c in self.components:
                new = c.after_aggregate(self, server_round, new, metrics)
            info = {
                C.CLIENTS_SAMPLED: sampled,
                C.FAILURES: len(failed),
                C.FAILED_CLIENTS: failed,
                C.RETRIES: attempt,
            }
            return new, metrics, info
        raise AssertionError("unreachable")

    def evaluate(self, server_round: int, model: ClassifierModel) -> dict[str, Any]:
        """Centralized evaluation on the evaluation set, plus every component's metrics."""
        loss, acc, self.per_class = self.evaluate_on(model)
        out: dict[str, Any] = {C.EVAL_LOSS: loss, C.EVAL_ACCURACY: acc}
        for c in self.components:
            out.update(c.evaluate(self, server_round, model, out))
        return out

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, grid: Grid) -> dict[str, Any]:
        """Run every stage's rounds (resuming from the last checkpoint when ``cfg.resume`` is
        set); return the summary."""
        cfg = self.cfg
        self.setup()
        model = self.build_model()
        arrays: ArrayRecord | None = None
        start, wall_offset, ckpt = 0, 0.0, None
        if cfg.get("resume") and (path := latest_checkpoint(self.run_dir)) is not None:
            ckpt = load_checkpoint(path)
            start = int(ckpt["round"])
            arrays = ArrayRecord({k: Array(v) for k, v in ckpt["arrays"].items()})
            for c in self.components:
                c.load_state_dict(ckpt.get("components", {}).get(c.name, {}))
            done = [r for r in read_metrics(self.run_dir) if r[C.ROUND] <= start]
            wall_offset = float(done[-1][C.WALL_SECONDS]) if done else 0.0
            log.info("resuming %s after round %d", self.run_dir, start)
            if (line := client_state_warning(cfg)) is not None:
                log.warning(line)
                print(f"fedsim: warning: {line}", flush=True)
        elif self.driver is None:
            arrays = self._fresh(model, array_record(model.state_dict()))
        self.node_of = discover_nodes(grid, int(cfg.num_clients), float(cfg.round_timeout))
        for c in self.components:
            c.on_nodes(self, grid, resumed=ckpt is not None)
        rounds = int(cfg.rounds)
        stages = self.driver.num_stages(self) if self.driver else 1
        total = rounds * stages
        strategy = self.strategy()
        if ckpt is not None:
            load_strategy_state(strategy, ckpt.get("strategy_state", {}))
        t0 = time.monotonic()
        writer = RunWriter(self.run_dir, tensorboard=bool(cfg.tensorboard))
        with writer.open(resume_after_round=start if ckpt is not None else None):
            self.writer = writer
            for rnd in range(start + 1, total + 1):
                self.stage, r = divmod(rnd - 1, rounds)
                self.stage_round = r + 1
                if self.driver is not None and r == 0:
                    arrays = self.driver.on_stage_start(self, self.stage, arrays)
                    if self.stage == 0:
                        arrays = self._fresh(model, arrays)
                    else:
                        strategy = self.strategy()  # each stage is a fresh FL training
                assert arrays is not None
                t_round = time.monotonic()
                try:
                    arrays, train_metrics, info = self.train_round(grid, strategy, rnd, arrays)
                except RunStopped:
                    if rnd > 1 and self.stage_round > 1:  # keep every finished round
                        self._checkpoint(rnd - 1, arrays, strategy)
                    raise
                record = self._record(grid, strategy, rnd, model, arrays, train_metrics, info)
                record[C.ROUND_SECONDS] = time.monotonic() - t_round
                record[C.WALL_SECONDS] = wall_offset + time.monotonic() - t0
                record[C.TIMESTAMP] = time.time()
                writer.log_round(record)
                if cfg.progress:
                    print(progress_line(record, total), flush=True)
                for c in self.components:
                    c.on_round_end(self, rnd, record)
                if self.driver is not None and self.stage_round == rounds:
                    stage = self.driver.on_stage_end(self, grid, self.stage, arrays)
                    stage[C.WALL_SECONDS] = wall_offset + time.monotonic() - t0
                    stage[C.TIMESTAMP] = time.time()
                    writer.log_round(stage)
                every = int(cfg.checkpoint_every)
                at_stage_end = self.driver is not None and self.stage_round == rounds
                if rnd == total or at_stage_end or (every and rnd % every == 0):
                    self._checkpoint(rnd, arrays, strategy)
        return self._finish()

    def _fresh(self, model: ClassifierModel, arrays: ArrayRecord) -> ArrayRecord:
        """The run's first model, after every component's ``on_initial_model``."""
        model.load_state_dict(torch_state(arrays))
        for c in self.components:
            c.on_initial_model(self, model)
        return array_record(model.state_dict())

    def _record(
        self,
        grid: Grid,
        strategy: Strategy,
        rnd: int,
        model: ClassifierModel,
        arrays: ArrayRecord,
        train_metrics: dict[str, Any],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        cfg = self.cfg
        record: dict[str, Any] = {
            C.ROUND: rnd,
            C.TRAIN_LOSS: train_metrics.get(C.TRAIN_LOSS),
            C.TRAIN_ACCURACY: train_metrics.get(C.TRAIN_ACCURACY),
            **info,
        }
        for c in self.components:
            record.update(c.round_record(self, rnd, train_metrics))
        last_of_stage = self.stage_round == int(cfg.rounds)
        if self.stage_round % int(cfg.eval_every) == 0 or last_of_stage:
            model.load_state_dict(torch_state(arrays))
            record.update(self.evaluate(rnd, model))
        fe = int(cfg.federated_eval_every)
        if fe and rnd % fe == 0:
            record.update(
                federated_evaluate(
                    grid,
                    strategy,
                    rnd,
                    arrays,
                    node_of=self.node_of,
                    partitions=info[C.CLIENTS_SAMPLED],
                    timeout=float(cfg.round_timeout),
                )
            )
        return record

    def _checkpoint(self, rnd: int, arrays: ArrayRecord, strategy: Strategy) -> None:
        save_checkpoint(
            self.run_dir,
            rnd,
            {
                "arrays": {k: v.numpy() for k, v in arrays.items()},
                "strategy_state": strategy_state(strategy),
                "components": {c.name: c.state_dict() for c in self.components},
            },
        )

    def _finish(self) -> dict[str, Any]:
        metrics = [r for r in read_metrics(self.run_dir) if r.get(C.RECORD_KIND) != "stage"]
        extra: dict[str, Any] = {}
        for c in self.components:
            extra.update(c.summary(self, metrics))
        summary = write_summary(self.run_dir, metrics, seed=int(self.cfg.seed), extra=extra)
        plot_accuracy(self.run_dir, metrics)
        after: dict[str, Any] = {}
        for c in self.components:
            after.update(c.on_run_end(self, summary))
        if after:
            extra.update(after)
            summary = write_summary(self.run_dir, metrics, seed=int(self.cfg.seed), extra=extra)
        return summary


#: The name earlier releases used.
FLWorkflow = Workflow
