"""The weak-supervision losses as pure functions (tests call them on hand-computed cases).

All take raw logits ``(B, C)`` and return a scalar mean over the batch unless said otherwise.
References are in ``../shared/specs/ssfl_weak_supervision.md`` section 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gce_loss(
    logits: torch.Tensor, y: torch.Tensor, q: float = 0.7, truncate_below: float | None = None
) -> torch.Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu 2018): ``mean((1 - p_y^q) / q)``.

    With ``truncate_below = k`` samples with ``p_y < k`` are left out (the truncated L_q loss; the
    mean is still over the whole batch).
    """
    # p_y >= 1e-12 > 0, so a threshold of 0 keeps every sample (the mask is exactly 1.0)
    return gce_sample_losses(logits, y, q, 0.0 if truncate_below is None else truncate_below).mean()


def sce_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 1.0,
    log_zero: float = -4.0,
) -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al. 2019): ``alpha CE + beta RCE``.

    ``RCE = -sum_k p_k log q_k`` with ``q`` the one-hot label and ``log 0`` clipped to ``log_zero``
    (A = -4), which makes ``RCE = -A (1 - p_y)``.
    """
    ce = F.cross_entropy(logits, y)
    return alpha * ce + beta * _rce(logits, y, log_zero).mean()


def _rce(logits: torch.Tensor, y: torch.Tensor, log_zero: float) -> torch.Tensor:
    """Per-sample reverse cross-entropy ``-sum_k p_k log q_k`` (``log 0`` clipped to
    ``log_zero``)."""
    p = F.softmax(logits, dim=1).clamp(1e-7, 1.0)
    log_q = torch.full_like(p, log_zero).scatter(1, y.view(-1, 1), 0.0)
    return -(p * log_q).sum(1)


def gce_sample_losses(
    logits: torch.Tensor, y: torch.Tensor, q: float, truncate_below: torch.Tensor | float
) -> torch.Tensor:
    """Per-sample :func:`gce_loss` (its mean is ``gce_loss``), with the truncation threshold as
    a number or a 0-dim tensor (0: no truncation, as ``p_y`` is clamped to at least 1e-12)."""
    p_y = F.softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-12)
    loss = (1.0 - p_y.pow(q)) / q
    return loss * (p_y.detach() >= truncate_below).to(loss.dtype)


def sce_sample_losses(
    logits: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 1.0,
    log_zero: float = -4.0,
) -> torch.Tensor:
    """Per-sample :func:`sce_loss` (its mean is ``sce_loss``)."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return alpha * ce + beta * _rce(logits, y, log_zero)


def calibrated_softmax(logits: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """DPC's calibrated softmax ``(e^o_c + g) / sum_j (e^o_j + g)``, ``g = 10 / C`` by default."""
    c = logits.shape[1]
    g = 10.0 / c if gamma is None else gamma
    alpha = logits.exp() + g
    return alpha / alpha.sum(1, keepdim=True)


def _kl_dirichlet_uniform(alpha: torch.Tensor) -> torch.Tensor:
    """``KL(Dir(alpha) || Dir(1))`` per row."""
    c = alpha.shape[1]
    s = alpha.sum(1)
    return (
        torch.lgamma(s)
        - torch.lgamma(torch.tensor(float(c), device=alpha.device))
        - torch.lgamma(alpha).sum(1)
        + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(s).unsqueeze(1))).sum(1)
    )


def dpc_edl_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    beta: float = 0.5,
    gamma: float | None = None,
    clamp: float = 10.0,
    kl_per_class: bool = True,
) -> torch.Tensor:
    """DPC's evidential loss (Zong et al. 2024) on calibrated evidence.

    ``alpha = e^o + g`` (logits clamped to ``[-clamp, clamp]``), ``g = 10/C``;
    ``L = log sum(alpha) - log alpha_y + beta KL(Dir(alpha~) || Dir(1))`` with
    ``alpha~ = y + (1 - y) (C / 10) alpha`` (the given label's evidence removed). The reference
    code scales the KL by ``1/C`` (``kl_per_class``, default).
    """
    c = logits.shape[1]
    g = 10.0 / c if gamma is None else gamma
    alpha = logits.clamp(-clamp, clamp).exp() + g
    nll = alpha.sum(1).log() - alpha.gather(1, y.view(-1, 1)).squeeze(1).log()
    onehot = F.one_hot(y, c).to(alpha.dtype)
    alpha_t = onehot + (1 - onehot) * (c / 10.0) * alpha
    kl = _kl_dirichlet_uniform(alpha_t)
    if kl_per_class:
        kl = kl / c
    return (nll + beta * kl).mean()


def weighted_ce(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_i -sum_j w_ij log p_j(x_i)`` (PRODEN / RC)."""
    return -(weights * F.log_softmax(logits, dim=1)).sum(1).mean()


def candidate_weights(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``w_ij = p_j 1[j in S_i] / sum_{k in S_i} p_k`` (no gradient): PRODEN's update."""
    p = F.softmax(logits.detach(), dim=1) * candidates.to(logits.dtype)
    return p / p.sum(1, keepdim=True).clamp_min(1e-12)


def cc_loss(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Classifier-consistent PLL loss (Feng et al. 2020): ``mean -log sum_{j in S} p_j``."""
    masked = logits.masked_fill(~candidates.bool(), float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)).mean()


def forget_rate(epoch: int, tau: float, t_k: int = 10, c: float = 1.0) -> float:
    """Co-teaching's schedule, as the reference code's ``linspace(0, tau^c, T_k)``:
    ``r(t) = tau^c min(t / (T_k - 1), 1)`` for epoch ``t`` counted from 0 (cumulative)."""
    if t_k <= 1:
        return float(tau**c)
    return float(tau**c * min(epoch / (t_k - 1), 1.0))


def small_loss_indices(losses: torch.Tensor, rate: float) -> torch.Tensor:
    """Positions of the ``ceil((1 - rate) n)`` smallest losses (at least one)."""
    n = losses.shape[0]
    keep = max(1, int(round((1.0 - rate) * n)))
    return torch.argsort(losses.detach())[:keep]


def coteaching_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, y: torch.Tensor, rate: float
) -> torch.Tensor:
    """Co-teaching (Han et al. 2018): each net trains on the small-loss samples of its peer;
    returns the sum of the two nets' mean losses."""
    loss_a = F.cross_entropy(logits_a, y, reduction="none")
    loss_b = F.cross_entropy(logits_b, y, reduction="none")
    pick_a = small_loss_indices(loss_a, rate)  # chosen by net a, used to train net b
    pick_b = small_loss_indices(loss_b, rate)
    return loss_a[pick_b].mean() + loss_b[pick_a].mean()


def corrected_probs(
    logits: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """BLDR's PL head: ``softmax(o) + u^2 * y - v^2 * (1 - y)``, clamped and renormalised."""
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    p = F.softmax(logits, dim=1) + u.pow(2) * onehot - v.pow(2) * (1 - onehot)
    p = p.clamp(1e-7, 1.0)
    return p / p.sum(1, keepdim=True)


def negative_learning_loss(
    nl_logits: torch.Tensor, y: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """BLDR's NL head, per sample: ``-mean_{k in N_i} log(1 - p_k)``.

    ``N_i`` is every class but the given label ``y_i`` and ``exclude_i`` (the spec's choice is
    the NL head's own prediction, which is used when ``exclude`` is ``None``; pass ``y`` itself
    to exclude the given label only).
    """
    p = F.softmax(nl_logits, dim=1)
    mask = torch.ones_like(p, dtype=torch.bool)
    mask.scatter_(1, y.view(-1, 1), False)
    other = p.detach().argmax(1) if exclude is None else exclude
    mask.scatter_(1, other.view(-1, 1), False)
    terms = -torch.log((1 - p).clamp_min(1e-7)) * mask
    return terms.sum(1) / mask.sum(1).clamp_min(1)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation to [0, 1] (all ones when constant)."""
    lo, hi = x.min(), x.max()
    if float(hi - lo) <= 1e-12:
        return torch.ones_like(x)
    return (x - lo) / (hi - lo)


def pseudo_label_loss(
    logits_strong: torch.Tensor, probs_weak: torch.Tensor, thresholds: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled term: ``mean[1(max p_w >= T_(argmax p_w)) CE(f(u_s), argmax p_w)]``.

    ``thresholds`` is a number (FixMatch) or one per class (FlexMatch). Returns the loss and the
    mask.
    """
    conf, pseudo = probs_weak.max(1)
    t = thresholds[pseudo] if isinstance(thresholds, torch.Tensor) else thresholds
    mask = (conf >= t).to(logits_strong.dtype)
    ce = F.cross_entropy(logits_strong, pseudo, reduction="none")
    return (ce * mask).mean(), mask


def flexmatch_thresholds(
    selected: torch.Tensor, num_classes: int, tau: float = 0.95, warmup: bool = True
) -> torch.Tensor:
    """FlexMatch's per-class thresholds ``T_c = tau M(beta_c)``, ``M(x) = x / (2 - x)``.

    ``selected`` holds, per unlabeled sample, the class of its latest prediction above ``tau``
    (``-1``: none yet). ``sigma_c`` counts each class; ``beta_c = sigma_c / max(max_k sigma_k,
    #unused)`` with the warm-up (``#unused`` = samples still at -1), else ``/ max_k sigma_k``.
    """
    sel = selected[selected >= 0]
    sigma = torch.bincount(sel, minlength=num_classes)[:num_classes].to(torch.float32)
    unused = float((selected < 0).sum())
    denom = max(float(sigma.max()) if sigma.numel() else 0.0, unused if warmup else 0.0)
    beta = sigma / denom if denom > 0 else torch.zeros(num_classes)
    return tau * beta / (2.0 - beta)
