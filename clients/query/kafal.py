"""KAFAL's sampling, KSAS (Cao et al., ICCV 2023), spec section 8.4: both the client's last FL local
model and the global model have their logits shifted by ``log n_c`` (the client's labeled class
counts; absent classes get -inf), and the samples of largest symmetric KL divergence between the
two shifted predictions are picked. (KCFU, the training-side part, is not implemented.)
"""

from __future__ import annotations

import numpy as np

from clients.query import MODEL_MODES, QUERY, QueryInputs, QueryStrategy
from clients.query.common import top_k
from fedsim.errors import invalid

__all__ = ["KafalQuery", "ksas_scores"]


def _shifted_log_softmax(log_probs: np.ndarray, class_counts: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        z = np.asarray(log_probs, dtype=np.float64) + np.log(np.asarray(class_counts, float))
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def ksas_scores(
    local_log_probs: np.ndarray, global_log_probs: np.ndarray, class_counts: np.ndarray
) -> np.ndarray:
    """``0.5 * [KL(p_loc || p_srv) + KL(p_srv || p_loc)]`` after the ``log n_c`` shift.

    Classes with ``n_c = 0`` have probability 0 in both distributions and contribute nothing.
    Log-probabilities stand in for logits (the softmax is shift invariant).
    """
    class_counts = np.asarray(class_counts)
    if class_counts.sum() == 0:  # nothing labeled yet: no shift
        class_counts = np.ones_like(class_counts)
    a = _shifted_log_softmax(local_log_probs, class_counts)
    b = _shifted_log_softmax(global_log_probs, class_counts)
    keep = np.asarray(class_counts) > 0
    pa, pb = np.exp(a), np.exp(b)
    a = np.where(keep[None, :], a, 0.0)  # absent classes: p = 0 in both, no contribution
    b = np.where(keep[None, :], b, 0.0)
    diff = a - b
    return 0.5 * ((pa * diff).sum(axis=1) + (pb * -diff).sum(axis=1))


@QUERY.register("kafal")
class KafalQuery(QueryStrategy):
    """KSAS with the client's model after its last FL local update (``local_model``)."""

    def __init__(self, *, local_model: str = "last_local") -> None:
        if local_model not in MODEL_MODES[1:]:
            raise invalid("query.local_model", local_model, ", ".join(MODEL_MODES[1:]))
        self.local_model = local_model

    def models(self) -> set[str]:
        return {"global", self.local_model}

    def select(self, inp: QueryInputs) -> np.ndarray:
        u = inp.unlabeled_idx
        counts = np.bincount(inp.labels[inp.labeled], minlength=inp.num_classes)
        scores = ksas_scores(
            inp.outputs(self.local_model).log_probs[u],
            inp.outputs("global").log_probs[u],
            counts,
        )
        return u[top_k(scores, inp.budget)]
