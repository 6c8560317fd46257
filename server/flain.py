"""FLAIN (Ding et al., ICMR 2025): after training, flip the cumulative weight updates of the
low-activation input neurons of the first fully connected layer, raising the activation threshold
until the auxiliary accuracy drops by the tolerance.

Everything is a pure function of numpy arrays and an ``aux_accuracy(W) -> float`` callable, so the
invariants are tested without a model. :mod:`server.defenses` applies it to a model. Spec:
``specs/backdoor_flain.md`` section 1.

- ``a_j``: the mean (or mean absolute) value of fc1's input ``j`` over the auxiliary set, under the
  final model in eval mode.
- ``F_k = {j : 0 <= a_j <= k}``; the candidate weight rebuilds from ``W_T`` and replaces each column
  ``j in F_k`` by ``W_0[:, j] - dW[:, j] = W_T[:, j] - 2 dW[:, j]``, ``dW = W_T - W_0``.
- The grid is ``k_i = k_init + i * k_step`` while ``k_i <= k_cap``; the walk stops at the first
  ``k`` with ``acc0 - acc >= tolerance``: ``reference`` keeps that ``k`` (the reference code),
  ``rollback`` keeps the previous one. Without a stop the guard keeps the last ``W``
  (``on_no_stop=last``) or ``W_T`` (``identity``) and flags ``terminated_without_stop``.
- ``rescale_norm``: the kept ``W`` is scaled back to ``||W_T||_F``; the bias is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedsim.errors import invalid

MODES = ("reference", "rollback")
ON_NO_STOP = ("last", "identity")
ACTIVATION_STATS = ("mean", "mean_abs")

#: Per-dataset (k_init, k_step, k_cap, tolerance) as the reference defense scripts call FLAIN.
SCHEDULES: dict[str, tuple[float, float, float, float]] = {
    "mnist": (0.001, 0.001, 1.0, 0.0),
    "emnist": (0.001, 0.001, 1.0, 0.0),
    "cifar10": (0.001, 0.0001, 1.0, 0.001),
    "fashion_mnist": (0.0005, 0.0001, 1.0, 0.024),
}


def threshold_grid(k_init: float, k_step: float, k_cap: float) -> np.ndarray:
    """``k_i = k_init + i * k_step`` for ``i = 0, 1, ...`` while ``k_i <= k_cap`` (index based,
    no repeated float addition)."""
    if not k_step > 0:
        raise invalid("defense.k_step", k_step, "a number > 0")
    if k_init > k_cap:
        raise invalid("defense.k_init", k_init, f"a number <= k_cap={k_cap}")
    n = int(math.floor((k_cap - k_init) / k_step + 1e-9)) + 1
    return k_init + np.arange(n, dtype=np.float64) * k_step


def activation_stat(inputs: np.ndarray, stat: str = "mean") -> np.ndarray:
    """Per-input statistic ``a_j`` over the rows of ``inputs`` ``[n_aux, in_features]``."""
    if stat == "mean":
        return inputs.mean(axis=0)
    if stat == "mean_abs":
        return np.abs(inputs).mean(axis=0)
    raise invalid("defense.activation_stat", stat, " or ".join(ACTIVATION_STATS))


def flip_set(a: np.ndarray, k: float) -> np.ndarray:
    """Boolean mask of ``F_k = {j : 0 <= a_j <= k}``."""
    return (a >= 0) & (a <= k)


def flip_columns(w_final: np.ndarray, w_initial: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``W_T`` with columns in ``mask`` replaced by ``W_T - 2 (W_T - W_0)`` (a fresh array)."""
    w = np.array(w_final, copy=True)
    delta = w_final[:, mask] - w_initial[:, mask]
    w[:, mask] = w_final[:, mask] - 2.0 * delta
    return w


def rescale(w: np.ndarray, norm: float) -> np.ndarray:
    """``w`` scaled to Frobenius norm ``norm`` (unchanged if ``w`` is zero)."""
    current = float(np.linalg.norm(w))
    return w if current == 0 else w * (norm / current)


@dataclass
class FlainResult:
    """Outcome of :func:`flain_search`."""

    weight: np.ndarray
    k_star: float | None  # None: rollback kept W_T (no flips)
    flip_count: int
    acc_before: float
    acc_after: float  # aux accuracy of the kept W, before rescaling
    grid_steps: int
    evaluations: int
    terminated_without_stop: bool


def flain_search(
    a: np.ndarray,
    w_final: np.ndarray,
    w_initial: np.ndarray,
    aux_accuracy: Callable[[np.ndarray], float],
    *,
    grid: np.ndarray,
    tolerance: float,
    mode: str = "reference",
    on_no_stop: str = "last",
    rescale_norm: bool = True,
) -> FlainResult:
    """Walk the threshold grid and return the kept fc1 weight (spec section 1.5).

    ``aux_accuracy`` is evaluated only when ``F_k`` changes (the sets are nested, so their sizes
    tell); an unchanged set gives the same accuracy.
    """
    if mode not in MODES:
        raise invalid("defense.mode", mode, " or ".join(MODES))
    if on_no_stop not in ON_NO_STOP:
        raise invalid("defense.on_no_stop", on_no_stop, " or ".join(ON_NO_STOP))
    acc0 = float(aux_accuracy(w_final))
    n_t = float(np.linalg.norm(w_final))
    prev: tuple[np.ndarray, float, int, float] | None = None  # (W, k, |F|, acc)
    last_size, last_acc, last_w = -1, acc0, w_final
    evaluations, steps = 0, 0
    kept: tuple[np.ndarray, float | None, int, float] | None = None
    for k in grid:
        steps += 1
        mask = flip_set(a, float(k))
        size = int(mask.sum())
        if size != last_size:
            last_w = flip_columns(w_final, w_initial, mask)
            last_acc = float(aux_accuracy(last_w))
            last_size = size
            evaluations += 1
        if acc0 - last_acc >= tolerance:
            if mode == "reference":
                kept = (last_w, float(k), size, last_acc)
            elif prev is None:
                kept = (w_final, None, 0, acc0)
            else:
                kept = prev
            break
        prev = (last_w, float(k), size, last_acc)
    terminated = kept is None
    if kept is None:  # the guard (spec 1.5): keep the last evaluated W, or W_T
        use_last = on_no_stop == "last" and prev is not None
        kept = prev if use_last else (w_final, None, 0, acc0)
    assert kept is not None
    w, k_star, count, acc = kept
    if rescale_norm:
        w = rescale(w, n_t)
    return FlainResult(
        weight=w,
        k_star=k_star,
        flip_count=count,
        acc_before=acc0,
        acc_after=acc,
        grid_steps=steps,
        evaluations=evaluations,
        terminated_without_stop=terminated,
    )


@dataclass
class PruneResult:
    """Outcome of :func:`dormant_prune`."""

    weight: np.ndarray
    pruned: int
    acc_before: float
    acc_after: float


def dormant_prune(
    a: np.ndarray,
    w_final: np.ndarray,
    aux_accuracy: Callable[[np.ndarray], float],
    *,
    tolerance: float = 0.01,
    step_fraction: float = 0.01,
) -> PruneResult:
    """Dormant-neuron pruning (after Wu et al. 2020, arXiv 2011.01767), on fc1's inputs: zero the
    columns of the least-activated inputs in ascending order of ``a``, ``step_fraction`` of them at a
    time, while the aux accuracy stays within ``tolerance`` of the unpruned model; keep the last
    acceptable pruning."""
    if not 0 < step_fraction <= 1:
        raise invalid("defense.step_fraction", step_fraction, "a fraction in (0, 1]")
    order = np.argsort(a, kind="stable")
    acc0 = float(aux_accuracy(w_final))
    step = max(1, int(math.ceil(step_fraction * len(a))))
    best_w, best_n, best_acc = w_final, 0, acc0
    for n in range(step, len(a) + 1, step):
        w = np.array(w_final, copy=True)
        w[:, order[:n]] = 0.0
        acc = float(aux_accuracy(w))
        if acc0 - acc > tolerance:
            break
        best_w, best_n, best_acc = w, n, acc
    return PruneResult(weight=best_w, pruned=best_n, acc_before=acc0, acc_after=best_acc)
