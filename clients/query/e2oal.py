"""E2OAL (Zong et al., CVPR 2026): evidential purity and informativeness with an adaptive
candidate length for active open-set annotation (spec ``open_set_fal.md`` section 4.4).

On one client's pool (U: unlabeled, L: labeled known and unknown):

1. Purity ``m`` on the detector's raw logits (:func:`purity_margin`); a 3-component GMM fitted on
   ``m`` over ``L ∪ U`` gives ``pi`` = the posterior of the highest-mean component on U.
2. Informativeness ``I = JS(p, onehot(argmax p)) * JS(p, uniform)`` on the target's softmax
   ``p`` (:func:`js_informativeness`).
3. Adaptive length ``L_t`` (:func:`e2oal_length`), then per known class the top ``ceil(L_t/K)``
   by ``m`` and the top ``ceil(b/K)`` of those by ``I`` (:func:`e2oal_select`).
4. ``tau_{t+1} = clip(tau_t + target_precision - prec_t, 0, 1)`` (:func:`update_tau`), per client
   in ``inp.state``.

fedsim's mapping (deviations from the reference):

- The reference trains one network with a K-class base head and a (K+M)-class EDL aux head. fedsim
  federates two networks (``detector.backbone: separate``): the target T (K classes, the
  configured ``local`` learner, CE) plays the base head, and the detector D, trained by the
  ``det_edl`` helper learner (:mod:`clients.learners.edl`), plays the aux head with ``K + 1``
  outputs. Test accuracy is T's argmax, not the aux head's ``alpha / S`` over its first K outputs.
- ``unknown_slots: 1``: one unknown EDL class. Step 2 of the reference (k-means on CLIP features
  to split the labeled unknowns into sub-classes) is not built: CLIP weights cannot be fetched
  offline, and local clusters are not aligned across clients; ``clustered`` (which needs
  ``num_clients=1``) is refused. ``cluster_features`` is accepted for the record only.
- Cycle 0 means "no unknown labeled on this client" (the reference: the first cycle, whose aux
  head has only K outputs); there ``m`` is the max over D's K known logits and D's prediction is
  the argmax over them, as over the reference's K-output head.
- Buckets smaller than the candidate count are capped and a short union is topped up with the
  unpicked samples of highest ``pi * I``, logged as ``shortfall`` (quirk Q8); the GMM is seeded
  from the client's cycle RNG (Q10).
- The reference's ``js_divergence`` computes ``(KL(m||p) + KL(m||q)) / 2`` with ``m = (p+q)/2``
  (``F.kl_div``'s argument order) after adding 1e-8 to both distributions, not the
  Jensen-Shannon divergence ``(KL(p||m) + KL(q||m)) / 2`` the method names. fedsim uses the
  latter (``js_form: standard``); ``js_form: reference`` replicates the code.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, ClassVar

import numpy as np

from clients.query import QUERY, QueryInputs, QueryStrategy
from clients.query.lfosa import raw_logits
from clients.query.osal_math import bucket_pick, gmm_posterior
from fedsim.errors import ConfigError, invalid

__all__ = [
    "E2OALQuery",
    "e2oal_length",
    "e2oal_select",
    "js_divergence",
    "js_informativeness",
    "purity_margin",
    "update_tau",
]

#: ``inp.state`` key of the adaptive precision target tau_t
TAU_KEY = "e2oal_tau"
JS_FORMS = ("standard", "reference")
CLUSTER_FEATURES = ("pca", "global_penultimate")


def purity_margin(det_logits: np.ndarray, num_known: int, cycle0: bool) -> np.ndarray:
    """E2OAL's purity ``m = max_{c<K} z_c - max_{c>=K} z_c`` on raw detector logits ``[N]``.

    Parameters
    ----------
    det_logits
        ``[N, K + M]`` (fedsim: ``M = 1``).
    num_known
        ``K``.
    cycle0
        No unknown labeled yet: ``m = max_{c<K} z_c`` (the reference's head has only the K known
        outputs then). Also used when ``det_logits`` has only K columns.
    """
    z = np.asarray(det_logits, dtype=np.float64)
    known = z[:, :num_known].max(axis=1)
    if cycle0 or z.shape[1] <= num_known:
        return known
    return known - z[:, num_known:].max(axis=1)


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum_c p_c log(p_c / q_c)`` per row (``0 log 0 = 0``; ``q > 0`` wherever ``p > 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / np.where(p > 0, q, 1.0)), 0)
    return terms.sum(axis=1)


def js_divergence(
    p: np.ndarray, q: np.ndarray, *, form: str = "standard", eps: float = 1e-8
) -> np.ndarray:
    """Row-wise divergence between distributions ``p`` and ``q`` ``[N, C]`` (natural log).

    ``form="standard"``: the Jensen-Shannon divergence ``(KL(p||m) + KL(q||m)) / 2`` with
    ``m = (p + q) / 2`` (in ``[0, log 2]``). ``form="reference"``: E2OAL's ``js_divergence``,
    ``(KL(m||p') + KL(m||q')) / 2`` with ``p' = (p + eps) / sum(p + eps)`` (likewise ``q'``) and
    ``m = (p' + q') / 2``. Both are 0 when ``p == q``.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if form == "standard":
        m = 0.5 * (p + q)
        return 0.5 * (_kl_rows(p, m) + _kl_rows(q, m))
    if form != "reference":
        raise ValueError(f"js_divergence: form={form!r}; allowed: {', '.join(JS_FORMS)}")
    p = (p + eps) / (p + eps).sum(axis=1, keepdims=True)
    q = (q + eps) / (q + eps).sum(axis=1, keepdims=True)
    m = 0.5 * (p + q)
    return 0.5 * (_kl_rows(m, p) + _kl_rows(m, q))


def js_informativeness(probs: np.ndarray, *, form: str = "standard") -> np.ndarray:
    """E2OAL's informativeness ``I = JS(p, onehot(argmax p)) * JS(p, uniform)`` ``[N]``.

    Both factors vanish at the extremes (a one-hot ``p``, a uniform ``p``), so ``I`` favours
    samples between confident and clueless. ``form``: see :func:`js_divergence`.
    """
    p = np.asarray(probs, dtype=np.float64)
    n, c = p.shape
    onehot = np.zeros_like(p)
    onehot[np.arange(n), p.argmax(axis=1)] = 1.0
    uniform = np.full_like(p, 1.0 / c)
    return js_divergence(p, onehot, form=form) * js_divergence(p, uniform, form=form)


def e2oal_length(pi: np.ndarray, info: np.ndarray, budget: int, tau: float) -> int:
    """E2OAL's adaptive candidate length (the reference's ``find_threshold``).

    The smallest ``L`` in ``[budget, N]`` such that, taking the top-``L`` samples by ``pi`` and
    then the top-``budget`` of those by ``info``, ``floor(sum pi) <= tau * budget``; ``N`` when
    none qualifies, when ``tau * budget <= 0`` or when ``N < budget``. Ties go to the lower
    position in both orders (the second one: the higher ``pi`` rank).

    Parameters
    ----------
    pi, info
        ``[N]`` purity posteriors and informativeness of the unlabeled samples.
    budget
        ``b``.
    tau
        ``tau_t``.
    """
    pi = np.asarray(pi, dtype=np.float64)
    info = np.asarray(info, dtype=np.float64)
    n, b = len(pi), int(budget)
    target = float(tau) * b
    if target <= 0 or b <= 0 or n < b:
        return n
    order = np.argsort(-pi, kind="stable")
    # a min-heap of the top-b by info among the first L by pi; the root is the one to drop next:
    # the lowest info, and among equal info the latest pi rank (key -rank)
    heap = [(float(info[j]), -r, int(j)) for r, j in enumerate(order[:b])]
    heapq.heapify(heap)
    total = math.fsum(pi[order[:b]])
    for length in range(b, n + 1):
        if length > b:
            j = int(order[length - 1])
            out = heapq.heappushpop(heap, (float(info[j]), -(length - 1), j))
            if out[2] != j:
                total += pi[j] - pi[out[2]]
        if abs(total - round(total)) < 1e-9:  # near an integer: floor the exact sum
            total = math.fsum(pi[[h[2] for h in heap]])
        if math.floor(total) <= target:
            return length
    return n


def e2oal_select(
    purity: np.ndarray,
    info: np.ndarray,
    pi: np.ndarray,
    pred: np.ndarray,
    num_known: int,
    budget: int,
    length: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """E2OAL's per-class two-stage selection (spec section 4.4 step 5, quirk Q8).

    For each known class ``i``, the bucket ``pred == i`` keeps its top ``min(ceil(length / K),
    |bucket|)`` by ``purity``, then the top ``ceil(budget / K)`` of those by ``info`` (ties: the
    lower position). The union is shuffled with ``rng`` and cut to ``budget``; a union shorter
    than ``budget`` is topped up with the unpicked samples of highest ``pi * info``.

    Parameters
    ----------
    purity, info, pi
        ``[U]`` purity margins, informativeness and purity posteriors of the unlabeled samples.
    pred
        ``[U]`` the detector's predicted class (values ``>= K``, unknown, join no bucket).
    num_known
        ``K``.
    budget
        Picks wanted (capped at ``U``).
    length
        The candidate length ``L_t`` (:func:`e2oal_length`).
    rng
        Shuffles the union.

    Returns
    -------
    picks
        ``min(budget, U)`` distinct positions into the ``[U]`` arrays.
    shortfall
        How many picks the union lacked (filled by the top-up).
    """
    purity = np.asarray(purity, dtype=np.float64)
    info = np.asarray(info, dtype=np.float64)
    pi = np.asarray(pi, dtype=np.float64)
    b = min(int(budget), len(purity))
    n_cand = math.ceil(int(length) / num_known)
    return bucket_pick(purity, info, np.asarray(pred), num_known, b, n_cand, rng, pi * info)


def update_tau(tau: float, precision: float, target: float) -> float:
    """``clip(tau + target - precision, 0, 1)``; ``tau`` unchanged for a NaN precision (a query
    that picked nothing)."""
    if not math.isfinite(precision):
        return float(tau)
    return float(min(1.0, max(0.0, tau + target - precision)))


@QUERY.register("e2oal")
class E2OALQuery(QueryStrategy):
    """E2OAL (evidential purity x JS informativeness, adaptive candidate length).

    Parameters
    ----------
    target_precision
        The query precision ``tau_t`` steers to.
    tau0
        ``tau_0``, the first cycle's precision target of the length search.
    unknown_slots
        Unknown EDL classes of the detector: only 1 is built (``clustered``, the reference's
        CLIP sub-classes, needs ``num_clients=1`` and is not built).
    gmm_components
        Components of the purity GMM (reference 3).
    cluster_features
        Features of the sub-class clustering (``pca`` | ``global_penultimate``); accepted for
        the record, unused with ``unknown_slots: 1``.
    js_form
        ``standard`` (the Jensen-Shannon divergence) or ``reference`` (E2OAL's code, see the
        module docstring).
    """

    detector: ClassVar[str | None] = "det_edl"
    open_set_only: ClassVar[bool] = True

    def __init__(
        self,
        *,
        target_precision: float = 0.6,
        tau0: float = 0.6,
        unknown_slots: int | str = 1,
        gmm_components: int = 3,
        cluster_features: str = "pca",
        js_form: str = "standard",
    ) -> None:
        for key, value in (("target_precision", target_precision), ("tau0", tau0)):
            if not _number(value) or not 0 <= value <= 1:
                raise invalid(f"query.{key}", value, "a number in [0, 1]")
        if unknown_slots == "clustered":
            raise ConfigError(
                "query.unknown_slots='clustered' (E2OAL's CLIP sub-classes of the unknowns) is "
                "not built and needs num_clients=1: use unknown_slots=1"
            )
        if not _integer(unknown_slots) or unknown_slots != 1:
            raise invalid("query.unknown_slots", unknown_slots, "1 (clustered is not built)")
        if not _integer(gmm_components) or not int(gmm_components) >= 2:
            raise invalid("query.gmm_components", gmm_components, "an integer >= 2")
        if cluster_features not in CLUSTER_FEATURES:
            raise invalid("query.cluster_features", cluster_features, ", ".join(CLUSTER_FEATURES))
        if js_form not in JS_FORMS:
            raise invalid("query.js_form", js_form, ", ".join(JS_FORMS))
        self.target_precision, self.tau0 = float(target_precision), float(tau0)
        self.unknown_slots = 1
        self.gmm_components = int(gmm_components)
        self.cluster_features = cluster_features
        self.js_form = js_form

    def known_score(self, det_logits: np.ndarray, num_known: int) -> np.ndarray:
        """The purity margin ``m`` (:func:`purity_margin`, after cycle 0)."""
        return purity_margin(det_logits, num_known, cycle0=False)

    def models(self) -> set[str]:
        return {"global", "detector"}

    def current_tau(self, state: dict[str, Any]) -> float:
        """tau_t for this query: the stored value (``tau0`` at first), updated by the previous
        query's precision ``state["last_precision"]`` when the client has set it."""
        tau = float(state.get(TAU_KEY, self.tau0))
        last = state.get("last_precision")
        if last is not None:
            tau = update_tau(tau, float(last), self.target_precision)
        return tau

    def select(self, inp: QueryInputs) -> np.ndarray:
        assert inp.unknown_label is not None, "e2oal needs an open-set pool"
        num_known = inp.num_classes
        tau = self.current_tau(inp.state)
        inp.state[TAU_KEY] = tau
        u, lab = inp.unlabeled_idx, inp.labeled_idx
        z = raw_logits(inp.outputs("detector"), "detector")
        cycle0 = not bool(inp.unknown.any())
        m = purity_margin(z, num_known, cycle0)
        seed = int(inp.rng.integers(2**31))
        fitted = gmm_posterior(
            m[np.concatenate([lab, u])], components=self.gmm_components, pick="max", seed=seed
        )
        pi = fitted[len(lab) :]  # the mixture is fitted on L ∪ U, read on U
        info = js_informativeness(inp.outputs("global").probs[u], form=self.js_form)
        b = min(int(inp.budget), len(u))
        length = e2oal_length(pi, info, b, tau)
        pred = (z[u, :num_known] if cycle0 else z[u]).argmax(axis=1)
        picks, shortfall = e2oal_select(m[u], info, pi, pred, num_known, b, length, inp.rng)
        inp.diagnostics["tau"] = tau
        inp.diagnostics["length"] = int(length)
        inp.diagnostics["shortfall"] = shortfall
        return u[picks]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
