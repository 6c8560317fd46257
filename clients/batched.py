"""``engine.vectorize`` on the ClientApp's side: the train messages of one worker call that can
share a batched pass (:mod:`clients.learners.vectorized`) train together, each prepared and
answered exactly as :func:`clients.app.train` does it; the fast engine's worker
(:mod:`fedsim.engine.worker`) hands the rest to the ClientApp one by one.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import Context, Message

from clients.app import TrainJob, client_runtime, finish_train, prepare_train
from clients.learners.vectorized import supports, train_group, wanted
from fedsim.constants import ARRAYS_KEY

log = logging.getLogger("fedsim")

_NOTED: set[str] = set()


def _note(line: str) -> None:
    """Log ``line`` at INFO once per process."""
    if line not in _NOTED:
        _NOTED.add(line)
        log.info(line)


def train_many(batch: list[tuple[Message, Context]]) -> list[Message | None]:
    """``engine.vectorize``: train the train messages of one worker call that can share a batched
    pass (:mod:`clients.learners.vectorized`) and reply to them; None for each message left to
    the per-client path (other message types, learners without a batched pass, errors).

    Clients share a pass when they have the same learner, model payload and proximal mu.
    """
    out: list[Message | None] = [None] * len(batch)
    if not batch:
        return out
    first = client_runtime(batch[0][1])
    if first.vectorize == "off" or (first.vectorize == "auto" and first.device.type != "cuda"):
        return out
    groups: dict[tuple[Any, ...], list[tuple[int, TrainJob]]] = {}
    for i, (msg, context) in enumerate(batch):
        if msg.metadata.message_type != "train" or not msg.has_content():
            continue
        try:
            job = prepare_train(msg, context)
        except Exception:  # the per-client path raises it again and replies with the error
            continue
        rt = job.rt
        if not wanted(rt.vectorize, rt.device, job.learner):
            if rt.vectorize == "on" and not supports(job.learner):
                _note(
                    f"engine.vectorize: local method {type(job.learner).__name__} has no "
                    "batched pass; its clients train one by one"
                )
            continue
        if rt.model_refusal is not None:
            _note(f"{rt.model_refusal}; clients train one by one")
            continue
        arrays = msg.content.array_records[ARRAYS_KEY]
        base = rt.learner_for(job.pid)[1]
        key = (id(rt), id(base), job.learner.lr, id(arrays), job.proximal_mu)
        groups.setdefault(key, []).append((i, job))
    for members in groups.values():
        if len(members) < 2:
            continue
        try:
            replies = _train_group([job for _, job in members])
        except Exception:  # the per-client path trains them (and reports its own errors)
            log.exception("engine.vectorize: a batched pass failed; its clients train one by one")
            continue
        for (i, _), reply in zip(members, replies, strict=True):
            out[i] = reply
    return out


def _train_group(jobs: list[TrainJob]) -> list[Message]:
    """Train ``jobs`` (same runtime, learner and payload) in one batched pass; their replies."""
    rt, learner = jobs[0].rt, jobs[0].learner
    model = rt.load(jobs[0].msg.content.array_records[ARRAYS_KEY])
    results, trained = train_group(
        learner,
        model,
        [j.data for j in jobs],
        [torch.Generator().manual_seed(j.seed) for j in jobs],
        [j.state for j in jobs],
        device=rt.device,
        proximal_mu=jobs[0].proximal_mu,
    )
    params = dict(model.named_parameters())
    replies = []
    for job, result, weights in zip(jobs, results, trained, strict=True):
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        if result.num_examples > 0:  # the per-client loop's hooks (state across rounds)
            learner.on_train_start(model, job.data, job.state)
            learner.on_train_end(model, job.data, job.state)
        replies.append(finish_train(job, model, result))
    return replies
