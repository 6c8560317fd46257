"""LfOSA (Ning et al., CVPR 2022): open-set active learning by max activation values
(spec ``open_set_fal.md`` section 4.1).

The federated (K+1)-class detector D (trained by the ``det_ce_t`` helper learner) predicts
``y_hat = argmax z^D`` on the unlabeled pool; within each predicted class a 2-component GMM on
the max activation ``v = max z^D`` gives ``w`` = the posterior of the larger-mean component
(LfOSA's "known" component). Samples predicted unknown get ``w = 0``; the top-``b`` by ``w`` are
queried.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from clients.query import QUERY, ModelOutputs, QueryInputs, QueryStrategy
from clients.query.osal_math import gmm_posterior
from fedsim.errors import invalid

__all__ = ["LfOSAQuery", "lfosa_order", "lfosa_scores", "mav_known_score", "raw_logits"]


def raw_logits(out: ModelOutputs, kind: str) -> np.ndarray:
    """The raw logits of ``out``; the client must fill them for open-set strategies (spec
    section 3: log-softmax drops the offset that max activations and energies depend on)."""
    if out.logits is None:
        raise RuntimeError(f"outputs({kind!r}) has no raw logits; open-set queries need them")
    return np.asarray(out.logits, dtype=np.float64)


def mav_known_score(det_logits: np.ndarray, unknown_label: int) -> np.ndarray:
    """LfOSA's known-score for the detection AUROC (spec section 1.5): the max activation value
    ``max_c z_c``, and ``-inf`` where D predicts the unknown class ``unknown_label``."""
    z = np.asarray(det_logits, dtype=np.float64)
    v = z.max(axis=1)
    return np.where(z.argmax(axis=1) == unknown_label, -np.inf, v)


def lfosa_scores(
    det_logits: np.ndarray, unknown_label: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """LfOSA's ``AV_sampling`` scores on the rows of ``det_logits``.

    Parameters
    ----------
    det_logits
        Raw detector logits ``[U, K + 1]`` of the unlabeled samples.
    unknown_label
        ``K``, the detector's "unknown" output.
    seed
        Base seed of the GMM fits; the group of predicted class ``c`` uses ``seed + c`` (Q10).

    Returns
    -------
    w
        ``[U]``: within each predicted class with at least 2 members, the posterior of the
        larger-mean component of a 2-GMM on the max activations; 0 where D predicts
        ``unknown_label`` and in groups smaller than 2.
    scored
        ``[U]`` bool: False for the members of groups smaller than 2, which the reference drops
        (quirk Q3) and fedsim chooses last (:func:`lfosa_order`).
    """
    z = np.asarray(det_logits, dtype=np.float64)
    pred = z.argmax(axis=1)
    v = z.max(axis=1)
    w = np.zeros(len(z))
    scored = np.zeros(len(z), dtype=bool)
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        if len(members) < 2:
            continue
        scored[members] = True
        if c != unknown_label:
            w[members] = gmm_posterior(v[members], pick="max", seed=int(seed) + int(c))
    return w, scored


def lfosa_order(w: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """All positions by decreasing ``w``; on ties scored samples first, then the lower
    position, so samples of groups smaller than 2 come last (Q3)."""
    w = np.asarray(w, dtype=np.float64)
    pos = np.arange(len(w))
    return np.lexsort((pos, ~np.asarray(scored, dtype=bool), -w))


@QUERY.register("lfosa")
class LfOSAQuery(QueryStrategy):
    """LfOSA: the top-``b`` unlabeled samples by the detector's per-class max-activation GMM
    posterior (:func:`lfosa_scores`).

    Parameters
    ----------
    known_T, unknown_T
        Temperatures of the detector's training loss for known samples and labeled unknowns
        (``det_ce_t``); the README command uses 0.5 / 0.5, the argparse defaults 0.5 / 2.0.
    """

    detector: ClassVar[str | None] = "det_ce_t"
    open_set_only: ClassVar[bool] = True

    def __init__(self, *, known_T: float = 0.5, unknown_T: float = 0.5) -> None:
        for key, value in (("known_T", known_T), ("unknown_T", unknown_T)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise invalid(f"query.{key}", value, "a number > 0")
        self.known_T = float(known_T)
        self.unknown_T = float(unknown_T)

    def detector_params(self) -> dict[str, Any]:
        return {"known_T": self.known_T, "unknown_T": self.unknown_T}

    def known_score(self, det_logits: np.ndarray, num_known: int) -> np.ndarray:
        return mav_known_score(det_logits, num_known)

    def models(self) -> set[str]:
        return {"detector"}

    def select(self, inp: QueryInputs) -> np.ndarray:
        assert inp.unknown_label is not None, "lfosa needs an open-set pool"
        u = inp.unlabeled_idx
        z = raw_logits(inp.outputs("detector"), "detector")[u]
        w, scored = lfosa_scores(z, inp.unknown_label, int(inp.rng.integers(2**31)))
        picks = lfosa_order(w, scored)[: min(inp.budget, len(u))]
        pred = z.argmax(axis=1)
        inp.diagnostics["predicted_unknown"] = int((pred == inp.unknown_label).sum())
        inp.diagnostics["unscored"] = int((~scored).sum())
        return u[picks]
