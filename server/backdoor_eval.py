"""Backdoor evaluation: held-out test subsets and the MA/ASR/RA metrics (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from clients.attacks.base import Attack
from fedsim import constants as C
from fedsim.errors import invalid
from fedsim.evaluation import predictions

AUX_SOURCES = ("holdout", "test_head")


def holdout_split(
    test_y: np.ndarray,
    *,
    aux_per_class: int,
    root_per_class: int,
    seed: int,
    source: str = "holdout",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the auxiliary set, the FLTrust root set and the clean evaluation set.

    The aux set is the first ``aux_per_class`` test images of each class in test order (FLAIN's
    choice of images); the root set is ``root_per_class`` seeded random images per class from the
    rest. With ``source='holdout'`` both are removed from the evaluation set; with ``'test_head'``
    (the reference code) the evaluation set is the whole test split.
    """
    if source not in AUX_SOURCES:
        raise invalid("backdoor_eval.aux_source", source, " or ".join(AUX_SOURCES))
    rng = np.random.default_rng([int(seed), 0x7E57])
    aux, root = [], []
    for c in np.unique(test_y):
        idx = np.flatnonzero(test_y == c)
        aux.append(idx[:aux_per_class])
        rest = idx[aux_per_class:]
        root.append(np.sort(rng.choice(rest, size=min(root_per_class, len(rest)), replace=False)))
    aux_idx = np.sort(np.concatenate(aux)).astype(np.int64)
    root_idx = np.sort(np.concatenate(root)).astype(np.int64)
    if source == "test_head":
        clean = np.arange(len(test_y), dtype=np.int64)
    else:
        clean = np.setdiff1d(np.arange(len(test_y)), np.concatenate([aux_idx, root_idx]))
    return aux_idx, root_idx, clean.astype(np.int64)


def backdoor_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 1024,
) -> dict[str, float]:
    """ASR, RA and source-class accuracy on the clean evaluation set ``(x, y)``.

    Eligible images have a label in the attack's source set other than the target (all non-target
    images for all-to-one). ASR: eligible images with the full trigger predicted as the target;
    RA: the same predicted as their true label. Attacks without a trigger (label flipping) are
    measured on the clean eligible images.
    """
    eligible = attack.eligible(y)
    xe, ye = x[eligible], y[eligible]
    if len(ye) == 0:
        return {}
    clean_pred = predictions(model, xe, mean=mean, std=std, device=device, batch_size=batch_size)
    xt = attack.test_inputs(xe) if attack.uses_trigger else xe
    pred = predictions(model, xt, mean=mean, std=std, device=device, batch_size=batch_size)
    return {
        C.BACKDOOR_ASR: float((pred == attack.target).float().mean()),
        C.BACKDOOR_RA: float((pred == ye).float().mean()),
        C.SOURCE_ACCURACY: float((clean_pred == ye).float().mean()),
    }


def check_backdoor_config(cfg: DictConfig) -> None:
    """Validate the ``attack``, ``defense`` and ``backdoor_eval`` nodes of a fedsim config (one
    line per problem, before any work starts)."""
    from omegaconf import OmegaConf

    from clients.attacks import attack_from_config
    from fedsim.errors import ConfigError
    from server.defenses import check_defense, defense_params

    attack_from_config(cfg)  # unknown name / parameter / invalid value
    be = OmegaConf.select(cfg, "backdoor_eval") or {}
    for key in ("aux_per_class", "root_per_class"):
        value = be.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(f"backdoor_eval.{key}", value, "an integer >= 0")
    source = be.get("aux_source", "holdout")
    if source not in AUX_SOURCES:
        raise invalid("backdoor_eval.aux_source", source, " or ".join(AUX_SOURCES))
    node = OmegaConf.select(cfg, "defense")
    if node is not None:
        plain = OmegaConf.to_container(node, resolve=True)
        assert isinstance(plain, dict)
        if "name" not in plain:
            raise ConfigError(
                "config group 'defense' has no name: pick none, flain or dormant_pruning"
            )
        name = str(plain["name"])
        check_defense(name, defense_params(plain), str(OmegaConf.select(cfg, "dataset.name")))
        if name != "none" and be.get("aux_per_class", 0) < 1:
            raise invalid(
                "backdoor_eval.aux_per_class",
                be.get("aux_per_class"),
                f"an integer >= 1 for defense {name!r}",
            )
    strategy = str(OmegaConf.select(cfg, "strategy.name"))
    inner = str(OmegaConf.select(cfg, "strategy.inner", default=""))
    if "fltrust" in (strategy, inner) and be.get("root_per_class", 0) < 1:
        raise invalid(
            "backdoor_eval.root_per_class",
            be.get("root_per_class"),
            "an integer >= 1 for strategy 'fltrust'",
        )


def check_attack_data(cfg: DictConfig, num_classes: int, image_size: int) -> None:
    """Check the attack against the loaded dataset: labels in range, trigger inside the images."""
    from clients.attacks import attack_from_config
    from fedsim.errors import ConfigError

    attack = attack_from_config(cfg)
    if attack is None:
        return
    attack.check(num_classes)
    size = getattr(attack, "image_size", None)
    if size is not None and int(size) != int(image_size):
        raise ConfigError(
            f"invalid attack.image_size={size}: the dataset's images are {image_size}x{image_size} "
            f"(set attack.image_size={image_size} and a trigger that fits)"
        )
