"""The FL workflow: rounds of seeded client sampling, local training, aggregation, centralized
evaluation, metrics, and checkpoints.

:class:`FLWorkflow` runs the loop; later workflows (FAL cycles, SSFL, post-training defenses)
subclass it and override narrow hooks (:meth:`FLWorkflow.train_config`,
:meth:`FLWorkflow.evaluate`, :meth:`FLWorkflow.round_record`, :meth:`FLWorkflow.on_round_end`,
:meth:`FLWorkflow.on_run_end`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from fedsim import constants as C
from fedsim.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fedsim.config import clients_per_round, resolve_device
from fedsim.errors import RunStopped
from fedsim.evaluation import evaluate as evaluate_model
from fedsim.federation import Federation, build_federation
from fedsim.models import ClassifierModel, build_model
from fedsim.outputs import RunWriter, plot_accuracy, read_metrics, write_summary
from fedsim.records import DecodedArray, array_record, to_numpy, torch_state
from fedsim.seeding import sample_partitions
from server.messaging import exchange, send_and_receive
from server.validation import check_train_reply
from strategies import STATE_ATTRS, build_strategy
from strategies.grid_view import SampledGrid

log = logging.getLogger("fedsim")


def keep_dtypes(new: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``new`` with every array cast back to the dtype of the same array in ``reference``.

    The stock strategies average BatchNorm's integer ``num_batches_tracked`` with float weights
    and return a float, which the next round's reply check would refuse; the weighted mean is
    cast back to the integer dtype (as the reference code of FAL does).
    """
    fixed = {
        name: to_numpy(arr).astype(np.dtype(reference[name].dtype))
        for name, arr in new.items()
        if name in reference and arr.dtype != reference[name].dtype
    }
    if not fixed:
        return new
    return array_record({n: fixed[n] if n in fixed else to_numpy(a) for n, a in new.items()})


class TooFewReplies(RuntimeError):
    """Fewer than ``min_clients`` usable replies in a round."""

    def __init__(self, message: str, *, failures: int) -> None:
        super().__init__(message)
        self.failures = failures


class FLWorkflow:
    """Federated training for ``cfg.rounds`` rounds, writing into ``run_dir``.

    Parameters
    ----------
    cfg
        The resolved fedsim config.
    run_dir
        The run directory (metrics, checkpoints, TensorBoard, plots).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.failed_clients: list[dict[str, Any]] = []  # of the last train_round

    # ---- hooks --------------------------------------------------------------------------------
    def train_config(self, server_round: int) -> dict[str, Any]:
        """Extra config values sent to the clients with this round's train messages."""
        return {}

    def evaluate(self, server_round: int, model: ClassifierModel) -> dict[str, float]:
        """Centralized evaluation of the global model on the test split."""
        data = self.federation.data
        loss, acc = evaluate_model(
            model,
            data.test_x,
            data.test_y,
            mean=data.mean,
            std=data.std,
            device=self.device,
            batch_size=int(self.cfg.eval_batch_size),
        )
        return {C.EVAL_LOSS: loss, C.EVAL_ACCURACY: acc}

    def round_record(self, server_round: int, train_metrics: dict[str, Any]) -> dict[str, Any]:
        """Extra entries for this round's record (metrics.jsonl), from the aggregated train
        metrics."""
        return {}

    def on_round_end(self, server_round: int, record: dict[str, Any]) -> None:
        """Called after each round's record is written."""

    def on_run_end(self, summary: dict[str, Any]) -> None:
        """Called once the summary is written."""

    def sample(self, server_round: int, k: int, attempt: int = 0) -> list[int]:
        """The ``k`` partition ids that train in ``server_round`` (seeded; ``attempt`` > 0 for a
        retried round)."""
        return sample_partitions(
            int(self.cfg.seed), server_round, int(self.cfg.num_clients), k, attempt
        )

    def configure_strategy(self, strategy: Strategy) -> Strategy:
        """Called once with the built strategy (e.g. to hand it server-side data)."""
        return strategy

    # ---- setup --------------------------------------------------------------------------------
    def initial_model(self) -> ClassifierModel:
        """The seeded initial global model."""
        data = self.federation.data
        torch.manual_seed(int(self.cfg.seed))
        return build_model(
            str(self.cfg.model.name),
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            params=dict(self.cfg.model.get("params") or {}),
        )

    def discover_nodes(self, grid: Grid) -> None:
        """Map partition ids to node ids by asking every node (node ids are random per run)."""
        n = int(self.cfg.num_clients)
        deadline = time.monotonic() + float(self.cfg.round_timeout)
        while len(node_ids := list(grid.get_node_ids())) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(node_ids)} of num_clients={n} nodes connected")
            time.sleep(0.2)
        messages = [
            Message(RecordDict({}), dst_node_id=nid, message_type=MessageType.QUERY)
            for nid in node_ids
        ]
        replies = send_and_receive(grid, messages, timeout=float(self.cfg.round_timeout))
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(
                    f"node {reply.metadata.src_node_id} failed: {reply.error.reason}"
                )
            pid = int(reply.content.config_records[C.QUERY_PARTITION][C.PARTITION_ID_KEY])  # type: ignore[arg-type]
            if pid in self.node_of:
                raise RuntimeError(f"two nodes claim partition-id {pid}")
            self.node_of[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(n)) - set(self.node_of))
        if missing:
            raise RuntimeError(f"no node holds partition-id(s) {missing[:10]} of num_clients={n}")

    # ---- rounds -------------------------------------------------------------------------------
    def train_round(
        self,
        grid: Grid,
        strategy: Strategy,
        server_round: int,
        arrays: ArrayRecord,
        sampled: list[int],
    ) -> tuple[ArrayRecord, dict[str, Any], int]:
        """One round of training; returns the new arrays, train metrics and the failure count.

        Every reply is validated before aggregation; errors, timeouts and malformed updates are
        failures (listed in :attr:`failed_clients`). Raises :class:`TooFewReplies` when fewer than
        ``min_clients`` replies are usable.
        """
        view = SampledGrid(grid, [self.node_of[p] for p in sampled])
        config = ConfigRecord(self.train_config(server_round))
        messages = list(strategy.configure_train(server_round, arrays, config, view))
        problems: dict[int, str | None] = {}

        def check(i: int, reply: Message) -> None:  # as replies arrive, while others train
            problem, decoded = check_train_reply(reply, arrays)
            if problem is None:  # hand the strategy arrays it need not decode again
                record = cast(ArrayRecord, reply.content[C.ARRAYS_KEY])  # checked above
                for name, arr in record.items():
                    DecodedArray.adopt(arr, decoded[name])
            problems[i] = problem

        answers = exchange(grid, messages, timeout=float(self.cfg.round_timeout), on_reply=check)
        pid_of = {nid: pid for pid, nid in self.node_of.items()}
        good: list[Message] = []
        self.failed_clients = []
        # Sorted by partition id: floating-point sums depend on the order.
        for i, msg, reply in sorted(
            zip(range(len(messages)), messages, answers, strict=True),
            key=lambda imr: pid_of.get(imr[1].metadata.dst_node_id, -1),
        ):
            pid = pid_of.get(msg.metadata.dst_node_id)
            if reply is None:
                self.failed_clients.append({"client": pid, "reason": "no reply (round_timeout)"})
                continue
            problem = problems[i]
            if problem is None:
                good.append(reply)
            else:
                self.failed_clients.append({"client": pid, "reason": problem})
                log.warning("round %d, client %s refused: %s", server_round, pid, problem)
        failures = len(self.failed_clients)
        if len(good) < int(self.cfg.min_clients):
            raise TooFewReplies(
                f"round {server_round}: {len(good)} of {len(messages)} sampled clients replied "
                f"usably (min_clients={self.cfg.min_clients})",
                failures=failures,
            )
        new_arrays, metrics = strategy.aggregate_train(server_round, good)
        if new_arrays is None:
            raise RuntimeError(f"round {server_round}: strategy returned no model")
        return keep_dtypes(new_arrays, arrays), dict(metrics or {}), failures

    def train_with_retries(
        self, grid: Grid, strategy: Strategy, server_round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, dict[str, Any], dict[str, Any]]:
        """Sample, train and aggregate one round; on too few usable replies, retry with a fresh
        seeded sample (``too_few_replies=retry``, up to ``round_retries`` times) or stop.

        Returns the new arrays, the train metrics and the round's bookkeeping (sampled clients,
        failures, failed clients, retries) for ``metrics.jsonl``.

        Raises
        ------
        RunStopped
            When the round cannot get ``min_clients`` usable replies.
        """
        cfg = self.cfg
        k = clients_per_round(cfg)
        retries = int(cfg.get("round_retries") or 0) if cfg.get("too_few_replies") == "retry" else 0
        failures, failed = 0, []
        for attempt in range(retries + 1):
            sampled = self.sample(server_round, k, attempt)
            try:
                new_arrays, metrics, n_failed = self.train_round(
                    grid, strategy, server_round, arrays, sampled
                )
            except TooFewReplies as e:
                failures += e.failures
                failed += [dict(f, attempt=attempt) for f in self.failed_clients]
                if attempt < retries:
                    log.warning("%s; retrying (%d of %d)", e, attempt + 1, retries)
                    continue
                how = (
                    f"after {retries} retries (too_few_replies=retry)"
                    if retries
                    else f"(too_few_replies={cfg.get('too_few_replies', 'stop')})"
                )
                last = "; ".join(
                    f"client {f['client']}: {f['reason']}" for f in self.failed_clients
                )
                raise RunStopped(
                    f"{e}; stopped {how}. Last failures: {last or 'none'}. Rounds before "
                    f"{server_round} are saved; continue with resume={self.run_dir}"
                ) from None
            failures += n_failed
            failed += [dict(f, attempt=attempt) for f in self.failed_clients]
            info = {
                C.CLIENTS_SAMPLED: sampled,
                C.FAILURES: failures,
                C.FAILED_CLIENTS: failed,
                C.RETRIES: attempt,
            }
            return new_arrays, metrics, info
        raise AssertionError("unreachable")

    def federated_evaluate(
        self,
        grid: Grid,
        strategy: Strategy,
        server_round: int,
        arrays: ArrayRecord,
        sampled: list[int],
    ) -> dict[str, float]:
        """Clients evaluate the global model on their partitions (weighted means)."""
        view = SampledGrid(grid, [self.node_of[p] for p in sampled])
        messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), view))
        replies = send_and_receive(grid, messages, timeout=float(self.cfg.round_timeout))
        pid_of = {nid: pid for pid, nid in self.node_of.items()}
        usable = sorted(
            (r for r in replies if not r.has_error()),
            key=lambda r: pid_of.get(r.metadata.src_node_id, -1),
        )  # floating-point sums depend on order
        metrics = strategy.aggregate_evaluate(server_round, usable)
        return {
            f"federated_{k}": float(v)  # type: ignore[arg-type]
            for k, v in dict(metrics or {}).items()
            if k != C.NUM_EXAMPLES_KEY
        }

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, grid: Grid) -> dict[str, Any]:
        """Run all rounds (resuming from the last checkpoint when ``cfg.resume`` is set)."""
        cfg = self.cfg
        self.device = torch.device(resolve_device(str(cfg.device)))
        self.federation: Federation = build_federation(cfg)
        model = self.initial_model().to(self.device)
        strategy = self.configure_strategy(build_strategy(cfg))
        arrays = array_record(model.state_dict())
        start, wall_offset = 0, 0.0
        if cfg.get("resume"):
            ckpt_path = latest_checkpoint(self.run_dir)
            if ckpt_path is not None:
                ckpt = load_checkpoint(ckpt_path)
                start = int(ckpt["round"])
                arrays = ArrayRecord({k2: Array(v) for k2, v in ckpt["arrays"].items()})
                for attr, value in ckpt.get("strategy_state", {}).items():
                    setattr(strategy, attr, value)
                done = [r for r in read_metrics(self.run_dir) if r[C.ROUND] <= start]
                wall_offset = float(done[-1][C.WALL_SECONDS]) if done else 0.0
                log.info("resuming %s after round %d", self.run_dir, start)
        self.discover_nodes(grid)
        rounds = int(cfg.rounds)
        t0 = time.monotonic()
        with RunWriter(self.run_dir, tensorboard=bool(cfg.tensorboard)).open(
            resume_after_round=start if start else None
        ) as writer:
            for rnd in range(start + 1, rounds + 1):
                t_round = time.monotonic()
                try:
                    arrays, train_metrics, info = self.train_with_retries(
                        grid, strategy, rnd, arrays
                    )
                except RunStopped:
                    if rnd > 1:  # keep every finished round for resume
                        self._checkpoint(rnd - 1, arrays, strategy)
                    raise
                sampled = info[C.CLIENTS_SAMPLED]
                record: dict[str, Any] = {
                    C.ROUND: rnd,
                    C.TRAIN_LOSS: train_metrics.get(C.TRAIN_LOSS),
                    C.TRAIN_ACCURACY: train_metrics.get(C.TRAIN_ACCURACY),
                    **info,
                }
                record.update(self.round_record(rnd, train_metrics))
                if rnd % int(cfg.eval_every) == 0 or rnd == rounds:
                    model.load_state_dict(torch_state(arrays))
                    record.update(self.evaluate(rnd, model))
                fe = int(cfg.federated_eval_every)
                if fe and rnd % fe == 0:
                    record.update(self.federated_evaluate(grid, strategy, rnd, arrays, sampled))
                now = time.monotonic()
                record[C.ROUND_SECONDS] = now - t_round
                record[C.WALL_SECONDS] = wall_offset + now - t0
                record[C.TIMESTAMP] = time.time()
                writer.log_round(record)
                self._progress(record, rounds)
                every = int(cfg.checkpoint_every)
                if rnd == rounds or (every and rnd % every == 0):
                    self._checkpoint(rnd, arrays, strategy)
                self.on_round_end(rnd, record)
        metrics = read_metrics(self.run_dir)
        summary = write_summary(self.run_dir, metrics, seed=int(cfg.seed))
        plot_accuracy(self.run_dir, metrics)
        self.on_run_end(summary)
        return summary

    def _checkpoint(self, rnd: int, arrays: ArrayRecord, strategy: Strategy) -> None:
        state = {
            a: getattr(strategy, a) for a in STATE_ATTRS if getattr(strategy, a, None) is not None
        }
        save_checkpoint(
            self.run_dir,
            rnd,
            {"arrays": {k: v.numpy() for k, v in arrays.items()}, "strategy_state": state},
        )

    def _progress(self, record: dict[str, Any], rounds: int) -> None:
        if not self.cfg.progress:
            return
        parts = [f"round {record[C.ROUND]:>{len(str(rounds))}}/{rounds}"]
        for key, label in (
            (C.TRAIN_LOSS, "train_loss"),
            (C.EVAL_LOSS, "eval_loss"),
            (C.EVAL_ACCURACY, "eval_acc"),
        ):
            value = record.get(key)
            if value is not None and np.isfinite(value):
                parts.append(f"{label} {value:.4f}")
        if record[C.FAILURES]:
            parts.append(f"failures {record[C.FAILURES]}")
        parts.append(f"{record[C.ROUND_SECONDS]:.2f}s")
        print(" | ".join(parts), flush=True)


def config_summary(cfg: DictConfig) -> str:
    """One line naming the main choices of a run."""
    return (
        f"{cfg.dataset.name} | {cfg.partition.name} | {cfg.num_clients} clients "
        f"({cfg.clients_per_round}/round) | {cfg.model.name} | {cfg.strategy.name} | "
        f"{cfg.local.name} | {cfg.rounds} rounds | seed {cfg.seed}"
    )


__all__ = ["FLWorkflow", "config_summary", "OmegaConf"]
