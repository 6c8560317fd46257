"""The attacks: BadNets/CBA, DBA, model replacement (constrain-and-scale without the anomaly
term) and label flipping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch

from clients.attacks.base import ATTACKS, Attack
from clients.attacks.triggers import TRIGGER_SHAPES, stamp, trigger_mask, trigger_part
from fedsim.errors import invalid
from fedsim.schema import spec


@ATTACKS.register("cba")
@dataclass(kw_only=True)
class CBA(Attack):
    """Centralised pixel-pattern backdoor (BadNets, Gu et al. 2017): every attacker stamps the
    whole trigger on ``poison_frac`` of its source-class samples and relabels them to the target.

    Parameters
    ----------
    trigger
        ``square`` or ``plus``.
    trigger_size
        Side of the trigger's box (pixels).
    trigger_pos
        ``[row, col]`` of the box's top-left pixel (FLAIN MNIST: 5x5 at 23-27).
    trigger_value
        uint8 value written into the trigger pixels (255: white).
    image_size
        Side of the images (checked against the dataset by the server).
    """

    trigger: str = "square"
    trigger_size: Annotated[int, spec(low=1)] = 5
    trigger_pos: Annotated[list[int], spec(length=2, low=0, doc="top-left (row, col)")] = field(
        default_factory=lambda: [23, 23]
    )
    trigger_value: Annotated[int, spec(low=0, high=255)] = 255
    image_size: int = 28

    def check(self, num_classes: int | None = None) -> None:
        super().check(num_classes)
        if self.trigger not in TRIGGER_SHAPES:
            raise invalid("attack.trigger", self.trigger, " or ".join(TRIGGER_SHAPES))
        if not 0 <= int(self.trigger_value) <= 255:
            raise invalid("attack.trigger_value", self.trigger_value, "an integer in [0, 255]")
        self.mask()  # raises if the box does not fit

    def mask(self) -> np.ndarray:
        """The full trigger mask."""
        return trigger_mask(self.trigger, self.trigger_size, self.trigger_pos, self.image_size)

    def stamp_train(self, x: torch.Tensor, attacker_index: int) -> torch.Tensor:
        return stamp(x, self.mask(), self.trigger_value)

    def test_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return stamp(x, self.mask(), self.trigger_value)


@ATTACKS.register("dba")
@dataclass(kw_only=True)
class DBA(CBA):
    """Distributed backdoor attack (Xie et al., ICLR 2020): attacker ``i`` stamps part
    ``i mod num_parts`` of the global trigger; the test uses the full trigger. FLAIN's MNIST
    setting: a ``plus`` in 2 parts (even attackers the vertical bar, odd ones the horizontal bar).
    """

    trigger: str = "plus"
    num_parts: int = 2

    def check(self, num_classes: int | None = None) -> None:
        super().check(num_classes)
        self.part(0)  # raises for an invalid split

    def part(self, attacker_index: int) -> np.ndarray:
        """The mask stamped by attacker ``attacker_index``."""
        return trigger_part(
            self.mask(),
            self.trigger,
            self.trigger_size,
            self.trigger_pos,
            self.num_parts,
            attacker_index,
        )

    def stamp_train(self, x: torch.Tensor, attacker_index: int) -> torch.Tensor:
        return stamp(x, self.part(attacker_index), self.trigger_value)


@ATTACKS.register("model_replacement")
@dataclass(kw_only=True)
class ModelReplacement(CBA):
    """Model replacement (Bagdasaryan et al., AISTATS 2020): train a backdoored model X with the
    CBA trigger, then submit ``G + scale * (X - G)``.

    Parameters
    ----------
    scale
        The boost gamma; ``None``: the number of clients per round (gamma = n / eta with server
        learning rate 1). The anomaly-evasion loss term is not implemented.
    """

    scale: float | None = None

    def check(self, num_classes: int | None = None) -> None:
        super().check(num_classes)
        if self.scale is not None and not self.scale > 0:
            raise invalid("attack.scale", self.scale, "a number > 0 or null")

    def after_train(
        self, model: torch.nn.Module, global_state: dict[str, torch.Tensor], num_clients: int
    ) -> None:
        gamma = float(self.scale) if self.scale is not None else float(num_clients)
        scale_update(model, global_state, gamma)


def scale_update(
    model: torch.nn.Module, global_state: dict[str, torch.Tensor], gamma: float
) -> None:
    """In place: every floating-point entry ``w`` of ``model``'s state becomes
    ``g + gamma * (w - g)``."""
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if torch.is_floating_point(t):
                g = global_state[name].to(t.device, t.dtype)
                t.copy_(g + gamma * (t - g))


@ATTACKS.register("label_flip")
@dataclass(kw_only=True)
class LabelFlip(Attack):
    """Label flipping: relabel ``poison_frac`` of the source-class samples to the target, no
    trigger (targeted misclassification). Its ASR is measured on clean source-class images."""

    uses_trigger = False
