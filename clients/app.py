"""fedsim's Flower ClientApp: train and evaluate handlers that delegate to a local learner.

The same app runs under ``fedsim run`` (simulation) and on real SuperNodes (``flwr run``). It reads
the whole fedsim config from Flower's run config and its partition id from the node config.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig, OmegaConf

from clients import fal, osal
from clients.attacks.client import attack_step
from clients.faults import InjectedFault, corrupt, fault_for
from clients.learners import ClientData, Learner, TrainResult, build_learner
from clients.learners.base import check_label_kind
from clients.learners.vectorized import unsupported_model
from fedsim.config import from_run_config, resolve_device, vectorize_mode
from fedsim.constants import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DATA_ROOT_KEY,
    EVAL_ACCURACY,
    EVAL_LOSS,
    FAL_LR_SCALE,
    FAL_QUERY_ACTION,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    PROXIMAL_MU_KEY,
    QUERY_PARTITION,
    RUN_CONFIG_JSON_KEY,
    RUN_CONFIG_OVERRIDES_KEY,
    SERVER_ROUND_KEY,
)
from fedsim.evaluation import evaluate as evaluate_model
from fedsim.federation import Federation, build_federation
from fedsim.models import ClassifierModel, model_for
from fedsim.models.pair import DetectorPair
from fedsim.records import array_record, torch_state
from fedsim.seeding import client_seed

app = ClientApp()


@dataclass
class ClientRuntime:
    """What a process keeps per run: the config's plain values, the data, a resident model and
    the learner (built once; each call only loads the received weights and trains)."""

    cfg: DictConfig
    seed: int
    num_clients: int
    eval_batch_size: int
    threads: int
    device: torch.device
    federation: Federation
    model: ClassifierModel
    learner_name: str
    learner: Learner
    client_data: dict[int, ClientData] = field(default_factory=dict)
    client_locals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    learners: dict[str, Learner] = field(default_factory=dict)
    last_arrays: tuple[Any, dict[str, torch.Tensor]] | None = None
    targets: dict[str, torch.Tensor] | None = None
    staged: dict[str, torch.Tensor] | None = None  # last_arrays on the model's GPU
    faults: dict[str, Any] | None = None  # cfg.faults as plain lists (DictConfig reads cost)
    vectorize: str = "off"  # engine.vectorize (auto | on | off), see train_many
    model_refusal: str | None = None  # why the model cannot train in a batched pass (None: it can)
    detector_learners: dict[str, Any] = field(default_factory=dict)  # open-set FAL's detector

    def data(self, pid: int) -> ClientData:
        """Client ``pid``'s data (indexed out of the shared arrays once)."""
        if pid not in self.client_data:
            self.client_data[pid] = self.federation.client_data(pid)
        return self.client_data[pid]

    def learner_for(self, pid: int) -> tuple[str, Learner]:
        """Client ``pid``'s local method: ``cfg.local``, or its weak-label group's ``local``."""
        if not self.client_locals:
            from fedsim.data.weak_clients import client_locals

            self.client_locals = client_locals(self.cfg)
        name, params = self.client_locals[pid]
        key = json.dumps([name, params], sort_keys=True)
        if key not in self.learners:
            self.learners[key] = build_learner(name, params)
        return name, self.learners[key]

    def load(self, arrays: ArrayRecord) -> ClassifierModel:
        """The resident model loaded with ``arrays``; the messages of one batch share one
        payload, which is decoded once."""
        if self.last_arrays is None or self.last_arrays[0] is not arrays:
            self.last_arrays = (arrays, torch_state(arrays))
            self.staged = None
        state = self.last_arrays[1]
        if self.targets is None:
            self.targets = self.model.state_dict(keep_vars=True)
        if list(state) == list(self.targets) and all(
            t.shape == v.shape for t, v in zip(self.targets.values(), state.values(), strict=True)
        ):
            if self.device.type == "cuda":
                # On a GPU the payload is copied to the device once per batch of messages: a
                # copy from host memory makes the host wait for the GPU, once per tensor.
                if self.staged is None:
                    self.staged = {
                        k: v.to(t.device)
                        for (k, t), v in zip(self.targets.items(), state.values(), strict=True)
                    }
                state = self.staged
            with torch.no_grad():  # copy into the resident tensors (load_state_dict's checks cost)
                for t, v in zip(self.targets.values(), state.values(), strict=True):
                    t.copy_(v)
        else:
            self.model.load_state_dict(state)  # raises with PyTorch's message on a mismatch
        return self.model


_RUNTIMES: dict[str, ClientRuntime] = {}


def client_runtime(context: Context) -> ClientRuntime:
    """This process's runtime for the run described by ``context.run_config``."""
    data_root = context.node_config.get(DATA_ROOT_KEY)  # deployment: this node's data folder
    key = (
        str(context.run_config.get(RUN_CONFIG_JSON_KEY) or "")
        + "\0"
        + str(context.run_config.get(RUN_CONFIG_OVERRIDES_KEY) or "")
        + "\0"
        + str(data_root or "")
    )
    rt = _RUNTIMES.get(key)
    if rt is None:
        cfg = from_run_config(context.run_config)
        if data_root:
            cfg.dataset.root = str(data_root)
        fed = build_federation(cfg)
        model = model_for(cfg, fed.data)
        name = str(cfg.local.name)
        device = torch.device(resolve_device(str(cfg.device)))
        rt = ClientRuntime(
            cfg=cfg,
            seed=int(cfg.seed),
            num_clients=int(cfg.num_clients),
            eval_batch_size=int(cfg.eval_batch_size),
            threads=max(1, int(float(cfg.engine.client_cpus))),
            device=device,
            federation=fed,
            model=model.to(device),
            learner_name=name,
            learner=build_learner(name, {k: v for k, v in cfg.local.items() if k != "name"}),
            faults=_plain(cfg.get("faults")),
            vectorize=vectorize_mode(OmegaConf.select(cfg, "engine.vectorize")),
        )
        rt.model_refusal = (
            "open-set FAL trains a target and a detector per client"
            if isinstance(rt.model, DetectorPair)
            else unsupported_model(rt.model)
        )
        _RUNTIMES.clear()
        _RUNTIMES[key] = rt
    if torch.get_num_threads() != rt.threads:
        torch.set_num_threads(rt.threads)
    return rt


def _plain(node: Any) -> dict[str, Any] | None:
    """A config block as plain Python containers (None when absent or empty)."""
    if not node:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return dict(plain)  # type: ignore[arg-type]


def partition_id(context: Context, rt: ClientRuntime) -> int:
    """This node's partition id, checked against ``num_clients``."""
    pid = int(context.node_config[PARTITION_ID_KEY])
    if not 0 <= pid < rt.num_clients:
        raise ValueError(f"partition-id {pid} is outside [0, num_clients={rt.num_clients})")
    return pid


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


@app.query(FAL_QUERY_ACTION)
def fal_query(msg: Message, context: Context) -> Message:
    """One step of a federated active-learning query cycle (see ``clients/fal.py``)."""
    rt = client_runtime(context)
    return fal.handle(msg, context, rt, partition_id(context, rt))


@dataclass
class TrainJob:
    """One train message, prepared as :func:`train` prepares it (shared with :func:`train_many`)."""

    msg: Message
    context: Context
    rt: ClientRuntime
    pid: int
    config: Any
    fault: str | None
    data: ClientData
    attack: Any
    learner: Learner
    seed: int
    state: dict[str, Any]
    proximal_mu: float


def prepare_train(msg: Message, context: Context) -> TrainJob:
    """Everything :func:`train` does before local training (an injected ``raise`` fault raises)."""
    rt = client_runtime(context)
    pid = partition_id(context, rt)
    config = msg.content.config_records[CONFIG_KEY]
    server_round = int(config[SERVER_ROUND_KEY])  # type: ignore[arg-type]
    fault = fault_for(rt.faults, pid, server_round)
    if fault == "raise":
        raise InjectedFault(f"client {pid} fails in round {server_round} (faults.raise_clients)")
    data = fal.training_data(context, rt.data(pid))  # FAL: the labeled pool only
    attack = attack_step(rt.cfg, pid, server_round)  # None: this client trains honestly
    if attack is not None:
        data = attack.poison(data)
    learner_name, learner = rt.learner_for(pid)
    check_label_kind(learner_name, type(learner), data.label_kind)
    if FAL_LR_SCALE in config:  # FAL's per-stage lr decay
        learner = copy.copy(learner)
        learner.lr = learner.lr * float(config[FAL_LR_SCALE])  # type: ignore[arg-type]
    return TrainJob(
        msg=msg,
        context=context,
        rt=rt,
        pid=pid,
        config=config,
        fault=fault,
        data=data,
        attack=attack,
        learner=learner,
        seed=client_seed(rt.seed, server_round, pid),
        state=_load_state(context),
        proximal_mu=float(config.get(PROXIMAL_MU_KEY, 0.0)),  # type: ignore[arg-type]
    )


def finish_train(job: TrainJob, model: ClassifierModel, result: TrainResult) -> Message:
    """Everything :func:`train` does after local training, on ``model`` as trained."""
    rt = job.rt
    _save_state(job.context, job.state)
    if job.attack is not None and rt.last_arrays is not None:
        job.attack.after_train(model, rt.last_arrays[1])
    fal.after_train(job.context, job.config, model)
    metrics = {NUM_EXAMPLES_KEY: result.num_examples, **result.metrics}
    arrays = array_record(model.state_dict())
    if job.fault in ("nan", "bad_shape"):
        bad = corrupt({k: v.numpy() for k, v in arrays.items()}, job.fault)
        arrays = ArrayRecord({k: Array(v) for k, v in bad.items()})
    elif job.fault == "slow":
        time.sleep(float(rt.cfg.faults.get("slow_seconds", 30.0)))
    content = RecordDict(
        {
            ARRAYS_KEY: arrays,
            METRICS_KEY: MetricRecord(metrics),  # type: ignore[arg-type]
        }
    )
    return Message(content, reply_to=job.msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this client's partition with the configured learner."""
    job = prepare_train(msg, context)
    rt = job.rt
    model = rt.load(msg.content.array_records[ARRAYS_KEY])
    # Seed the global CPU generator (dropout, augmentation) without torch.manual_seed, which with
    # a CUDA build also queues a lazy CUDA seed call costing about 1 ms per client.
    torch.random.default_generator.manual_seed(job.seed)
    if rt.device.type == "cuda":
        torch.cuda.manual_seed(job.seed)
    generator = torch.Generator().manual_seed(job.seed)
    pair = model if isinstance(model, DetectorPair) else None
    result = job.learner.train(
        model if pair is None else pair.target,
        job.data,
        device=rt.device,
        generator=generator,
        proximal_mu=job.proximal_mu,
        state=job.state,
    )
    if pair is not None:  # open-set FAL: the detector on every labeled sample, unknowns as K
        n = osal.train_detector(
            rt.cfg,
            rt.detector_learners,
            pair.detector,
            rt.data(job.pid),
            fal.labeled_mask(context),
            device=rt.device,
            seed=job.seed,
            lr_scale=float(job.config.get(FAL_LR_SCALE, 1.0)),  # type: ignore[arg-type]
            context=context,
            stage=int(job.config.get(osal.STAGE_KEY, 0)),  # type: ignore[arg-type]
        )
        result.num_examples = n  # FedAvg weight of the composite: |L^kn| + |L^unk|
    return finish_train(job, model, result)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's partition."""
    rt = client_runtime(context)
    data = rt.data(partition_id(context, rt))
    lab = data.labeled_indices()  # weak labels: a client evaluates on the samples it has labels for
    lab = lab[data.y[lab] != data.num_classes]  # open set: the target knows no unknown class
    if lab.numel() < len(data):
        data = data.subset(lab)
    if len(data) == 0:
        metrics = {NUM_EXAMPLES_KEY: 0, EVAL_LOSS: 0.0, EVAL_ACCURACY: 0.0}
        return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)  # type: ignore[arg-type]
    model = rt.load(msg.content.array_records[ARRAYS_KEY])
    loss, acc = evaluate_model(
        model,
        data.x,
        data.y,
        mean=data.mean,
        std=data.std,
        device=rt.device,
        batch_size=rt.eval_batch_size,
    )
    metrics = {NUM_EXAMPLES_KEY: len(data), EVAL_LOSS: loss, EVAL_ACCURACY: acc}
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)  # type: ignore[arg-type]
