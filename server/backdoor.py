"""The FL workflow under attack: exact attacker sampling, MA/ASR/RA every evaluated round, the
server root set for FLTrust, theta_0 stored explicitly, and the post-training defense at the end.

:func:`workflow_class` picks :class:`BackdoorWorkflow` when the config has an attack, a defense or
a strategy that needs server data, else the plain :class:`~server.workflow.FLWorkflow`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from clients.attacks import NO_ATTACK, attack_from_config, attackers_per_round
from clients.attacks.base import Attack, sample_with_attackers
from clients.learners import ClientData, build_learner
from fedsim import constants as C
from fedsim.checkpoint import latest_checkpoint, load_checkpoint
from fedsim.evaluation import evaluate as evaluate_model
from fedsim.models import ClassifierModel
from fedsim.outputs import read_metrics, write_json_atomic, write_summary
from fedsim.records import torch_state
from fedsim.seeding import derive_seed
from server.backdoor_eval import backdoor_metrics, holdout_split
from server.defenses import DEFENSES, defense_params
from server.workflow import FLWorkflow

log = logging.getLogger("fedsim")


def needs_backdoor_workflow(cfg: DictConfig) -> bool:
    """Whether ``cfg`` has an attack, a defense or a strategy that needs server data."""
    from strategies import STRATEGIES

    attack = str(OmegaConf.select(cfg, "attack.name", default=NO_ATTACK))
    defense = str(OmegaConf.select(cfg, "defense.name", default="none"))
    strategy = str(cfg.strategy.name)
    inner = str(OmegaConf.select(cfg, "strategy.inner", default=""))
    server_data = any(
        n in STRATEGIES and STRATEGIES.meta(n).get("server_data") for n in (strategy, inner)
    )
    return attack != NO_ATTACK or defense != "none" or bool(server_data)


def workflow_class(cfg: DictConfig) -> type[FLWorkflow]:
    """The workflow that runs ``cfg``."""
    return BackdoorWorkflow if needs_backdoor_workflow(cfg) else FLWorkflow


class BackdoorWorkflow(FLWorkflow):
    """FL rounds with backdoor metrics and a post-training defense (see the module docstring)."""

    _ready = False

    # ---- setup --------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self._ready:
            return
        cfg, data = self.cfg, self.federation.data
        self.attack: Attack | None = attack_from_config(cfg)
        if self.attack is not None:
            self.attack.check(data.num_classes)
        self.malicious = (
            self.attack.malicious(int(cfg.num_clients), int(cfg.seed)) if self.attack else []
        )
        be = cfg.get("backdoor_eval") or {}
        aux, root, clean = holdout_split(
            data.test_y.numpy(),
            aux_per_class=int(be.get("aux_per_class", 80)),
            root_per_class=int(be.get("root_per_class", 10)),
            seed=int(cfg.seed),
            source=str(be.get("aux_source", "holdout")),
        )
        self.aux_idx, self.root_idx, self.clean_idx = (
            torch.from_numpy(i) for i in (aux, root, clean)
        )
        self._ready = True

    def initial_model(self) -> ClassifierModel:
        """The seeded initial model; theta_0 is stored in the run directory (once)."""
        model = super().initial_model()
        path = self.run_dir / C.INITIAL_MODEL_FILE
        if not path.is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
        return model

    def sample(self, server_round: int, k: int, attempt: int = 0) -> list[int]:
        self._setup()
        if self.attack is None or self.attack.per_round != "exact":
            self._last_sampled = super().sample(server_round, k, attempt)
            return self._last_sampled
        n = int(self.cfg.num_clients)
        m = attackers_per_round(n, len(self.malicious), k)
        # A retried round (attempt > 0) draws from a round key no real round uses.
        key = server_round if not attempt else server_round + attempt * 1_000_003
        sampled = sample_with_attackers(int(self.cfg.seed), key, n, k, self.malicious, m)
        self._last_sampled = sampled
        return sampled

    def configure_strategy(self, strategy: Strategy) -> Strategy:
        self._setup()
        for s in (strategy, getattr(strategy, "strategy", None)):
            if s is not None and hasattr(s, "server_update"):
                s.server_update = self.server_update
        return strategy

    # ---- FLTrust's server update ----------------------------------------------------------------
    def server_update(self, arrays: ArrayRecord, server_round: int) -> np.ndarray:
        """The server's update on the root set from ``arrays`` (the client recipe), flattened over
        the floating-point entries in state order."""
        data = self.federation.data
        model = super().initial_model().to(self.device)
        start = torch_state(arrays)
        model.load_state_dict(start)
        root = ClientData(
            x=data.test_x[self.root_idx],
            y=data.test_y[self.root_idx],
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
        )
        local = {k: v for k, v in self.cfg.local.items() if k != "name"}
        learner = build_learner(str(self.cfg.local.name), local)
        seed = derive_seed(int(self.cfg.seed), server_round, 0xF7)
        torch.random.default_generator.manual_seed(seed)
        learner.train(
            model, root, device=self.device, generator=torch.Generator().manual_seed(seed)
        )
        end = model.state_dict()
        return np.concatenate(
            [
                (end[k].detach().cpu().double() - start[k].double()).numpy().ravel()
                for k in start
                if torch.is_floating_point(start[k])
            ]
        )

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, server_round: int, model: ClassifierModel) -> dict[str, float]:
        self._setup()
        record = self._metrics(model)
        record[C.MALICIOUS_SAMPLED] = [p for p in self._last_sampled if p in self.malicious]
        return record

    _last_sampled: list[int] = []

    def _metrics(self, model: torch.nn.Module) -> dict[str, Any]:
        data = self.federation.data
        x, y = data.test_x[self.clean_idx], data.test_y[self.clean_idx]
        loss, acc = evaluate_model(
            model,
            x,
            y,
            mean=data.mean,
            std=data.std,
            device=self.device,
            batch_size=int(self.cfg.eval_batch_size),
        )
        out: dict[str, Any] = {C.EVAL_LOSS: loss, C.EVAL_ACCURACY: acc, C.BACKDOOR_MA: acc}
        if self.attack is not None:
            out.update(
                backdoor_metrics(
                    model,
                    x,
                    y,
                    self.attack,
                    mean=data.mean,
                    std=data.std,
                    device=self.device,
                    batch_size=int(self.cfg.eval_batch_size),
                )
            )
        return out

    # ---- the post-training defense --------------------------------------------------------------
    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._setup()
        extra: dict[str, Any] = {}
        metrics = read_metrics(self.run_dir)
        evals = [r for r in metrics if r.get(C.BACKDOOR_MA) is not None]
        if evals:
            for key in (C.BACKDOOR_MA, C.BACKDOOR_ASR, C.BACKDOOR_RA):
                if evals[-1].get(key) is not None:
                    extra[f"final_{key}"] = evals[-1][key]
        name = str(OmegaConf.select(self.cfg, "defense.name", default="none"))
        if DEFENSES.get(name) is not None:
            result = apply_defense(self.cfg, self.run_dir, self)
            extra["defense"] = result
        if extra:
            summary.update(
                write_summary(self.run_dir, metrics, seed=int(self.cfg.seed), extra=extra)
            )


def apply_defense(
    cfg: DictConfig,
    run_dir: Path,
    workflow: BackdoorWorkflow,
    defense: DictConfig | dict | None = None,
) -> dict[str, Any]:
    """Apply the configured post-training defense (or ``defense``) to the run's final checkpoint;
    write :data:`~fedsim.constants.DEFENSE_FILE` and TensorBoard scalars; return the result with
    MA/ASR/RA before and after."""
    node = cfg.defense if defense is None else defense
    plain = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    )
    assert isinstance(plain, dict)
    name = str(plain["name"])
    fn = DEFENSES.get(name)
    data = workflow.federation.data
    ckpt_path = latest_checkpoint(run_dir)
    if ckpt_path is None:
        raise RuntimeError(f"{run_dir}: no checkpoint holds the final model")
    ckpt = load_checkpoint(ckpt_path)
    final = {k: torch.from_numpy(np.array(v)) for k, v in ckpt["arrays"].items()}
    with np.load(Path(run_dir) / C.INITIAL_MODEL_FILE) as z:
        initial = {k: torch.from_numpy(z[k]) for k in z.files}
    model = FLWorkflow.initial_model(workflow).to(workflow.device)
    model.load_state_dict(final)
    before = workflow._metrics(model)
    state, info = fn(
        model,
        initial,
        data.test_x[workflow.aux_idx],
        data.test_y[workflow.aux_idx],
        mean=data.mean,
        std=data.std,
        device=workflow.device,
        dataset=str(cfg.dataset.name),
        **defense_params(plain),
    )
    model.load_state_dict(state)
    after = workflow._metrics(model)
    result: dict[str, Any] = {"name": name, "round": int(ckpt["round"]), **info}
    for key in (C.BACKDOOR_MA, C.BACKDOOR_ASR, C.BACKDOOR_RA):
        if key in before:
            result[f"{key}_before"] = before[key]
            result[f"{key}_after"] = after[key]
    out = Path(run_dir) / (C.DEFENSE_FILE if defense is None else f"defense_{name}.json")
    write_json_atomic(out, result)
    if bool(cfg.get("tensorboard", False)):
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(Path(run_dir) / C.TENSORBOARD_DIR)) as tb:
            for key, value in result.items():
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and value is not None
                ):
                    tb.add_scalar(f"{name}/{key}", float(value), global_step=int(ckpt["round"]))
    log.info("defense %s: %s", name, json.dumps(result))
    return result


def posthoc_defense(run_dir: Path, defense: dict[str, Any]) -> dict[str, Any]:
    """Apply ``defense`` (a ``cfg.defense``-like mapping) to a finished run's final checkpoint, as
    a post-hoc step; writes ``defense_<name>.json`` in the run directory."""
    from fedsim.config import resolve_device
    from fedsim.federation import build_federation
    from server.defenses import check_defense

    cfg = OmegaConf.load(Path(run_dir) / C.CONFIG_FILE)
    assert isinstance(cfg, DictConfig)
    check_defense(str(defense["name"]), defense_params(defense), str(cfg.dataset.name))
    wf = BackdoorWorkflow(cfg, Path(run_dir))
    wf.device = torch.device(resolve_device(str(cfg.device)))
    wf.federation = build_federation(cfg)
    wf._setup()
    return apply_defense(cfg, Path(run_dir), wf, defense)
