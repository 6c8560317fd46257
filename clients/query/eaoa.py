"""EAOA (Zong & Huang, CVPR 2025): epistemic and aleatoric uncertainty for active open-set
annotation, energy-based (spec ``open_set_fal.md`` section 4.3).

On one client's unlabeled pool U:

1. e1 = the detector's known energy with an unknown-logit penalty (:func:`known_energy`);
   p1 = the GMM posterior of the lower-mean component of ``minmax(e1)``.
2. e2 = the same energy on reverse-kNN vote counts in D's embedding (:func:`rknn_votes`,
   :func:`rknn_energy`); p2 likewise; ``p_clean = p1 * p2``.
3. a = the target's aleatoric energy ``log(1 - max p^T)`` (:func:`aleatoric_energy`);
   ``p_info`` = the posterior of the higher-mean component of ``minmax(a)``.
4. Per known class (by T's prediction): the top ``n_pc * k_t`` by p_clean, then the top ``n_pc``
   of those by p_info (:func:`eaoa_select`); ``k_t`` adapts to the query precision
   (:func:`update_k`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from clients.query import QUERY, QueryInputs, QueryStrategy
from clients.query.lfosa import raw_logits
from clients.query.osal_math import bucket_pick, gmm_posterior, minmax
from fedsim.errors import invalid

__all__ = [
    "EAOAQuery",
    "aleatoric_energy",
    "eaoa_select",
    "known_energy",
    "rknn_energy",
    "rknn_votes",
    "update_k",
]

#: ``inp.state`` key of the adaptive candidate multiplier k_t
K_KEY = "eaoa_k"


def _lse(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Stable ``log sum exp`` along ``axis`` (``-inf`` over an empty or all ``-inf`` slice)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[axis] == 0:
        return np.full(np.delete(x.shape, axis), -np.inf)
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis=axis) + np.log(np.exp(x - m).sum(axis=axis))


def _softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))``, stably."""
    return np.logaddexp(0.0, np.asarray(x, dtype=np.float64))


def known_energy(det_logits: np.ndarray, num_known: int) -> np.ndarray:
    """EAOA's epistemic score 1: ``e1 = -logsumexp_{c<K} z_c + softplus(z_K)`` ``[N]``.

    Parameters
    ----------
    det_logits
        Raw detector logits ``[N, K + 1]``; with only ``K`` columns (a closed-set model) the
        softplus term is left out, as in the reference.
    num_known
        ``K``.
    """
    z = np.asarray(det_logits, dtype=np.float64)
    e = -_lse(z[:, :num_known])
    if z.shape[1] > num_known:
        e = e + _softplus(z[:, num_known])
    return e


def aleatoric_energy(target_logits: np.ndarray) -> np.ndarray:
    """EAOA's aleatoric score ``a = logsumexp_{c != y_hat} z_c - logsumexp_c z_c`` ``[N]``,
    i.e. ``log(1 - max_c p_c)`` computed without cancellation (``y_hat = argmax z``; ``-inf``
    with a single class). Log-probabilities give the same values as raw logits."""
    z = np.asarray(target_logits, dtype=np.float64)
    others = z.copy()
    others[np.arange(len(z)), z.argmax(axis=1)] = -np.inf
    return _lse(others) - _lse(z)


def rknn_votes(
    labeled_emb: np.ndarray,
    labeled_labels: np.ndarray,
    unlabeled_emb: np.ndarray,
    k: int,
    num_labels: int,
    *,
    chunk: int = 1024,
) -> np.ndarray:
    """Reverse-kNN vote counts: each labeled sample votes for its ``k`` most similar unlabeled
    samples (cosine similarity of L2-normalised embeddings; ties go to the lower position).

    Parameters
    ----------
    labeled_emb, unlabeled_emb
        Embeddings ``[L, D]`` and ``[U, D]`` (D's penultimate features).
    labeled_labels
        ``[L]`` labels in ``0..num_labels-1`` (``K``: labeled unknown).
    k
        Votes per labeled sample (capped at ``U``).
    num_labels
        ``K + 1``.

    Returns
    -------
    numpy.ndarray
        ``[U, num_labels]`` integer counts: ``n_c(u)`` = votes for ``u`` from labeled class ``c``.
    """
    lab = _normalise(labeled_emb)
    unl = _normalise(unlabeled_emb)
    y = np.asarray(labeled_labels, dtype=np.int64)
    votes = np.zeros((len(unl), num_labels), dtype=np.int64)
    kk = min(int(k), len(unl))
    if kk <= 0 or len(lab) == 0:
        return votes
    for start in range(0, len(lab), chunk):
        sim = lab[start : start + chunk] @ unl.T
        nearest = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
        cls = np.repeat(y[start : start + chunk], kk)
        np.add.at(votes, (nearest.reshape(-1), cls), 1)
    return votes


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (norms below 1e-12 count as 1e-12, as ``F.normalize``)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rknn_energy(
    votes: np.ndarray, class_counts: np.ndarray, *, cycle0_weight_fix: bool = False
) -> np.ndarray:
    """EAOA's epistemic score 2 on reverse-kNN votes, class-weighted.

    ``w_c = |L_c| / mean_{c<K} |L_c|`` and ``e2 = -logsumexp_{c<K}(n_c / w_c) +
    softplus(n_K / w_K)``. With no labeled unknown (cycle 0) the softplus term is left out, and
    the reference's mean runs over ``K + 1`` counts, the last one 0 (quirk Q11);
    ``cycle0_weight_fix`` takes the mean over the ``K`` known counts instead. A known class
    without labeled samples (no votes, ``w_c = 0``) is left out of the logsumexp (the reference
    would get 0/0).

    Parameters
    ----------
    votes
        ``[U, K + 1]`` counts from :func:`rknn_votes`.
    class_counts
        ``[K + 1]`` labeled counts ``|L_c|`` (``|L_K|`` = labeled unknowns).
    cycle0_weight_fix
        The Q11 flag (default: replicate the reference).

    Returns
    -------
    numpy.ndarray
        ``[U]``; all zeros when no known sample is labeled.
    """
    n = np.asarray(votes, dtype=np.float64)
    counts = np.asarray(class_counts, dtype=np.float64)
    k = len(counts) - 1
    has_unknown = counts[k] > 0
    if counts[:k].sum() <= 0:
        return np.zeros(len(n))
    denom = counts[:k].mean() if has_unknown or cycle0_weight_fix else counts.mean()
    weight = counts / denom
    present = counts[:k] > 0
    scaled = n[:, :k][:, present] / weight[:k][present]
    e = -_lse(scaled)
    if has_unknown:
        e = e + _softplus(n[:, k] / weight[k])
    return e


def eaoa_select(
    p_clean: np.ndarray,
    p_info: np.ndarray,
    pred: np.ndarray,
    num_known: int,
    budget: int,
    k_t: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """EAOA's per-class two-stage selection (spec section 4.3 step 5, quirk Q8).

    With ``n_pc = ceil(budget / K)``, for each known class ``i`` the bucket ``pred == i`` keeps
    its top ``min(n_pc * k_t, |bucket|)`` by ``p_clean``, then the top ``n_pc`` of those by
    ``p_info`` (ties: the lower position). The union is shuffled and cut to ``budget``; a union
    shorter than ``budget`` is topped up with the unpicked samples of highest
    ``p_clean * p_info``.

    Parameters
    ----------
    p_clean, p_info, pred
        ``[U]`` scores and the target's predicted known class of the unlabeled samples.
    num_known
        ``K``.
    budget
        Picks wanted (capped at ``U``).
    k_t
        The candidate multiplier.
    rng
        Shuffles the union.

    Returns
    -------
    picks
        ``min(budget, U)`` distinct positions into the ``[U]`` arrays.
    shortfall
        How many picks the union lacked (filled by the top-up).
    """
    p_clean = np.asarray(p_clean, dtype=np.float64)
    p_info = np.asarray(p_info, dtype=np.float64)
    b = min(int(budget), len(p_clean))
    n_cand = math.ceil(max(b, 1) / num_known) * int(k_t)
    return bucket_pick(
        p_clean, p_info, np.asarray(pred), num_known, b, n_cand, rng, p_clean * p_info
    )


def update_k(k: int, precision: float, target: float, tol: float, step: int) -> int:
    """EAOA's adaptive candidate multiplier (spec section 4.3 step 6).

    If ``|precision - target| > tol``: ``k + step`` when the precision is above the target,
    else ``max(1, k - step)``; otherwise (or for a NaN precision) ``k``. A 1e-12 slack keeps
    values at the tolerance, up to float rounding, inside it.
    """
    if not math.isfinite(precision) or abs(precision - target) <= tol + 1e-12:
        return int(k)
    if precision > target:
        return int(k) + int(step)
    return max(1, int(k) - int(step))


@QUERY.register("eaoa")
class EAOAQuery(QueryStrategy):
    """EAOA (energy-based epistemic and aleatoric uncertainty, adaptive candidate size).

    Parameters
    ----------
    energy_weight, m_in, m_out
        The detector's energy margin loss (``det_energy``): weight and margins.
    knn_k
        Votes per labeled sample in the reverse kNN; ``"auto"``: ``max(5, round(0.005 |U|))``
        (the reference's 250 of a 50k pool).
    k0, k_step, tol, target_precision
        The adaptive multiplier: start, step, tolerance and target of the query precision.
    cycle0_weight_fix
        Quirk Q11: average the class weights over the K known counts in cycle 0 (default: over
        K + 1 entries, as the reference).
    """

    detector: ClassVar[str | None] = "det_energy"
    open_set_only: ClassVar[bool] = True

    def __init__(
        self,
        *,
        energy_weight: float = 0.01,
        m_in: float = -25.0,
        m_out: float = -7.0,
        knn_k: int | str = "auto",
        k0: int = 5,
        k_step: int = 1,
        tol: float = 0.05,
        target_precision: float = 0.6,
        cycle0_weight_fix: bool = False,
    ) -> None:
        if not _number(energy_weight) or not energy_weight >= 0:
            raise invalid("query.energy_weight", energy_weight, "a number >= 0")
        for key, value in (("m_in", m_in), ("m_out", m_out)):
            if not _number(value):
                raise invalid(f"query.{key}", value, "a number")
        if knn_k != "auto" and not (_integer(knn_k) and int(knn_k) >= 1):
            raise invalid("query.knn_k", knn_k, "auto or an integer >= 1")
        for key, value in (("k0", k0), ("k_step", k_step)):
            if not (_integer(value) and int(value) >= 1):
                raise invalid(f"query.{key}", value, "an integer >= 1")
        if not _number(tol) or not tol >= 0:
            raise invalid("query.tol", tol, "a number >= 0")
        if not _number(target_precision) or not 0 <= target_precision <= 1:
            raise invalid("query.target_precision", target_precision, "a number in [0, 1]")
        if not isinstance(cycle0_weight_fix, bool):
            raise invalid("query.cycle0_weight_fix", cycle0_weight_fix, "true or false")
        self.energy_weight, self.m_in, self.m_out = float(energy_weight), float(m_in), float(m_out)
        self.knn_k = knn_k
        self.k0, self.k_step = int(k0), int(k_step)
        self.tol, self.target_precision = float(tol), float(target_precision)
        self.cycle0_weight_fix = cycle0_weight_fix

    def detector_params(self) -> dict[str, Any]:
        return {"energy_weight": self.energy_weight, "m_in": self.m_in, "m_out": self.m_out}

    def known_score(self, det_logits: np.ndarray, num_known: int) -> np.ndarray:
        """``-e1`` (:func:`known_energy`): low energy is known."""
        return -known_energy(det_logits, num_known)

    def models(self) -> set[str]:
        return {"global", "detector"}

    def neighbours(self, num_unlabeled: int) -> int:
        """Votes per labeled sample for a pool of ``num_unlabeled``."""
        if self.knn_k == "auto":
            return max(5, round(0.005 * num_unlabeled))
        return int(self.knn_k)

    def current_k(self, state: dict[str, Any]) -> int:
        """k_t for this query: the stored value (``k0`` at first), updated by the previous
        query's precision ``state["last_precision"]`` when the client has set it."""
        k = int(state.get(K_KEY, self.k0))
        last = state.get("last_precision")
        if last is not None:
            k = update_k(k, float(last), self.target_precision, self.tol, self.k_step)
        return k

    def select(self, inp: QueryInputs) -> np.ndarray:
        assert inp.unknown_label is not None, "eaoa needs an open-set pool"
        num_known = inp.num_classes
        k_t = self.current_k(inp.state)
        inp.state[K_KEY] = k_t
        u, lab = inp.unlabeled_idx, inp.labeled_idx
        det = inp.outputs("detector")
        z_det = raw_logits(det, "detector")
        glob = inp.outputs("global")
        z_t = glob.logits if glob.logits is not None else glob.log_probs
        seeds = [int(s) for s in inp.rng.integers(2**31, size=3)]

        p1 = gmm_posterior(minmax(known_energy(z_det[u], num_known)), pick="min", seed=seeds[0])
        labels = inp.labels[lab]
        votes = rknn_votes(
            det.features[lab], labels, det.features[u], self.neighbours(len(u)), num_known + 1
        )
        counts = np.bincount(labels, minlength=num_known + 1)[: num_known + 1]
        e2 = rknn_energy(votes, counts, cycle0_weight_fix=self.cycle0_weight_fix)
        p2 = gmm_posterior(minmax(e2), pick="min", seed=seeds[1])
        p_info = gmm_posterior(minmax(aleatoric_energy(z_t[u])), pick="max", seed=seeds[2])
        pred = np.asarray(z_t[u]).argmax(axis=1)
        picks, shortfall = eaoa_select(p1 * p2, p_info, pred, num_known, inp.budget, k_t, inp.rng)
        inp.diagnostics["k"] = k_t
        inp.diagnostics["shortfall"] = shortfall
        inp.diagnostics["knn_k"] = self.neighbours(len(u))
        return u[picks]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
