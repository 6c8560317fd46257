"""Small parts of the workflow: the server's held-out test sets and the per-round progress line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fedsim import constants as C
from fedsim.errors import ConfigError
from server.backdoor_eval import holdout_split


@dataclass(frozen=True)
class Holdout:
    """Indices into the test split: the defenses' aux set, FLTrust's root set, and the clean
    evaluation set (the rest, or the whole split with ``aux_source=test_head``)."""

    aux: torch.Tensor
    root: torch.Tensor
    clean: torch.Tensor

    @staticmethod
    def params(cfg: DictConfig) -> tuple[int, int, str]:
        """``(aux_per_class, root_per_class, aux_source)`` of ``cfg.backdoor_eval``."""
        be = OmegaConf.select(cfg, "backdoor_eval") or {}
        return (
            int(be.get("aux_per_class", 80)),
            int(be.get("root_per_class", 10)),
            str(be.get("aux_source", "holdout")),
        )

    @classmethod
    def from_config(cls, cfg: DictConfig, test_y: np.ndarray) -> Holdout:
        """The sets of ``cfg.backdoor_eval`` on the labels ``test_y`` (seeded by ``cfg.seed``)."""
        aux, root, source = cls.params(cfg)
        a, r, c = holdout_split(
            test_y, aux_per_class=aux, root_per_class=root, seed=int(cfg.seed), source=source
        )
        return cls(*(torch.from_numpy(i) for i in (a, r, c)))


def check_holdout_fits(cfg: DictConfig, test_y: np.ndarray, *, why: str) -> None:
    """Refuse aux/root sets that leave a class without a clean evaluation image (``why``: the
    feature that needs them), with one line naming the largest sizes that fit."""
    aux, root, source = Holdout.params(cfg)
    if source != "holdout":
        return
    counts = np.bincount(np.asarray(test_y, dtype=np.int64))
    counts = counts[counts > 0]
    smallest = int(counts.min()) if counts.size else 0
    if aux + root < smallest:
        return
    dataset = OmegaConf.select(cfg, "dataset.name")
    raise ConfigError(
        f"backdoor_eval.aux_per_class={aux} + root_per_class={root} held out of the test split "
        f"(for {why}) leave no clean test image of the smallest class of dataset {dataset!r} "
        f"({smallest} test images): allowed aux_per_class + root_per_class <= {smallest - 1}, "
        f"e.g. backdoor_eval.aux_per_class={max(1, (smallest - 1) * 2 // 3)} "
        f"backdoor_eval.root_per_class={max(1, (smallest - 1) // 6)}"
    )


def progress_line(record: dict[str, Any], rounds: int) -> str:
    """The one-line progress display of a round's record."""
    parts = [f"round {record[C.ROUND]:>{len(str(rounds))}}/{rounds}"]
    for key, label in (
        (C.TRAIN_LOSS, "train_loss"),
        (C.EVAL_LOSS, "eval_loss"),
        (C.EVAL_ACCURACY, "eval_acc"),
        (C.VAL_ACCURACY, "val_acc"),
    ):
        value = record.get(key)
        if value is not None and np.isfinite(value):
            parts.append(f"{label} {value:.4f}")
    if record[C.FAILURES]:
        parts.append(f"failures {record[C.FAILURES]}")
    parts.append(f"{record[C.ROUND_SECONDS]:.2f}s")
    return " | ".join(parts)


def client_state_warning(cfg: DictConfig) -> str | None:
    """On resume: the line saying which local methods keep per-client state across rounds (in
    the clients' ``Context.state``, which checkpoints do not hold), or None."""
    from fedsim.data.weak_clients import stateful_local_methods

    stateful = stateful_local_methods(cfg)
    if not stateful:
        return None
    return (
        f"resume: local method(s) {', '.join(stateful)} keep per-client state across rounds on "
        "the clients, which checkpoints do not hold: it restarts now, so the rounds after the "
        "checkpoint may differ from an uninterrupted run"
    )
