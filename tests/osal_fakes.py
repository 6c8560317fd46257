"""Fake query inputs shared by the open-set strategies' tests (``test_osal_query.py``,
``test_e2oal.py``): model outputs from logits, and a small client with class-0-like,
class-1-like and unknown-like unlabeled groups."""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.query import ModelOutputs, QueryInputs


def model_outputs(logits: Any, features: np.ndarray | None = None) -> ModelOutputs:
    """:class:`ModelOutputs` of ``logits`` (log-softmax computed stably; zero features unless
    given)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(1, keepdims=True)) + m
    feats = np.zeros((len(z), 2)) if features is None else features
    return ModelOutputs(log_probs=z - lse, features=feats, logits=z)


def three_groups(
    state: dict,
    *,
    budget: int = 4,
    unknowns: bool = True,
    seed: int = 7,
    embedding: bool = False,
    target_margin: float = 2.0,
    target_noise: float = 0.5,
) -> QueryInputs:
    """K = 2. Labeled: 2 of class 0, 2 of class 1, 2 unknowns (or, ``unknowns=False``, 2 more
    knowns). Unlabeled groups of 10: A (class 0 like), B (class 1 like), C (unknown like: the
    detector's unknown logit is high, the target is unsure).

    ``embedding`` gives the detector features (A, B, C near the unit axes, as the labeled
    samples of their kind) for EAOA's reverse kNN. The noise is drawn from ``default_rng(3)``
    per group in the order detector, embedding (if any), target; ``seed`` seeds the query's
    rng.
    """
    rng = np.random.default_rng(3)

    def group(det: list[float], emb: list[float], tgt: list[float], m: int) -> list[np.ndarray]:
        out = [np.array(det) + rng.normal(0, 0.3, (m, 3))]
        if embedding:
            out.append(np.array(emb) + rng.normal(0, 0.05, (m, 3)))
        out.append(np.array(tgt) + rng.normal(0, target_noise, (m, 2)))
        return out

    t = target_margin
    kinds: list[tuple[list[float], list[float], list[float]]] = [
        ([8, 0, -4], [1, 0, 0], [t, 0]),
        ([0, 8, -4], [0, 1, 0], [0, t]),
        ([0, 0, 6], [0, 0, 1], [1, 1]),
    ]
    parts = [group(*k, m) for m in (2, 10) for k in kinds]
    cols = [np.vstack([p[i] for p in parts]) for i in range(len(parts[0]))]
    det, tgt = cols[0], cols[-1]
    labeled = np.zeros(36, bool)
    labeled[:6] = True
    labels = np.full(36, -1)
    labels[:6] = [0, 0, 1, 1, 2, 2] if unknowns else [0, 0, 1, 1, 0, 1]
    outs = {
        "detector": model_outputs(det, cols[1] if embedding else None),
        "global": model_outputs(tgt),
    }
    return QueryInputs(
        labeled=labeled,
        labels=labels,
        budget=budget,
        num_classes=2,
        rng=np.random.default_rng(seed),
        outputs=lambda kind: outs[kind],
        unknown_label=2,
        state=state,
    )
