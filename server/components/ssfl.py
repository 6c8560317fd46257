"""Semi-supervised FL (component ``ssfl``): in ``ssfl=labels_at_server``, a server step that
trains the global model on the server's labeled set (SemiFL's "alternate training"; the server's
supervised steps of FedMatch's labels-at-server FixMatch baseline), and in every setting the
pooled pseudo-label metrics.

- :meth:`SemiSupervised.on_initial_model`: in labels-at-server, a warm start of
  ``ssfl.server_warmup_epochs`` epochs on the server set;
- :meth:`SemiSupervised.trainers`: only clients that can train are contacted (a learner that
  uses labeled samples only skips clients without labels; with labels at the server no client
  trains and the run is server-only);
- :meth:`SemiSupervised.round_strategy`: replies with zero examples (e.g. a SemiFL client with no
  confident pseudo-label) are left out of the average;
- :meth:`SemiSupervised.after_aggregate`: the server step (``ssfl.server_epochs`` epochs of CE);
- :meth:`SemiSupervised.round_record`: the pooled accuracy of the pseudo-labels the clients used
  (``sum correct / sum used`` against the hidden true labels), their rate, the server step's loss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from clients.learners import LOCAL, ClientData, build_learner
from fedsim import constants as C
from fedsim.records import array_record, torch_state
from fedsim.seeding import derive_seed
from fedsim.ssfl import ssfl_config, ssfl_setting
from server.components.base import Component, register

if TYPE_CHECKING:
    from fedsim.models import ClassifierModel
    from server.workflow import Workflow

log = logging.getLogger("fedsim")

ROUND_KEYS = (
    C.PSEUDO_LABEL_ACCURACY,
    C.PSEUDO_LABEL_RATE,
    C.PSEUDO_LABEL_COUNT,
    C.SERVER_TRAIN_LOSS,
    C.SERVER_TRAIN_ACCURACY,
)


def server_step_enabled(cfg: DictConfig) -> bool:
    """The server trains on labeled data only where it holds some: ``labels_at_server``."""
    return ssfl_setting(cfg) == "labels_at_server"


def labeled_only(local: str) -> bool:
    """Whether the local method trains on labeled samples only (declared by the learner)."""
    return bool(getattr(LOCAL.get(local), "labeled_only", False))


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


class ReplyFilter:
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


@register
class SemiSupervised(Component):
    """The SSFL server step and pseudo-label metrics (see the module docstring)."""

    name = "ssfl"
    order = 30
    promises = (C.SERVER_TRAIN_LOSS, C.SERVER_TRAIN_ACCURACY)

    def __init__(self) -> None:
        self._filter: ReplyFilter | None = None

    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        return ssfl_setting(cfg) != "none"

    @classmethod
    def promised(cls, cfg: DictConfig) -> tuple[str, ...]:
        return cls.promises if server_step_enabled(cfg) else ()

    # ---- the server step -----------------------------------------------------------------------
    def server_data(self, wf: Workflow) -> ClientData:
        """The server's labeled set (empty outside labels-at-server)."""
        fed = wf.federation
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

    def server_train(
        self, wf: Workflow, model: ClassifierModel, epochs: int, tag: int
    ) -> dict[str, float]:
        """Train ``model`` in place with CE on the server set for ``epochs`` epochs."""
        node = ssfl_config(wf.cfg)
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
        seed = derive_seed(int(wf.cfg.seed), tag, 0x5E7)
        torch.random.default_generator.manual_seed(seed)
        result = learner.train(
            model,
            self.server_data(wf),
            device=wf.device,
            generator=torch.Generator().manual_seed(seed),
        )
        return {
            C.SERVER_TRAIN_LOSS: result.metrics.get(C.TRAIN_LOSS, float("nan")),
            C.SERVER_TRAIN_ACCURACY: result.metrics.get(C.TRAIN_ACCURACY, float("nan")),
        }

    # ---- hooks ---------------------------------------------------------------------------------
    def setup(self, wf: Workflow) -> None:
        self._announce(wf)

    def on_initial_model(self, wf: Workflow, model: ClassifierModel) -> None:
        epochs = int(ssfl_config(wf.cfg).get("server_warmup_epochs", 0) or 0)
        if server_step_enabled(wf.cfg) and epochs > 0:
            self.server_train(wf, model, epochs, tag=0)

    def can_train(self, wf: Workflow, pid: int) -> bool:
        """Whether client ``pid`` has anything its local method can train on."""
        if not labeled_only(str(wf.cfg.local.name)):
            return True
        return bool((wf.federation.client_data(pid).y >= 0).any())

    def trainers(self, wf: Workflow, sampled: list[int]) -> list[int]:
        return [p for p in sampled if self.can_train(wf, p)]

    def round_strategy(self, wf: Workflow, strategy: Strategy, arrays: ArrayRecord) -> Strategy:
        self._filter = ReplyFilter(strategy, arrays)
        return self._filter  # type: ignore[return-value]

    def after_aggregate(
        self, wf: Workflow, server_round: int, arrays: ArrayRecord, metrics: dict[str, Any]
    ) -> ArrayRecord:
        if self._filter is not None:
            metrics.update(pooled_pseudo_labels(self._filter.metrics))
        if not server_step_enabled(wf.cfg):
            return arrays
        model = wf.build_model()
        model.load_state_dict(torch_state(arrays))
        epochs = int(ssfl_config(wf.cfg)["server_epochs"])
        metrics.update(self.server_train(wf, model, epochs, server_round))
        return array_record(model.state_dict())

    def round_record(
        self, wf: Workflow, server_round: int, train_metrics: dict[str, Any]
    ) -> dict[str, Any]:
        return {k: float(train_metrics[k]) for k in ROUND_KEYS if k in train_metrics}

    def _announce(self, wf: Workflow) -> None:
        """One line at the start: the setting, where the labels are and who trains."""
        fed, name = wf.federation, ssfl_setting(wf.cfg)
        labeled = [int((w.y >= 0).sum()) for w in fed.weak] if fed.weak else []
        n_clients = sum(1 for n in labeled if n > 0)
        parts = [
            f"ssfl: {name}",
            f"{sum(labeled)} labeled samples on {n_clients} of {len(fed.partitions)} clients",
            f"{len(fed.server_indices)} at the server",
        ]
        local = str(wf.cfg.local.name)
        if labeled_only(local):
            who = (
                "no client trains (server only)" if n_clients == 0 else "only labeled clients train"
            )
            parts.append(f"local={local} ignores unlabeled data: {who}")
        parts.append("server step on" if server_step_enabled(wf.cfg) else "no server step")
        line = "; ".join(parts)
        log.info(line)
        if wf.cfg.get("progress"):
            print(f"fedsim: {line}", flush=True)
