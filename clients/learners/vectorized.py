"""Many virtual clients in one batched pass (``engine.vectorize``).

A group of clients of the same model and learner trains at once: their parameters and optimizer
state are stacked along a leading client axis, and each step runs one ``torch.func.vmap`` of the
per-client gradient over the clients still training. Each client keeps the seed and batch order of
the per-client loop (:meth:`clients.learners.base.Learner.train`): its epochs' permutations are drawn
from its own generator in the same order, and a step takes its next batch. Clients of unequal size
take unequal step counts (a client that has run out of batches drops out of the later steps), and a
step's shorter batches (an epoch's last) are padded with weight-0 samples.

The results equal the per-client loop's up to float rounding (the batched convolutions and the
masked mean add in another order): ``tests/test_vectorized.py`` checks parameters to within
``2e-5`` relative and ``1e-5`` absolute after a few steps.

Models with BatchNorm (batch statistics per client, running buffers) or active Dropout (its random
stream would differ from the loop's) are refused for this mode with one line
(:func:`unsupported_model`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clients.learners.base import ClientData, Learner, TrainResult
from fedsim.config import VECTORIZE_MODES, vectorize_mode
from fedsim.data import to_float

log = logging.getLogger("fedsim")

__all__ = ["VECTORIZE_MODES", "train_group", "unsupported_model", "vectorize_mode", "wanted"]


def supports(learner: Learner | type[Learner]) -> bool:
    """Whether a learner's class itself declares ``vectorizable = True`` (a subclass that does not
    declare it again falls back, as it may have changed the loss)."""
    cls = learner if isinstance(learner, type) else type(learner)
    return bool(cls.__dict__.get("vectorizable", False))


def wanted(mode: str, device: torch.device, learner: Learner) -> bool:
    """Whether clients of ``learner`` train in a batched pass: ``on`` when the learner supports
    it, ``auto`` only on CUDA, ``off`` never."""
    if mode == "off" or not supports(learner):
        return False
    return mode == "on" or device.type == "cuda"


def unsupported_model(model: nn.Module) -> str | None:
    """Why ``model`` cannot train in this mode (one line), or None when it can."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return (
                f"engine.vectorize: model layer {name!r} is BatchNorm (per-client batch "
                "statistics and running buffers), which the batched pass does not handle"
            )
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return (
                f"engine.vectorize: model layer {name!r} is Dropout(p={m.p}), whose random "
                "stream would differ from the per-client loop's"
            )
    return None


# ---- the plan: each client's batches, as the per-client loop draws them --------------------------
def client_batches(
    pool: torch.Tensor, epochs: int, batch_size: int, generator: torch.Generator
) -> list[tuple[int, torch.Tensor]]:
    """``(epoch, positions)`` of each step of one client, in order: what
    :meth:`~clients.learners.base.Learner.train` iterates over (one permutation of ``pool`` per
    epoch from ``generator``; a last single-sample batch is dropped when ``len(pool) >= 2``)."""
    n = int(pool.numel())
    steps: list[tuple[int, torch.Tensor]] = []
    for epoch in range(epochs):
        order = pool[torch.randperm(n, generator=generator)]
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2 and n >= 2:
                continue
            steps.append((epoch, idx))
    return steps


@dataclass
class StepPlan:
    """The group's steps, padded: for step ``t``, ``rows[t]`` ``[C, B]`` (rows of the stacked data),
    ``weight[t]`` ``[C, B]`` (1 for a sample, 0 for padding), ``count[t]`` ``[C]`` samples,
    ``epoch[t]`` ``[C]`` and ``active[t]`` ``[C]`` (whether the client has a step ``t``)."""

    rows: torch.Tensor
    weight: torch.Tensor
    count: torch.Tensor
    epoch: torch.Tensor
    active: torch.Tensor


def plan_steps(
    steps: Sequence[Sequence[tuple[int, torch.Tensor]]], offsets: Sequence[int]
) -> StepPlan:
    """Stack the clients' steps (from :func:`client_batches`) into a :class:`StepPlan`; client
    ``i``'s positions are shifted by ``offsets[i]`` (its first row in the stacked data). Padding
    repeats the batch's first row with weight 0; an inactive client's entries are all padding.

    >>> a = [(0, torch.tensor([1, 0])), (0, torch.tensor([2]))]
    >>> p = plan_steps([a, [(0, torch.tensor([0, 1]))]], [0, 3])
    >>> p.rows.tolist(), p.weight.tolist(), p.active.tolist()
    ([[[1, 0], [3, 4]], [[2, 2], [0, 0]]], [[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]], [[True, True], [True, False]])
    """
    c = len(steps)
    t_max = max((len(s) for s in steps), default=0)
    b_max = max((int(idx.numel()) for s in steps for _, idx in s), default=1)
    rows = torch.zeros(t_max, c, b_max, dtype=torch.long)
    weight = torch.zeros(t_max, c, b_max)
    count = torch.zeros(t_max, c, dtype=torch.long)
    epoch = torch.zeros(t_max, c, dtype=torch.long)
    active = torch.zeros(t_max, c, dtype=torch.bool)
    for i, (client, off) in enumerate(zip(steps, offsets, strict=True)):
        for t, (e, idx) in enumerate(client):
            b = int(idx.numel())
            rows[t, i, :b] = idx + off
            rows[t, i, b:] = int(idx[0]) + off
            weight[t, i, :b] = 1.0
            count[t, i], epoch[t, i], active[t, i] = b, e, True
    return StepPlan(rows, weight, count, epoch, active)


# ---- optimizers on stacked state (the formulas of fedsim's SGD and torch.optim.Adam) ----------
def sgd_update(
    p: torch.Tensor,
    g: torch.Tensor,
    buf: torch.Tensor | None,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One SGD step of stacked parameters: ``d = g + wd p``; ``b = m b + d`` (``b`` starts at
    zero, so the first step gives ``b = d`` as :class:`~clients.learners.base.SGD` does);
    ``p - lr b``. Returns the new parameters and buffer (None without momentum).

    >>> p, b = sgd_update(torch.ones(2), torch.ones(2), torch.zeros(2), lr=0.5, momentum=0.9,
    ...                   weight_decay=0.0)
    >>> p.tolist(), b.tolist()
    ([0.5, 0.5], [1.0, 1.0])
    """
    d = g if weight_decay == 0 else g.add(p, alpha=weight_decay)
    if momentum:
        assert buf is not None
        buf = buf.mul(momentum).add_(d)
        d = buf
    return p.add(d, alpha=-lr), buf


def adam_update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    step: int,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (``torch.optim.Adam``'s single-tensor formulas, L2 weight decay) of stacked
    parameters whose clients all take their ``step``-th step (1-based). Returns ``(p, m, v)``."""
    b1, b2 = betas
    if weight_decay != 0:
        g = g.add(p, alpha=weight_decay)
    m = m.lerp(g, 1 - b1)
    v = v.mul(b2).addcmul_(g, g, value=1 - b2)
    step_size = lr / (1 - b1**step)
    denom = (v.sqrt() / (1 - b2**step) ** 0.5).add_(eps)
    return p.addcdiv(m, denom, value=-step_size), m, v


def masked_mean(per_sample: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mean of ``per_sample`` over the samples of weight 1 (padding has weight 0)."""
    return (per_sample * weight).sum() / weight.sum()


def fold_tally(
    loss: list[float], count: list[int], correct: list[int], labeled: list[int]
) -> dict[str, float]:
    """A client's metrics from its steps' losses, sample counts, correct and labeled counts, added
    in step order as :class:`~clients.learners.base.Tally` adds them."""
    loss_sum, seen = 0.0, 0
    for value, b in zip(loss, count, strict=True):
        loss_sum += value * b
        seen += b
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": sum(correct) / max(sum(labeled), 1),
    }


# ---- the group's training --------------------------------------------------------------------
def train_group(
    learner: Learner,
    model: nn.Module,
    datas: Sequence[ClientData],
    generators: Sequence[torch.Generator],
    states: Sequence[dict[str, Any]],
    *,
    device: torch.device,
    proximal_mu: float = 0.0,
) -> tuple[list[TrainResult], list[dict[str, torch.Tensor]]]:
    """Train one client per entry of ``datas`` from ``model``'s current weights, all at once.

    Returns each client's :class:`TrainResult` and trained parameters (by name; ``model``'s
    own tensors are left as they were). ``states`` are the clients' persisted states: the
    learner's :meth:`~clients.learners.base.Learner.loss_knob` reads them, and its
    ``on_train_start``/``on_train_end`` run per client after training. A client with nothing to
    train on gets ``TrainResult(0, {})`` and the received weights.
    """
    from torch.func import functional_call, grad_and_value, vmap

    why = unsupported_model(model)
    if why is not None:
        raise ValueError(why)
    first = next(model.parameters(), None)
    if first is not None and first.device != device:
        model.to(device)
    model.train()
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    base = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    pools = [learner.train_indices(d) for d in datas]
    live = [i for i, pool in enumerate(pools) if pool.numel() > 0]
    results = [TrainResult(0, {}) for _ in datas]
    trained = [{k: v.clone() for k, v in base.items()} for _ in datas]
    if not live:
        return results, trained
    steps = [
        client_batches(pools[i], learner.epochs, learner.batch_size, generators[i]) for i in live
    ]
    offsets, total = [], 0
    for i in live:
        offsets.append(total)
        total += len(datas[i])
    plan = plan_steps(steps, offsets)
    ref = datas[live[0]]
    x_all = torch.cat([datas[i].x for i in live]).to(device)
    y_all = torch.cat([datas[i].y for i in live]).to(device)
    knobs = torch.tensor(
        [[learner.loss_knob(states[i], e) for e in range(learner.epochs)] for i in live],
        dtype=torch.float32,
    )
    c = len(live)
    params = {k: base[k].unsqueeze(0).repeat(c, *([1] * base[k].dim())) for k in names}
    adam = learner.optimizer == "adam"
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    slots: list[dict[str, torch.Tensor]] = (
        [zeros, {k: torch.zeros_like(v) for k, v in params.items()}]
        if adam
        else ([zeros] if learner.momentum else [])
    )
    mu = float(proximal_mu)

    def one(
        p: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        k: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        logits = functional_call(model, (p, buffers), (x,))
        loss = masked_mean(learner.sample_losses(logits, y, k), w)
        if mu > 0:
            prox = sum(((p[n] - base[n]) ** 2).sum() for n in names)
            loss = loss + 0.5 * mu * prox
        return loss, (loss.detach(), logits.detach())

    step_fn = vmap(grad_and_value(one, has_aux=True))
    out_loss, out_correct, out_labeled = [], [], []
    for t in range(plan.rows.shape[0]):
        act = plan.active[t]
        full = bool(act.all())
        ids = None if full else torch.nonzero(act).flatten().to(device)
        rows = plan.rows[t].to(device)
        w = plan.weight[t].to(device)
        k = knobs.gather(1, plan.epoch[t].view(-1, 1)).squeeze(1).to(device)
        if ids is not None:
            rows, w, k = rows[ids], w[ids], k[ids]
        x = to_float(x_all[rows.flatten()], ref.mean, ref.std)
        x = x.view(*rows.shape, *x.shape[1:])
        y = y_all[rows]
        p_t = params if ids is None else {n: v[ids] for n, v in params.items()}
        grads, (_, (loss, logits)) = step_fn(p_t, x, y, w, k)
        for n in names:
            s_t = [s[n] if ids is None else s[n][ids] for s in slots]
            if adam:
                new, m, v = adam_update(
                    p_t[n], grads[n], s_t[0], s_t[1], step=t + 1, lr=learner.lr,
                    weight_decay=learner.weight_decay,
                )  # fmt: skip
                new_slots = [m, v]
            else:
                new, b = sgd_update(
                    p_t[n], grads[n], s_t[0] if s_t else None, lr=learner.lr,
                    momentum=learner.momentum, weight_decay=learner.weight_decay,
                )  # fmt: skip
                new_slots = [b] if b is not None else []
            if ids is None:
                params[n] = new
                for s, val in zip(slots, new_slots, strict=True):
                    s[n] = val
            else:
                params[n] = params[n].index_copy(0, ids, new)
                for s, val in zip(slots, new_slots, strict=True):
                    s[n] = s[n].index_copy(0, ids, val)
        has = (y >= 0) & (w > 0)
        correct = ((logits.argmax(-1) == y) & has).sum(1)
        scatter = torch.zeros(c, dtype=torch.long, device=device)
        out_loss.append(
            loss if ids is None else torch.zeros(c, device=device).index_copy(0, ids, loss)
        )
        out_correct.append(correct if ids is None else scatter.index_copy(0, ids, correct))
        out_labeled.append(
            has.sum(1) if ids is None else scatter.clone().index_copy(0, ids, has.sum(1))
        )
    losses = torch.stack(out_loss).cpu().T.tolist()
    corrects = torch.stack(out_correct).cpu().T.tolist()
    labeled = torch.stack(out_labeled).cpu().T.tolist()
    counts = plan.count.T.tolist()
    actives = plan.active.T.tolist()
    for j, i in enumerate(live):
        keep = [t for t, a in enumerate(actives[j]) if a]
        results[i] = TrainResult(
            int(pools[i].numel()),
            fold_tally(
                [losses[j][t] for t in keep],
                [counts[j][t] for t in keep],
                [corrects[j][t] for t in keep],
                [labeled[j][t] for t in keep],
            ),
        )
        trained[i] = {n: params[n][j] for n in names}
    return results, trained


def check_vectorize_data(cfg: Any, data: Any) -> None:
    """``engine.vectorize=on`` with ``engine=fast`` and a model this mode cannot train (see
    :func:`unsupported_model`): one line. (``auto`` falls back to the per-client loop.)"""
    from omegaconf import OmegaConf

    from fedsim.errors import ConfigError
    from fedsim.models import model_for

    if OmegaConf.select(cfg, "engine.name") != "fast":
        return
    if vectorize_mode(OmegaConf.select(cfg, "engine.vectorize")) != "on":
        return
    model = model_for(cfg, data)
    why = unsupported_model(model)
    if why is not None:
        raise ConfigError(f"{why}; set engine.vectorize=auto or off")
