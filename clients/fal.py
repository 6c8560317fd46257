"""The client side of federated active learning (message type ``query.fal``).

The labeled-pool mask of a client lives in its ``Context.state`` (so it survives across messages
in simulation and on a real SuperNode); the oracle is the client's own hidden labels. One handler
serves every phase of a cycle (:data:`~fedsim.constants.FAL_PHASE`):

``size``    reply the pool size (the server derives the budgets from the total);
``init``    draw the initial labeled pool (``fal-budget`` samples, seeded by run seed and partition);
``restore`` on resume: the initial pool again plus the positions picked so far (``fal-picks``);
``stats``   train the local-only model from the shipped initialisation and reply FairFAL's
            ``(d_k, g_k)`` (phase A);
``select``  pick ``fal-budget`` unlabeled samples with the query strategy, reveal their labels and
            reply the true-label histogram of the picks (phase B).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import osal
from clients.learners import ClientData
from clients.query import ModelOutputs, QueryContext, QueryInputs, QueryStrategy, build_query
from clients.query.local_only import class_histogram, infer, train_local_only
from fedsim import constants as C
from fedsim.models import ClassifierModel, model_for
from fedsim.models.pair import target_of
from fedsim.records import array_record, torch_state
from fedsim.seeding import derive_seed

MASK_KEY = "fal-labeled"  # ArrayRecord in Context.state: {"mask": uint8 [pool]}
SCALARS_KEY = "fal-scalars"  # ConfigRecord in Context.state: divergence, local-model cycle
LOCAL_MODEL_KEY = "fal-local-model"  # ArrayRecord in Context.state: L_k of the current cycle
LAST_LOCAL_KEY = "fal-last-local"  # ArrayRecord in Context.state: last FL local model
PHASE_RESTORE = "restore"  # a resumed run rebuilds the pool: the initial draw plus PICKS_KEY
PICKS_KEY = "fal-picks"  # ConfigRecord key: positions picked in earlier cycles

_STRATEGIES: dict[str, QueryStrategy] = {}
_SPARE: dict[int, ClassifierModel] = {}


class ShortfallError(RuntimeError):
    """A client picked fewer samples than its budget (``fal.allow_shortfall=false``)."""


def labeled_mask(context: Context) -> np.ndarray | None:
    """The client's labeled-pool mask, or ``None`` outside FAL runs."""
    if MASK_KEY not in context.state.array_records:
        return None
    return context.state.array_records[MASK_KEY]["mask"].numpy().astype(bool)


def _save_mask(context: Context, mask: np.ndarray) -> None:
    context.state[MASK_KEY] = ArrayRecord({"mask": Array(mask.astype(np.uint8))})


def training_data(context: Context, data: ClientData) -> ClientData:
    """``data`` restricted to the labeled pool in FAL runs (unchanged otherwise); in an open-set
    pool, to its labeled known samples (the target never trains on an unknown)."""
    mask = labeled_mask(context)
    if mask is None:
        return data
    mask = mask & (data.y.numpy() != data.num_classes)
    idx = torch.from_numpy(np.flatnonzero(mask))
    return ClientData(
        x=data.x[idx],
        y=data.y[idx],
        mean=data.mean,
        std=data.std,
        num_classes=data.num_classes,
        label_kind=data.label_kind,
    )


def after_train(context: Context, config: Any, model: ClassifierModel) -> None:
    """Keep the model after this local update when the server asks (``last_local`` models)."""
    if config.get(C.FAL_SAVE_LAST_LOCAL):
        context.state[LAST_LOCAL_KEY] = array_record(model.state_dict())


def strategy_of(cfg: Any) -> QueryStrategy:
    """The configured query strategy (built once per process and config)."""
    key = repr(dict(cfg.query))
    if key not in _STRATEGIES:
        params = {k: v for k, v in cfg.query.items() if k != "name"}
        _STRATEGIES.clear()
        _STRATEGIES[key] = build_query(str(cfg.query.name), params)
    return _STRATEGIES[key]


def _spare_model(rt: Any) -> ClassifierModel:
    """A second model instance (local models), built once per runtime."""
    m = _SPARE.get(id(rt))
    if m is None:
        _SPARE.clear()
        m = model_for(rt.cfg, rt.federation.data).to(rt.device)
        _SPARE[id(rt)] = m
    return m


def _reply(msg: Message, metrics: dict[str, Any]) -> Message:
    return Message(RecordDict({C.METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


def handle(msg: Message, context: Context, rt: Any, pid: int) -> Message:
    """Answer one ``query.fal`` message (see the module docstring)."""
    cfg = rt.cfg
    config = msg.content.config_records[C.CONFIG_KEY]
    phase = str(config[C.FAL_PHASE])
    data = rt.data(pid)
    n = len(data)
    labels = data.y.numpy()
    num_classes = data.num_classes
    open_set = osal.is_open_set(cfg)
    if phase == C.FAL_PHASE_SIZE:
        if open_set:
            return _reply(
                msg, {C.FAL_POOL_SIZE: n, C.OSAL_KNOWN: int((labels < num_classes).sum())}
            )
        return _reply(msg, {C.FAL_POOL_SIZE: n})
    if phase in (C.FAL_PHASE_INIT, PHASE_RESTORE):
        b0 = min(int(config[C.FAL_BUDGET]), n)  # type: ignore[arg-type]
        rng = np.random.default_rng(derive_seed(rt.seed, pid, 0xFA0))
        if open_set:  # the initial pool holds known samples only (spec section 1.4)
            first = osal.initial_pool(labels, b0, rng, num_classes)
        else:
            first = np.zeros(n, dtype=bool)
            first[rng.choice(n, size=b0, replace=False)] = True
        if phase == PHASE_RESTORE:  # a resumed run: the initial pool plus the picks so far
            picks = np.asarray(config.get(PICKS_KEY) or [], dtype=np.int64)
            if picks.size and (picks.min() < 0 or picks.max() >= n):
                raise RuntimeError(f"partition {pid}: restored picks outside its {n} samples")
            first[picks] = True
        _save_mask(context, first)
        if phase == PHASE_RESTORE and open_set:  # the strategy's adaptive state restarts
            osal.save_state(context, {})
        return _reply(msg, {C.FAL_LABELED: int(first.sum()), **_hists(labels, first, num_classes)})

    stored = labeled_mask(context)
    if stored is None:
        raise RuntimeError(f"partition {pid}: FAL phase {phase!r} before the initial pool")
    mask = stored
    cycle = int(config[C.FAL_CYCLE])  # type: ignore[arg-type]
    strategy = strategy_of(cfg)
    fal = cfg.fal
    infer_bs = int(fal.infer_batch_size)
    global_model = rt.load(msg.content.array_records[C.ARRAYS_KEY])
    cache: dict[str, ModelOutputs] = {}
    scalars = (
        dict(context.state.config_records[SCALARS_KEY])
        if SCALARS_KEY in context.state.config_records
        else {}
    )

    if C.FAL_LOCAL_ARRAYS in msg.content.array_records:  # train L_k from the shared init
        local = _spare_model(rt)
        local.load_state_dict(torch_state(msg.content.array_records[C.FAL_LOCAL_ARRAYS]))
        seed = derive_seed(rt.seed, cycle, pid, 0x10CA1)
        torch.random.default_generator.manual_seed(seed)
        lab = torch.from_numpy(np.flatnonzero(mask & (labels != num_classes)))  # known only
        lo = {k: v for k, v in fal.local_only.items()}
        train_local_only(
            local,
            data.x[lab],
            data.y[lab],
            data.mean,
            data.std,
            device=rt.device,
            generator=torch.Generator().manual_seed(seed),
            infer_batch_size=infer_bs,
            **lo,
        )
        context.state[LOCAL_MODEL_KEY] = array_record(local.state_dict())
        cache["local_only"] = infer(
            local, data.x, data.mean, data.std, device=rt.device, batch_size=infer_bs
        )

    def outputs(kind: str) -> ModelOutputs:
        if kind not in cache:
            if kind == "global":
                model = global_model
            elif kind == "detector":
                model = getattr(global_model, "detector", None)
                if model is None and open_set:  # open_set.detector=local
                    model = osal.local_detector(rt, data, mask, cycle=cycle, pid=pid)
                if model is None:
                    raise RuntimeError(f"partition {pid}: the global model has no detector")
            else:
                key = LOCAL_MODEL_KEY if kind == "local_only" else LAST_LOCAL_KEY
                if key not in context.state.array_records:
                    raise RuntimeError(f"partition {pid}: no {kind} model for cycle {cycle}")
                model = _spare_model(rt)
                model.load_state_dict(torch_state(context.state.array_records[key]))
            cache[kind] = infer(
                model, data.x, data.mean, data.std, device=rt.device, batch_size=infer_bs
            )
        return cache[kind]

    hidden = np.where(mask, labels, -1)  # the strategy sees only revealed labels
    inp = QueryInputs(
        labeled=mask.copy(),
        labels=hidden,
        budget=0,
        num_classes=num_classes,
        rng=np.random.default_rng(derive_seed(rt.seed, cycle, pid, 0xFA1)),
        outputs=outputs,
        rbar=float(config[C.FAL_RBAR]) if C.FAL_RBAR in config else None,  # type: ignore[arg-type]
        divergence=float(scalars["divergence"]) if "divergence" in scalars else None,  # type: ignore[arg-type]
    )
    if open_set:
        inp.unknown_label = num_classes
        inp.state = osal.load_state(context)
        if strategy.needs_context:
            inp.context = QueryContext(
                x=data.x,
                mean=data.mean,
                std=data.std,
                device=rt.device,
                infer_batch_size=infer_bs,
                target=copy.deepcopy(target_of(global_model)),
                seed=derive_seed(rt.seed, cycle, pid, 0xB0A1),
            )
    if phase == C.FAL_PHASE_STATS:
        stats = strategy.stats(_view(strategy, inp)[0])
        scalars["divergence"] = float(stats["divergence"])
        context.state[SCALARS_KEY] = ConfigRecord(scalars)
        return _reply(
            msg, {C.FAL_DIVERGENCE: stats["divergence"], C.FAL_IMBALANCE: stats["imbalance"]}
        )
    if phase != C.FAL_PHASE_SELECT:
        raise ValueError(f"unknown FAL phase {phase!r}")
    budget = int(config[C.FAL_BUDGET])  # type: ignore[arg-type]
    unlabeled = int((~mask).sum())
    inp.budget = min(budget, unlabeled)
    raw = np.asarray(_select(strategy, inp) if inp.budget else [], dtype=np.int64)
    picks = np.unique(raw)
    if picks.size and (picks.min() < 0 or picks.max() >= n or mask[picks].any()):
        raise RuntimeError(f"partition {pid}: query strategy picked an invalid or labeled sample")
    if picks.size < budget and not bool(fal.allow_shortfall):
        raise ShortfallError(
            f"partition {pid}: {picks.size} picks for a budget of {budget} "
            f"({unlabeled} unlabeled; set fal.allow_shortfall=true to continue)"
        )
    before = mask.copy()
    mask[picks] = True  # the oracle reveals the labels (an unknown pick: label K, "unknown")
    _save_mask(context, mask)
    known_picks = picks[labels[picks] < num_classes] if open_set else picks
    metrics: dict[str, Any] = {
        C.FAL_LABELED: int(mask.sum()),
        C.FAL_QUERY_HIST: class_histogram(labels[known_picks], num_classes),
        **_hists(labels, mask, num_classes),
    }
    if not open_set or bool(cfg.open_set.log_picks):
        metrics["picks"] = [int(i) for i in picks]  # positions in this client's partition
    if open_set:
        om = osal.pick_metrics(labels, before, picks, num_classes)
        metrics.update(om)
        inp.state["last_precision"] = float(om["precision"]) if picks.size else 0.0
        osal.save_state(context, inp.state)
    diag = inp.diagnostics
    if "quotas" in diag:
        metrics[C.FAL_QUOTAS] = diag["quotas"]
        metrics[C.FAL_USE_GLOBAL_UNC] = diag["use_global_uncertainty"]
        metrics[C.FAL_USE_GLOBAL_GRAD] = diag["use_global_gradient"]
        metrics[C.FAL_DIVERGENCE] = float(inp.divergence or 0.0)
    if "pseudo_labels" in diag and raw.size:  # aligned with the strategy's raw picks
        metrics[C.FAL_PSEUDO_ACC] = float(np.mean(diag["pseudo_labels"] == labels[raw]))
    if open_set:  # the strategy's scalar diagnostics (k_t, shortfall, ...)
        for key, value in diag.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"osal_{key}"] = float(value)
    return _reply(msg, metrics)


def _select(strategy: QueryStrategy, inp: QueryInputs) -> np.ndarray:
    """The strategy's picks, as pool positions (see :func:`_view`)."""
    view, keep = _view(strategy, inp)
    picks = np.asarray(strategy.select(view), dtype=np.int64)
    return picks if keep is None else keep[picks]


def _view(strategy: QueryStrategy, inp: QueryInputs) -> tuple[QueryInputs, np.ndarray | None]:
    """What the strategy sees, and the pool positions of its rows (``None``: all of them).

    An open-set-unaware strategy (random, entropy, FairFAL as-is) sees the pool without its
    labeled unknowns, so every statistic it computes is over known labels and K classes (spec
    section 4.6)."""
    if inp.unknown_label is None or strategy.open_set_only or not inp.unknown.any():
        return inp, None
    keep = np.flatnonzero(~inp.unknown)
    full = inp.outputs

    def outputs(kind: str) -> ModelOutputs:
        out = full(kind)
        return ModelOutputs(
            out.log_probs[keep],
            out.features[keep],
            None if out.logits is None else out.logits[keep],
        )

    view = QueryInputs(
        labeled=inp.labeled[keep],
        labels=inp.labels[keep],
        budget=inp.budget,
        num_classes=inp.num_classes,
        rng=inp.rng,
        outputs=outputs,
        rbar=inp.rbar,
        divergence=inp.divergence,
        diagnostics=inp.diagnostics,
        state=inp.state,
        context=inp.context,
    )
    return view, keep


def _hists(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> dict[str, list[int]]:
    known = labels[mask]
    return {C.FAL_LABELED_HIST: class_histogram(known[known < num_classes], num_classes)}
