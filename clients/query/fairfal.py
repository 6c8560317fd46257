"""FairFAL (Zong & Huang, CVPR 2026), spec section 5: adaptive global/local query-model choice,
prototype pseudo-labels and two-stage (uncertainty, then anchored k-center) class-balanced
selection. The statistics and the selection are pure functions; :class:`FairFALQuery` wires them to
the client's model outputs. Reference quirks are flags (spec section 7): ``freeze_rbar`` (Q1, read
by the server), ``divergence_classes`` (Q2), ``pseudo_label_mask`` (Q7), ``t`` /
``s_threshold`` / ``rbar_threshold`` (Q8), ``probe_seed`` (Q9).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from clients.query import QUERY, QueryInputs, QueryStrategy
from clients.query.common import badge_embedding, entropy, kcenter_greedy
from fedsim.errors import invalid

__all__ = [
    "FairFALQuery",
    "balanced_probe",
    "class_quotas",
    "divergence",
    "imbalance_proxy",
    "model_choice",
    "prototype_pseudo_labels",
    "two_stage_select",
]


def balanced_probe(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of a class-balanced resample of ``labels``: every present class gets
    ``max_c n_c`` items; the largest class (lowest index on ties) is used as is, others keep all
    their items and are topped up by drawing with replacement."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    n_max = int(counts.max())
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        out.append(idx)
        if len(idx) < n_max:
            out.append(rng.choice(idx, size=n_max - len(idx), replace=True))
    return np.concatenate(out).astype(np.int64)


def divergence(
    mean_global: np.ndarray, mean_local: np.ndarray, present: np.ndarray, classes: str = "all"
) -> float:
    """``d_k = mean_c |pG_c - pL_c| / (pG_c + pL_c)`` over all C classes (``classes="all"``, the
    reference, Q2) or over the classes present in the labeled pool (``"present"``); 0/0 is 0."""
    a = np.asarray(mean_global, dtype=np.float64)
    b = np.asarray(mean_local, dtype=np.float64)
    s = a + b
    terms = np.divide(np.abs(a - b), s, out=np.zeros_like(s), where=s > 0)
    if classes == "present":
        terms = terms[np.asarray(present, dtype=bool)]
    return float(terms.mean()) if terms.size else 0.0


def imbalance_proxy(mean_global: np.ndarray, present: np.ndarray) -> float:
    """``g_k = min_c pG_c / max_c pG_c`` over the classes present in the labeled pool."""
    p = np.asarray(mean_global, dtype=np.float64)[np.asarray(present, dtype=bool)]
    if p.size == 0 or p.max() <= 0:
        return 0.0
    return float(p.min() / p.max())


def model_choice(
    d: float, rbar: float, *, t: float = 0.5, s_threshold: float = 0.75, rbar_threshold: float = 0.5
) -> tuple[bool, bool, float]:
    """FairFAL's query models: ``(M_u is global, M_g is global, s_k)``.

    ``s_k = 1 - (1 - t)(d + rbar) + (1 - 2t) d rbar`` (``1 - (d + rbar)/2`` at ``t = 0.5``);
    ``M_u = G`` iff ``s_k > s_threshold``; ``M_g = G`` iff ``rbar < rbar_threshold``.
    """
    s = 1.0 - (1.0 - t) * (d + rbar) + (1.0 - 2.0 * t) * d * rbar
    return s > s_threshold, rbar < rbar_threshold, s


def prototype_pseudo_labels(
    feats_unlabeled: np.ndarray,
    feats_labeled: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    tau: float = 1.5,
    mask: str = "present",
) -> np.ndarray:
    """Pseudo-labels ``argmax softmax(cos(h(u), proto_c) / tau)`` from class prototypes.

    ``proto_c`` is the mean of the l2-normalised labeled features of class ``c``, re-normalised.
    With ``mask="present"`` (reference, Q7) classes with no labeled sample are excluded; with
    ``"none"`` their (zero) prototype has similarity 0.
    """

    def unit(x: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, n, out=np.zeros_like(x), where=n > 0)

    hl = unit(np.asarray(feats_labeled, dtype=np.float64))
    hu = unit(np.asarray(feats_unlabeled, dtype=np.float64))
    labels = np.asarray(labels, dtype=np.int64)
    protos = np.zeros((num_classes, hl.shape[1] if hl.ndim == 2 else hu.shape[1]))
    present = np.zeros(num_classes, dtype=bool)
    for c in range(num_classes):
        sel = labels == c
        if sel.any():
            present[c] = True
            protos[c] = hl[sel].mean(axis=0)
    protos = unit(protos)
    sim = hu @ protos.T
    if mask == "present" and present.any():
        sim[:, ~present] = -np.inf
    z = sim / tau
    z = z - z.max(axis=1, keepdims=True)
    q = np.exp(z)
    return np.argmax(q / q.sum(axis=1, keepdims=True), axis=1)


def class_quotas(bucket_sizes: np.ndarray, budget: int) -> np.ndarray:
    """Per-class quotas of the two-stage selection (spec 5.2 step 6).

    ``floor(b / C)`` each; +1 to the ``b mod C`` largest buckets; capped at the bucket sizes; the
    overflow handed out one unit at a time, round-robin over the classes that can still grow,
    largest bucket first (ties: lower class index).
    """
    sizes = np.asarray(bucket_sizes, dtype=np.int64)
    c = len(sizes)
    order = np.argsort(-sizes, kind="stable")
    q = np.full(c, budget // c, dtype=np.int64)
    q[order[: budget % c]] += 1
    q = np.minimum(q, sizes)
    left = min(int(budget), int(sizes.sum())) - int(q.sum())
    while left > 0:
        for j in order:
            if left > 0 and q[j] < sizes[j]:
                q[j] += 1
                left -= 1
    return q


def two_stage_select(
    pseudo: np.ndarray,
    uncertainty: np.ndarray,
    phi: Callable[[np.ndarray], np.ndarray],
    anchors: Callable[[int], np.ndarray],
    budget: int,
    num_classes: int,
    *,
    oversample: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced two-stage selection over unlabeled candidates.

    Parameters
    ----------
    pseudo, uncertainty
        Pseudo-label and normalised entropy of each unlabeled candidate.
    phi
        ``phi(positions) -> [n, F]`` diversity features of candidates (computed lazily).
    anchors
        ``anchors(c) -> [m, F]`` features of the labeled samples of true class ``c``.
    budget, num_classes
        b and C.
    oversample
        Stage 1 keeps ``min(|bucket|, max(1, floor(oversample * q_c)))`` per class.

    Returns
    -------
    (positions, quotas)
        Picked candidate positions (class by class) and the quota vector.
    """
    pseudo = np.asarray(pseudo, dtype=np.int64)
    unc = np.asarray(uncertainty, dtype=np.float64)
    sizes = np.bincount(pseudo, minlength=num_classes)
    quotas = class_quotas(sizes, budget)
    picks: list[np.ndarray] = []
    for c in range(num_classes):
        qc = int(quotas[c])
        if qc == 0:
            continue
        bucket = np.flatnonzero(pseudo == c)
        m = min(len(bucket), max(1, math.floor(oversample * qc)))
        cand = bucket[np.argsort(-unc[bucket], kind="stable")[:m]]
        if m <= qc:
            picks.append(cand)
            continue
        anc = anchors(c)
        chosen = kcenter_greedy(phi(cand), anc, qc, first=0)  # cand[0]: highest uncertainty
        picks.append(cand[chosen])
    out = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    return out.astype(np.int64), quotas


@QUERY.register("fairfal")
class FairFALQuery(QueryStrategy):
    """FairFAL (spec section 5): phase A statistics, phase B two-stage selection."""

    needs_stats = True

    def __init__(
        self,
        *,
        t: float = 0.5,
        s_threshold: float = 0.75,
        rbar_threshold: float = 0.5,
        tau: float = 1.5,
        oversample: float = 4.0,
        probe_seed: int = 42,
        freeze_rbar: bool = True,
        divergence_classes: str = "all",
        pseudo_label_mask: str = "present",
    ) -> None:
        if divergence_classes not in ("all", "present"):
            raise invalid("query.divergence_classes", divergence_classes, "all, present")
        if pseudo_label_mask not in ("present", "none"):
            raise invalid("query.pseudo_label_mask", pseudo_label_mask, "present, none")
        if not tau > 0:
            raise invalid("query.tau", tau, "a number > 0")
        if not oversample >= 1:
            raise invalid("query.oversample", oversample, "a number >= 1")
        self.t, self.s_threshold, self.rbar_threshold = t, s_threshold, rbar_threshold
        self.tau, self.oversample, self.probe_seed = tau, oversample, probe_seed
        self.freeze_rbar = freeze_rbar
        self.divergence_classes = divergence_classes
        self.pseudo_label_mask = pseudo_label_mask

    def models(self) -> set[str]:
        return {"global", "local_only"}

    def stats(self, inp: QueryInputs) -> dict[str, float]:
        """Phase A: ``(d_k, g_k)`` on a class-balanced probe of the labeled pool."""
        lab = inp.labeled_idx
        y = inp.labels[lab]
        probe = lab[balanced_probe(y, np.random.default_rng(self.probe_seed))]
        present = np.bincount(y, minlength=inp.num_classes) > 0
        pg = inp.outputs("global").probs[probe].mean(axis=0)
        pl = inp.outputs("local_only").probs[probe].mean(axis=0)
        return {
            "divergence": divergence(pg, pl, present, self.divergence_classes),
            "imbalance": imbalance_proxy(pg, present),
        }

    def select(self, inp: QueryInputs) -> np.ndarray:
        assert inp.rbar is not None and inp.divergence is not None
        use_g_unc, use_g_grad, s = model_choice(
            inp.divergence,
            inp.rbar,
            t=self.t,
            s_threshold=self.s_threshold,
            rbar_threshold=self.rbar_threshold,
        )
        g = inp.outputs("global")
        m_u = g if use_g_unc else inp.outputs("local_only")
        m_g = g if use_g_grad else inp.outputs("local_only")
        u, lab = inp.unlabeled_idx, inp.labeled_idx
        y_lab = inp.labels[lab]
        c = inp.num_classes
        unc = entropy(m_u.probs[u]) / math.log(c)
        pseudo = prototype_pseudo_labels(
            g.features[u], g.features[lab], y_lab, c, tau=self.tau, mask=self.pseudo_label_mask
        )
        pg_probs = m_g.probs

        def phi(pos: np.ndarray) -> np.ndarray:
            rows = u[pos]
            p = pg_probs[rows]
            return badge_embedding(g.features[rows], p, p.argmax(axis=1))

        def anchors(cls: int) -> np.ndarray:
            rows = lab[y_lab == cls]
            return badge_embedding(g.features[rows], pg_probs[rows], inp.labels[rows])

        pos, quotas = two_stage_select(
            pseudo, unc, phi, anchors, inp.budget, c, oversample=self.oversample
        )
        picks = u[pos]
        inp.diagnostics.update(
            {
                "use_global_uncertainty": int(use_g_unc),
                "use_global_gradient": int(use_g_grad),
                "s": float(s),
                "quotas": [int(q) for q in quotas],
                "pseudo_labels": pseudo[pos],
            }
        )
        return picks
