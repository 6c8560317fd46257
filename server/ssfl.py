"""The semi-supervised FL workflow: the FL rounds plus, in ``ssfl=labels_at_server``, a server
step that trains the global model on the server's labeled set (SemiFL's "alternate training"; the
server's supervised steps of FedMatch's labels-at-server FixMatch baseline).

:class:`SSFLWorkflow` subclasses :class:`~server.workflow.FLWorkflow` and overrides its hooks:

- :meth:`SSFLWorkflow.initial_model`: in labels-at-server, a warm start of
  ``ssfl.server_warmup_epochs`` epochs on the server set (clients then pseudo-label with a model
  better than chance);
- :meth:`SSFLWorkflow.train_round`: only clients that can train are contacted (``local=supervised``
  ignores unlabeled data, so only clients with labels take part; with labels at the server no
  client does and the run is server-only); replies with zero examples (e.g. a SemiFL client with no
  confident pseudo-label) are left out of the average; then the server step (labels-at-server
  only, ``ssfl.server_epochs`` epochs of CE) on the aggregated model;
- :meth:`SSFLWorkflow.round_record`: the pooled accuracy of the pseudo-labels the clients used
  (``sum correct / sum used`` over the round's replies, against the hidden true labels), the share
  of unlabeled views that got one, and the server step's loss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from clients.learners import ClientData, build_learner
from fedsim import constants as C
from fedsim.models import ClassifierModel
from fedsim.records import array_record, torch_state
from fedsim.seeding import derive_seed
from fedsim.ssfl import ssfl_config, ssfl_setting
from server.workflow import FLWorkflow

log = logging.getLogger("fedsim")

#: local methods that use labeled samples only (a client without labels cannot take part)
LABELED_ONLY = ("supervised",)


def uses_ssfl(cfg: DictConfig) -> bool:
    """Whether ``cfg`` selects an SSFL setting (other than ``none``)."""
    return ssfl_setting(cfg) != "none"


def server_step_enabled(cfg: DictConfig) -> bool:
    """The server trains on labeled data only where it holds some: ``labels_at_server``."""
    return ssfl_setting(cfg) == "labels_at_server"


def pooled_pseudo_labels(metrics: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Pool the clients' pseudo-label counts: accuracy ``sum correct / sum used`` and rate
    ``sum used / sum seen`` (empty when no client pseudo-labelled anything)."""
    seen = count = correct = 0.0
    for m in metrics:
        seen += float(m.get(C.PSEUDO_LABEL_SEEN, 0.0))
        count += float(m.get(C.PSEUDO_LABEL_COUNT, 0.0))
        correct += float(m.get(C.PSEUDO_LABEL_CORRECT, 0.0))
    if seen == 0:
        return {}
    return {
        C.PSEUDO_LABEL_ACCURACY: correct / count if count else float("nan"),
        C.PSEUDO_LABEL_RATE: count / seen,
        C.PSEUDO_LABEL_COUNT: count,
    }


class _ReplyFilter:
    """Wraps the strategy for one round: keeps every reply's metrics, aggregates only replies
    with examples, and returns the round's model unchanged when none has any."""

    def __init__(self, strategy: Strategy, arrays: ArrayRecord) -> None:
        self.strategy, self.arrays = strategy, arrays
        self.metrics: list[dict[str, Any]] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, Any]:
        used = []
        for reply in replies:
            m = dict(reply.content.metric_records[C.METRICS_KEY])
            self.metrics.append(m)
            if float(m.get(C.NUM_EXAMPLES_KEY, 0)) > 0:  # type: ignore[arg-type]
                used.append(reply)
        if not used:
            log.warning("round %d: no client had anything to train on", server_round)
            return self.arrays, {}
        # Flower's strategies need the same metric keys in every reply: keep the common ones
        # (a labeled client reports no pseudo-label counts; those are pooled from self.metrics).
        common = set.intersection(*(set(r.content.metric_records[C.METRICS_KEY]) for r in used))
        for r in used:
            mr = r.content.metric_records[C.METRICS_KEY]
            r.content.metric_records[C.METRICS_KEY] = MetricRecord(
                {k: v for k, v in mr.items() if k in common}
            )
        return self.strategy.aggregate_train(server_round, used)


class SSFLWorkflow(FLWorkflow):
    """FL rounds for a semi-supervised setting (``cfg.ssfl``), with the server step."""

    def __init__(self, cfg: DictConfig, run_dir: Any) -> None:
        super().__init__(cfg, run_dir)
        self._extra: dict[int, dict[str, Any]] = {}
        self._announced = False

    # ---- the server step -----------------------------------------------------------------------
    def server_data(self) -> ClientData:
        """The server's labeled set (empty outside labels-at-server)."""
        fed = self.federation
        idx = torch.from_numpy(fed.server_indices)
        y = fed.data.train_y[idx]
        return ClientData(
            x=fed.data.train_x[idx],
            y=y,
            mean=fed.data.mean,
            std=fed.data.std,
            num_classes=fed.data.num_classes,
            true_y=y,
        )

    def server_train(self, model: ClassifierModel, epochs: int, tag: int) -> dict[str, float]:
        """Train ``model`` in place with CE on the server set for ``epochs`` epochs."""
        node = ssfl_config(self.cfg)
        learner = build_learner(
            "supervised",
            {
                "epochs": epochs,
                "batch_size": int(node["server_batch_size"]),
                "lr": float(node["server_lr"]),
                "momentum": float(node.get("server_momentum", 0.0)),
                "weight_decay": float(node.get("server_weight_decay", 0.0)),
            },
        )
        seed = derive_seed(int(self.cfg.seed), tag, 0x5E7)
        torch.random.default_generator.manual_seed(seed)
        result = learner.train(
            model,
            self.server_data(),
            device=self.device,
            generator=torch.Generator().manual_seed(seed),
        )
        return {
            C.SERVER_TRAIN_LOSS: result.metrics.get(C.TRAIN_LOSS, float("nan")),
            C.SERVER_TRAIN_ACCURACY: result.metrics.get(C.TRAIN_ACCURACY, float("nan")),
        }

    # ---- hooks ---------------------------------------------------------------------------------
    def initial_model(self) -> ClassifierModel:
        model = super().initial_model()
        self._announce()
        epochs = int(ssfl_config(self.cfg).get("server_warmup_epochs", 0) or 0)
        if server_step_enabled(self.cfg) and epochs > 0:
            model.to(self.device)
            self.server_train(model, epochs, tag=0)
        return model

    def can_train(self, pid: int) -> bool:
        """Whether client ``pid`` has anything its local method can train on."""
        if str(self.cfg.local.name) not in LABELED_ONLY:
            return True
        return bool((self.federation.client_data(pid).y >= 0).any())

    def train_round(
        self,
        grid: Grid,
        strategy: Strategy,
        server_round: int,
        arrays: ArrayRecord,
        sampled: list[int],
    ) -> tuple[ArrayRecord, dict[str, Any], int]:
        active = [p for p in sampled if self.can_train(p)]
        failures = 0
        metrics: dict[str, Any] = {}
        if active:
            wrapped = _ReplyFilter(strategy, arrays)
            arrays, metrics, failures = super().train_round(
                grid,
                wrapped,  # type: ignore[arg-type]
                server_round,
                arrays,
                active,
            )
            metrics.update(pooled_pseudo_labels(wrapped.metrics))
        if server_step_enabled(self.cfg):
            model = self.initial_model_shell()
            model.load_state_dict(torch_state(arrays))
            metrics.update(
                self.server_train(model, int(ssfl_config(self.cfg)["server_epochs"]), server_round)
            )
            arrays = array_record(model.state_dict())
        return arrays, metrics, failures

    def initial_model_shell(self) -> ClassifierModel:
        """A model of the configured architecture on the workflow's device (weights to load)."""
        return FLWorkflow.initial_model(self).to(self.device)

    def round_record(self, server_round: int, train_metrics: dict[str, Any]) -> dict[str, Any]:
        keys = (
            C.PSEUDO_LABEL_ACCURACY,
            C.PSEUDO_LABEL_RATE,
            C.PSEUDO_LABEL_COUNT,
            C.SERVER_TRAIN_LOSS,
            C.SERVER_TRAIN_ACCURACY,
        )
        return {k: float(train_metrics[k]) for k in keys if k in train_metrics}

    def _announce(self) -> None:
        """One line at the start: the setting, where the labels are and who trains."""
        if self._announced:
            return
        self._announced = True
        fed, name = self.federation, ssfl_setting(self.cfg)
        labeled = [int((w.y >= 0).sum()) for w in fed.weak] if fed.weak else []
        n_clients = sum(1 for n in labeled if n > 0)
        parts = [
            f"ssfl: {name}",
            f"{sum(labeled)} labeled samples on {n_clients} of {len(fed.partitions)} clients",
            f"{len(fed.server_indices)} at the server",
        ]
        local = str(self.cfg.local.name)
        if local in LABELED_ONLY:
            if n_clients == 0:
                parts.append(
                    f"local={local} ignores unlabeled data: no client trains (server only)"
                )
            else:
                parts.append(f"local={local} ignores unlabeled data: only labeled clients train")
        parts.append("server step on" if server_step_enabled(self.cfg) else "no server step")
        line = "; ".join(parts)
        log.info(line)
        if self.cfg.get("progress"):
            print(f"fedsim: {line}", flush=True)
