"""The validation split (component ``validation``): the server evaluates every evaluated round
on its validation set (``dataset.val_fraction`` of the training split, clean labels; under an
attack also ASR/RA there), and the summary names the round of best validation accuracy with the
test accuracy of that round, so that a "best" result is chosen on validation, never on test."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from fedsim import constants as C
from fedsim.evaluation import evaluate_per_class
from fedsim.federation import val_fraction
from server.components.backdoor import BackdoorEval, attack_name
from server.components.base import Component, register

if TYPE_CHECKING:
    from fedsim.models import ClassifierModel
    from server.workflow import Workflow


def best_on_validation(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary entries of the evaluated round with the highest validation accuracy (the
    earliest among ties): its round, its validation accuracy and its test accuracy; and the last
    evaluated round's validation numbers (``final_val_*``). In a staged run (FAL) only the last
    stage's rounds count: earlier stages had fewer labels."""
    evals = [r for r in rounds if r.get(C.VAL_ACCURACY) is not None]
    if not evals:
        return {}
    if evals[-1].get("stage") is not None:  # FAL: the last stage's rounds (its label budget)
        evals = [r for r in evals if r.get("stage") == evals[-1]["stage"]]
    best = max(evals, key=lambda r: (float(r[C.VAL_ACCURACY]), -int(r[C.ROUND])))
    last = evals[-1]
    return {
        C.BEST_VAL_ROUND: int(best[C.ROUND]),
        C.BEST_VAL_ACCURACY: float(best[C.VAL_ACCURACY]),
        C.TEST_AT_BEST_VAL: best.get(C.EVAL_ACCURACY),
        **{f"final_{k}": last[k] for k in (C.VAL_LOSS, C.VAL_ACCURACY, C.VAL_ASR) if k in last},
    }


@register
class Validation(Component):
    """Validation metrics each evaluated round; see the module docstring."""

    name = "validation"
    order = 5
    promises = (C.VAL_LOSS, C.VAL_ACCURACY, C.VAL_ASR, C.VAL_RA)
    summary_promises = (C.BEST_VAL_ROUND, C.BEST_VAL_ACCURACY, C.TEST_AT_BEST_VAL)

    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        return val_fraction(cfg) > 0

    @classmethod
    def promised(cls, cfg: DictConfig) -> tuple[str, ...]:
        if attack_name(cfg) == "none":
            return (C.VAL_LOSS, C.VAL_ACCURACY)
        return cls.promises

    def setup(self, wf: Workflow) -> None:
        self.idx = torch.from_numpy(wf.federation.val_indices)

    def metrics(self, wf: Workflow, model: ClassifierModel) -> dict[str, Any]:
        """Validation loss and accuracy of ``model`` (and the attack's ASR/RA there)."""
        data = wf.federation.data
        x, y = data.train_x[self.idx], data.train_y[self.idx]
        loss, acc, _ = evaluate_per_class(
            model,
            x,
            y,
            mean=data.mean,
            std=data.std,
            device=wf.device,
            batch_size=int(wf.cfg.eval_batch_size),
            num_classes=data.num_classes,
        )
        out: dict[str, Any] = {C.VAL_LOSS: loss, C.VAL_ACCURACY: acc}
        backdoor = wf.component("backdoor")
        if isinstance(backdoor, BackdoorEval):
            extra = backdoor.attack_metrics(wf, model, x, y)
            for key, val_key in ((C.BACKDOOR_ASR, C.VAL_ASR), (C.BACKDOOR_RA, C.VAL_RA)):
                if key in extra:
                    out[val_key] = extra[key]
        return out

    def evaluate(
        self, wf: Workflow, server_round: int, model: ClassifierModel, base: dict[str, Any]
    ) -> dict[str, Any]:
        return self.metrics(wf, model)

    def summary(self, wf: Workflow, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        return best_on_validation(rounds)
