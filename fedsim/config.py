"""Composing, validating and shipping fedsim's configuration.

Hydra config groups in ``conf/`` are the single source of defaults. Library code never reads Hydra's
global state: :func:`compose` composes the tree in a scoped context (used by the apps under
``flwr run`` and by tests), and the CLI hands the composed config to :func:`fedsim.runner.run`.
The apps receive the whole resolved config as JSON in Flower's run config, so the same apps run
under simulation and deployment.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import conf as _conf_pkg
from fedsim.config_schema import FAULT_LISTS, TOO_FEW_REPLIES, FaultsSchema, RunSchema
from fedsim.constants import RUN_CONFIG_JSON_KEY, RUN_CONFIG_OVERRIDES_KEY
from fedsim.errors import ConfigError, invalid
from fedsim.schema import check_params, keys_of

CONF_DIR = Path(_conf_pkg.__file__).resolve().parent
DEVICES = ("auto", "cpu", "cuda")


#: Hydra's compose API keeps global state while it composes: one thread at a time.
_COMPOSE_LOCK = threading.Lock()


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra-style ``overrides`` (no Hydra global state kept).

    Raises
    ------
    ConfigError
        If an override names an unknown option or key.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with _COMPOSE_LOCK, initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    return cfg


def to_run_config(cfg: DictConfig) -> dict[str, str]:
    """Flower run config carrying the whole resolved config."""
    return {RUN_CONFIG_JSON_KEY: json.dumps(OmegaConf.to_container(cfg, resolve=True))}


def from_run_config(run_config: Mapping[str, Any]) -> DictConfig:
    """The config an app runs with: the JSON sent by ``fedsim run``, else the conf/ defaults with
    the run config's ``overrides`` string (``flwr run --run-config 'overrides="rounds=5"'``)."""
    if run_config.get(RUN_CONFIG_JSON_KEY):
        return OmegaConf.create(json.loads(str(run_config[RUN_CONFIG_JSON_KEY])))
    overrides = shlex.split(str(run_config.get(RUN_CONFIG_OVERRIDES_KEY, "") or ""))
    cfg = compose(overrides)
    validate(cfg)
    return cfg


__all__ = ["FAULT_LISTS", "TOO_FEW_REPLIES", "check_data", "compose", "validate"]


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(key, value, "a number")
    return float(value)


def _int_at_least(cfg: DictConfig, key: str, low: int) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid(key, value, f"an integer >= {low}")
    return value


def clients_per_round(cfg: DictConfig) -> int:
    """Clients sampled per round: an integer count, or a fraction of ``num_clients`` in (0, 1]."""
    value = cfg.clients_per_round
    n = int(cfg.num_clients)
    allowed = f"an integer in [1, num_clients={n}] or a fraction in (0, 1]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid("clients_per_round", value, allowed)
    if isinstance(value, float) and not value.is_integer():
        if not 0 < value <= 1:
            raise invalid("clients_per_round", value, allowed)
        return max(1, round(value * n))
    if not 1 <= value <= n:
        raise invalid("clients_per_round", value, allowed)
    return int(value)


def validate(cfg: DictConfig) -> None:
    """Check names and values before any work starts; raise one-line :class:`ConfigError`.

    The core's groups are checked here; then every whole-config check the plugins registered
    (:data:`fedsim.registries.CONFIG_CHECKS`: learners, strategies, attacks and defenses, FAL),
    which loads the plugins (:func:`fedsim.plugins.load_plugins`).
    """
    from fedsim.data import DATASETS, PARTITIONERS
    from fedsim.engine import ENGINES
    from fedsim.models import MODELS
    from fedsim.registries import CONFIG_CHECKS, LOCAL, STRATEGIES

    for group, registry in (
        ("dataset", DATASETS),
        ("partition", PARTITIONERS),
        ("model", MODELS),
        ("strategy", STRATEGIES),
        ("local", LOCAL),
        ("engine", ENGINES),
    ):
        node = cfg.get(group)
        if not isinstance(node, Mapping) or "name" not in node:
            raise ConfigError(f"missing config group {group!r}: pick one of {registry.names()}")
        registry.get(str(node["name"]))

    # the top-level keys, as declared in fedsim.config_schema (types, ranges, choices)
    declared = [k.name for k in keys_of(RunSchema)]
    check_params("", RunSchema, {k: cfg[k] for k in declared if k in cfg})
    for key in ("seed", "num_clients"):
        if key not in cfg:
            raise ConfigError(f"missing config key {key!r}")
    clients_per_round(cfg)
    check_params(
        "dataset",
        DATASETS.get(str(cfg.dataset.name)),
        {k: v for k, v in cfg.dataset.items() if k not in ("name", "val_fraction")},
        what=f"dataset {cfg.dataset.name!r}",
    )
    from fedsim.data.validation import check_val_fraction

    check_val_fraction(cfg.dataset.get("val_fraction", 0.0))
    check_params(
        "model.params",
        MODELS.get(str(cfg.model.name)),
        dict(cfg.model.get("params") or {}),
        what=f"model {cfg.model.name!r}",
        exclude=("num_classes", "in_channels", "image_size"),
    )
    check_params(
        "partition",
        PARTITIONERS.get(str(cfg.partition.name)),
        {k: v for k, v in cfg.partition.items() if k != "name"},
        what=f"partitioner {cfg.partition.name!r}",
    )
    from fedsim.data.weak_clients import check_weak_labels
    from fedsim.ssfl import check_ssfl

    check_ssfl(cfg)  # semi-supervised setting (it supplies the weak labels)

    check_weak_labels(cfg)  # weak labels per client group (the learners check their kinds)
    from fedsim.osal import check_open_set_run

    check_open_set_run(cfg)
    if cfg.get("min_clients", 1) > clients_per_round(cfg):
        raise invalid(
            "min_clients", cfg.min_clients, f"at most clients_per_round={clients_per_round(cfg)}"
        )
    _check_faults(cfg)
    if "alpha" in cfg.partition and not _number(cfg, "partition.alpha") > 0:
        raise invalid("partition.alpha", cfg.partition.alpha, "a number > 0")
    for key in ("partition.min_partition_size", "partition.classes_per_client"):
        if OmegaConf.select(cfg, key) is not None:
            _int_at_least(cfg, key, 1 if key.endswith("client") else 0)
    validate_engine(cfg)
    device = str(cfg.device)
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise invalid("device", device, "auto, cpu, cuda or cuda:N")
    for _, check in CONFIG_CHECKS.items():  # the plugins' own checks, in registration order
        check(cfg)


def check_data(cfg: DictConfig, data: Any) -> None:
    """Run the plugins' checks of the config against the loaded dataset
    (:data:`fedsim.registries.DATA_CHECKS`; ``data`` is a :class:`fedsim.data.DatasetArrays`).

    Raises
    ------
    ConfigError
        One line, e.g. a trigger that does not fit the dataset's images.
    """
    from fedsim.registries import DATA_CHECKS

    for _, check in DATA_CHECKS.items():
        check(cfg, data)


def config_summary(cfg: DictConfig) -> str:
    """One line naming the main choices of a run."""
    return (
        f"{cfg.dataset.name} | {cfg.partition.name} | {cfg.num_clients} clients "
        f"({cfg.clients_per_round}/round) | {cfg.model.name} | {cfg.strategy.name} | "
        f"{cfg.local.name} | {cfg.rounds} rounds | seed {cfg.seed}"
    )


#: The values of ``engine.vectorize`` (``clients/learners/vectorized.py``).
VECTORIZE_MODES = ("auto", "on", "off")


def vectorize_mode(value: Any) -> str:
    """``engine.vectorize`` as one of :data:`VECTORIZE_MODES` (absent: ``off``).

    YAML 1.1 reads a bare ``on``/``off`` as true/false: those mean ``on``/``off``. Anything else
    is refused with one line naming the allowed values.

    >>> vectorize_mode(True), vectorize_mode("Auto"), vectorize_mode(None)
    ('on', 'auto', 'off')
    """
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    if isinstance(value, str) and value.lower() in VECTORIZE_MODES:
        return value.lower()
    raise invalid("engine.vectorize", value, " | ".join(VECTORIZE_MODES))


def validate_engine(cfg: DictConfig) -> None:
    """Check the ``engine`` group (what starting the engine reads); imports no torch.

    :func:`validate` calls it; :func:`fedsim.runner.run` calls it alone before it starts the
    engine, and the rest of :func:`validate` while the engine starts.
    """
    from fedsim.engine import ENGINES

    node = cfg.get("engine")
    if not isinstance(node, Mapping) or "name" not in node:
        raise ConfigError(f"missing config group 'engine': pick one of {ENGINES.names()}")
    ENGINES.get(str(node["name"]))
    gpus = _number(cfg, "engine.client_gpus")
    if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
        raise invalid(
            "engine.client_gpus",
            cfg.engine.client_gpus,
            "0, a fraction in (0, 1] or a whole number",
        )
    if OmegaConf.select(cfg, "engine.chunks_per_actor") is not None:
        _int_at_least(cfg, "engine.chunks_per_actor", 1)
    if OmegaConf.select(cfg, "engine.inline_bytes") is not None:
        _int_at_least(cfg, "engine.inline_bytes", 0)
    vectorize_mode(OmegaConf.select(cfg, "engine.vectorize"))
    for key in ("engine.lean_ray", "engine.lean_agents"):
        flag = OmegaConf.select(cfg, key)
        if flag is not None and not isinstance(flag, bool):
            raise invalid(key, flag, "true or false")
    if not _number(cfg, "engine.client_cpus") > 0:
        raise invalid("engine.client_cpus", cfg.engine.client_cpus, "a number > 0")
    for key in ("engine.num_cpus", "engine.num_gpus"):
        if OmegaConf.select(cfg, key) is not None:
            _int_at_least(cfg, key, 1 if key.endswith("cpus") else 0)


def _check_faults(cfg: DictConfig) -> None:
    """Fault injection: the declared types (:class:`FaultsSchema`), and partition ids that
    exist."""
    faults = cfg.get("faults")
    if not faults:
        return
    check_params("faults", FaultsSchema, dict(faults))
    n = int(cfg.num_clients)
    for key in FAULT_LISTS:
        for pid in faults.get(key) or []:
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < n:
                raise invalid(f"faults.{key}", list(faults[key]), f"partition ids in [0, {n - 1}]")


def resolve_device(name: str) -> str:
    """``auto`` becomes ``cuda`` when this process may use a GPU, else ``cpu``.

    In a Ray actor (a simulated client's worker, under either engine) that is when Ray gave the
    actor a GPU share (``engine.client_gpus > 0``). fedsim starts Ray with
    ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` (Ray's coming default), so an actor given no GPU
    still sees every GPU; without this check each of them would train on GPU 0, as many as
    there are CPUs, outside Ray's accounting. Elsewhere (the driver, a SuperNode): whenever a
    GPU is visible.
    """
    if name != "auto":
        return name
    if ray_actor_has_gpu() is False:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def ray_actor_has_gpu() -> bool | None:
    """Whether Ray gave this process's actor a GPU share; ``None`` outside a Ray actor."""
    import sys

    ray = sys.modules.get("ray")  # never imported here: a process without Ray is no actor
    if ray is None or not ray.is_initialized():
        return None
    if ray.get_runtime_context().get_actor_id() is None:
        return None
    return bool(ray.get_gpu_ids())


def check_simulation_device(cfg: DictConfig) -> None:
    """In a simulation, ``device=cuda`` or ``cuda:N`` needs a GPU share per client.

    Ray places the clients' actors by ``engine.client_gpus``, and an actor sees only the GPUs it
    was given, as ``cuda:0`` onwards. (Deployed SuperNodes have no such limit, so the apps'
    own :func:`validate` does not check this.)
    """
    import math

    device = str(cfg.device)
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        return  # the CPU, auto, or a malformed name (which validate() reports)
    gpus = _number(cfg, "engine.client_gpus")
    if gpus == 0:
        raise ConfigError(
            f"device={device} with engine.client_gpus=0: simulated clients get no GPU share "
            "from Ray, so as many would share a GPU as there are CPUs; set engine.client_gpus "
            "(0.25: four clients per GPU) or use device=auto or cpu"
        )
    index = int(device[5:]) if device.startswith("cuda:") else 0
    seen = max(1, math.ceil(gpus))
    if index >= seen:
        raise ConfigError(
            f"device={device} with engine.client_gpus={cfg.engine.client_gpus}: each simulated "
            f"client's actor sees only its own {seen} GPU(s); allowed: cuda or cuda:0"
            + (f" to cuda:{seen - 1}" if seen > 1 else "")
        )
