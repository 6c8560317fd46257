"""fedsim's Flower ClientApp: train and evaluate handlers that delegate to a local learner.

The same app runs under ``fedsim run`` (simulation) and on real SuperNodes (``flwr run``). It reads
the whole fedsim config from Flower's run config and its partition id from the node config.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from clients.learners import build_learner
from clients.learners.base import LOCAL, check_label_kind
from fedsim.config import from_run_config, resolve_device
from fedsim.constants import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVAL_ACCURACY,
    EVAL_LOSS,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    PROXIMAL_MU_KEY,
    QUERY_PARTITION,
    SERVER_ROUND_KEY,
)
from fedsim.evaluation import evaluate as evaluate_model
from fedsim.federation import build_federation
from fedsim.models import ClassifierModel, build_model
from fedsim.seeding import client_seed

app = ClientApp()

_CFG_CACHE: dict[str, DictConfig] = {}
_MODEL_CACHE: dict[str, ClassifierModel] = {}


def client_config(context: Context) -> DictConfig:
    """The run's config (parsed once per process and run config)."""
    key = json.dumps(dict(context.run_config), sort_keys=True, default=str)
    if key not in _CFG_CACHE:
        _CFG_CACHE.clear()
        _CFG_CACHE[key] = from_run_config(context.run_config)
    return _CFG_CACHE[key]


def partition_id(context: Context, cfg: DictConfig) -> int:
    """This node's partition id, checked against ``num_clients``."""
    pid = int(context.node_config[PARTITION_ID_KEY])
    if not 0 <= pid < int(cfg.num_clients):
        raise ValueError(f"partition-id {pid} is outside [0, num_clients={cfg.num_clients})")
    return pid


def resident_model(cfg: DictConfig, arrays: ArrayRecord) -> ClassifierModel:
    """A model instance kept per process (built once), loaded with ``arrays``."""
    fed = build_federation(cfg)
    key = json.dumps(
        [cfg.model.name, dict(cfg.model.get("params") or {}), fed.data.name], default=str
    )
    model = _MODEL_CACHE.get(key)
    if model is None:
        model = build_model(
            str(cfg.model.name),
            num_classes=fed.data.num_classes,
            in_channels=fed.data.in_channels,
            image_size=fed.data.image_size,
            params=dict(cfg.model.get("params") or {}),
        )
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = model
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _setup(msg: Message, context: Context) -> tuple[DictConfig, int, ClassifierModel, torch.device]:
    cfg = client_config(context)
    threads = max(1, int(float(cfg.engine.client_cpus)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    pid = partition_id(context, cfg)
    device = torch.device(resolve_device(str(cfg.device)))
    model = resident_model(cfg, msg.content.array_records[ARRAYS_KEY]).to(device)
    return cfg, pid, model, device


def _load_state(context: Context) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if "learner-arrays" in context.state.array_records:
        for k, v in context.state.array_records["learner-arrays"].items():
            state[k] = v.numpy()
    if "learner-config" in context.state.config_records:
        state.update(dict(context.state.config_records["learner-config"]))
    return state


def _save_state(context: Context, state: dict[str, Any]) -> None:
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    if arrays:
        context.state["learner-arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    if scalars:
        context.state["learner-config"] = ConfigRecord(scalars)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's discovery query with this node's partition id."""
    content = RecordDict(
        {
            QUERY_PARTITION: ConfigRecord(
                {
                    PARTITION_ID_KEY: int(context.node_config[PARTITION_ID_KEY]),
                    NUM_PARTITIONS_KEY: int(context.node_config.get(NUM_PARTITIONS_KEY, -1)),
                }
            )
        }
    )
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this client's partition with the configured learner."""
    cfg, pid, model, device = _setup(msg, context)
    config = msg.content.config_records[CONFIG_KEY]
    server_round = int(config[SERVER_ROUND_KEY])  # type: ignore[arg-type]
    data = build_federation(cfg).client_data(pid)
    learner_params = {k: v for k, v in dict(cfg.local).items() if k != "name"}
    learner = build_learner(str(cfg.local.name), learner_params)
    check_label_kind(str(cfg.local.name), LOCAL.get(str(cfg.local.name)), data.label_kind)
    seed = client_seed(int(cfg.seed), server_round, pid)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    state = _load_state(context)
    result = learner.train(
        model,
        data,
        device=device,
        generator=generator,
        proximal_mu=float(config.get(PROXIMAL_MU_KEY, 0.0)),  # type: ignore[arg-type]
        state=state,
    )
    _save_state(context, state)
    metrics = {NUM_EXAMPLES_KEY: result.num_examples, **result.metrics}
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(model.state_dict()),
            METRICS_KEY: MetricRecord(metrics),  # type: ignore[arg-type]
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's partition."""
    cfg, pid, model, device = _setup(msg, context)
    data = build_federation(cfg).client_data(pid)
    loss, acc = evaluate_model(
        model,
        data.x,
        data.y,
        mean=data.mean,
        std=data.std,
        device=device,
        batch_size=int(cfg.eval_batch_size),
    )
    metrics = {NUM_EXAMPLES_KEY: len(data), EVAL_LOSS: loss, EVAL_ACCURACY: acc}
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)  # type: ignore[arg-type]
