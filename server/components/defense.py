"""Post-training defenses (component ``defense``): the configured defense (FLAIN, dormant-neuron
pruning) applied once to the final global model, with the aux set held out of the test split;
MA/ASR/RA before and after go to ``defense.json``, TensorBoard and the summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fedsim import constants as C
from fedsim.checkpoint import latest_checkpoint, load_checkpoint
from fedsim.outputs import write_json_atomic
from server.components.backdoor import BackdoorEval, defense_name
from server.components.base import Component, register
from server.defenses import DEFENSES, defense_params

if TYPE_CHECKING:
    from server.workflow import Workflow

log = logging.getLogger("fedsim")


@register
class PostTrainingDefense(Component):
    """Runs ``cfg.defense`` after the last round (see the module docstring)."""

    name = "defense"
    order = 90
    summary_promises = ("defense",)
    needs = frozenset({"holdout", "initial_model"})

    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        return defense_name(cfg) != "none"

    def on_run_end(self, wf: Workflow, summary: dict[str, Any]) -> dict[str, Any]:
        return {"defense": apply_defense(wf, wf.cfg.defense)}


def _view(wf: Workflow, model: torch.nn.Module) -> dict[str, Any]:
    """MA/ASR/RA (and the clean loss/accuracy) of ``model``."""
    loss, acc, _ = wf.evaluate_on(model)  # type: ignore[arg-type]
    base = {C.EVAL_LOSS: loss, C.EVAL_ACCURACY: acc}
    backdoor = wf.component("backdoor")
    assert isinstance(backdoor, BackdoorEval)
    out = {**base, **backdoor.metrics(wf, model, base)}  # type: ignore[arg-type]
    validation = wf.component("validation")
    if validation is not None:  # the defended model on validation: what a sweep chooses on
        out.update(validation.metrics(wf, model))  # type: ignore[attr-defined]
    return out


def apply_defense(
    wf: Workflow, node: DictConfig | dict[str, Any], *, out_name: str | None = None
) -> dict[str, Any]:
    """Apply the defense ``node`` (a ``cfg.defense``-like mapping) to the run's final checkpoint;
    write ``out_name`` (default :data:`~fedsim.constants.DEFENSE_FILE`) and TensorBoard scalars;
    return the result with MA/ASR/RA before and after."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    assert isinstance(plain, dict)
    name = str(plain["name"])
    fn = DEFENSES.get(name)
    data, run_dir = wf.federation.data, wf.run_dir
    ckpt_path = latest_checkpoint(run_dir)
    if ckpt_path is None:
        raise RuntimeError(f"{run_dir}: no checkpoint holds the final model")
    ckpt = load_checkpoint(ckpt_path)
    final = {k: torch.from_numpy(np.array(v)) for k, v in ckpt["arrays"].items()}
    with np.load(Path(run_dir) / C.INITIAL_MODEL_FILE) as z:
        initial = {k: torch.from_numpy(z[k]) for k in z.files}
    model = wf.build_model()
    model.load_state_dict(final)
    before = _view(wf, model)
    assert wf.holdout is not None
    state, info = fn(
        model,
        initial,
        data.test_x[wf.holdout.aux],
        data.test_y[wf.holdout.aux],
        mean=data.mean,
        std=data.std,
        device=wf.device,
        dataset=str(wf.cfg.dataset.name),
        **defense_params(plain),
    )
    model.load_state_dict(state)
    after = _view(wf, model)
    result: dict[str, Any] = {"name": name, "round": int(ckpt["round"]), **info}
    for key in (C.BACKDOOR_MA, C.BACKDOOR_ASR, C.BACKDOOR_RA, C.VAL_ACCURACY, C.VAL_ASR):
        if key in before:
            result[f"{key}_before"] = before[key]
            result[f"{key}_after"] = after[key]
    write_json_atomic(Path(run_dir) / (out_name or C.DEFENSE_FILE), result)
    if bool(wf.cfg.get("tensorboard", False)):
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(Path(run_dir) / C.TENSORBOARD_DIR)) as tb:
            for key, value in result.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    tb.add_scalar(f"{name}/{key}", float(value), global_step=int(ckpt["round"]))
    log.info("defense %s: %s", name, json.dumps(result))
    return result


def posthoc_defense(
    run_dir: Path, defense: dict[str, Any], *, out_name: str | None = None
) -> dict[str, Any]:
    """Apply ``defense`` (a ``cfg.defense``-like mapping) to a finished run's final checkpoint, as
    a post-hoc step; writes ``out_name`` (default ``defense_<name>.json``) in the run directory."""
    from server.defenses import check_defense
    from server.workflow import Workflow

    cfg = OmegaConf.load(Path(run_dir) / C.CONFIG_FILE)
    assert isinstance(cfg, DictConfig)
    check_defense(str(defense["name"]), defense_params(defense), str(cfg.dataset.name))
    from server.components.validation import Validation

    views: list[Component] = [BackdoorEval()] + ([Validation()] if Validation.wanted(cfg) else [])
    wf = Workflow(cfg, Path(run_dir), components=views)
    wf.setup()
    return apply_defense(wf, defense, out_name=out_name or f"defense_{defense['name']}.json")
