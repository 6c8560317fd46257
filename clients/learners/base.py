"""The base local learner: it runs the training loop and exposes narrow hooks.

A new local method (a robust loss, a partial-label method, a semi-supervised method, an attack's
poisoned training) subclasses :class:`Learner` and overrides :meth:`Learner.loss` and, where it keeps
state across rounds, :meth:`Learner.on_train_start` / :meth:`Learner.on_train_end`. It does not copy
the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from fedsim.data import to_float
from fedsim.data.client_data import LABEL_KINDS, ClientData
from fedsim.errors import ConfigError
from fedsim.registries import LOCAL
from fedsim.schema import spec

#: The optimizers a learner can use (``local.optimizer``).
OPTIMIZERS = ("sgd", "adam")

__all__ = ["LABEL_KINDS", "LOCAL", "ClientData", "Learner", "TrainResult", "build_learner"]


class SGD:
    """SGD with momentum and weight decay, as ``torch.optim.SGD`` computes it (no dampening, no
    Nesterov): ``d = g + wd * p``; ``b = d`` on the first step, else ``b = m * b + d``;
    ``p -= lr * b``.

    fedsim uses it instead of ``torch.optim.SGD`` because constructing a ``torch.optim`` optimizer
    imports PyTorch's compiler stack, about 1.4 s per process, which every simulation worker would
    pay at start-up.
    """

    def __init__(
        self, params: Any, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = d.clone()
                else:
                    buf.mul_(self.momentum).add_(d)
                d = buf
            p.add_(d, alpha=-self.lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients."""
        for p in self.params:
            p.grad = None


def same_device(actual: torch.device, wanted: torch.device) -> bool:
    """Whether a tensor on ``actual`` is on ``wanted``; ``cuda`` without an index means the
    current CUDA device (``torch.device("cuda") != torch.device("cuda:0")`` in PyTorch, so a plain
    comparison moved the model, a no-op walk of every module, once per client)."""
    if actual.type != wanted.type:
        return False
    if wanted.index is None:
        return actual.type != "cuda" or actual.index == torch.cuda.current_device()
    return actual.index == wanted.index


class Tally:
    """Sums of a local training call's loss, correct predictions, samples and labeled samples.

    On the CPU they are Python numbers. On a GPU (``on_device``) they stay in a float64 tensor on
    the device until :meth:`totals`: reading each batch's loss on the host made the host wait for
    the GPU three times per batch. Both add the same float64 numbers in the same order, so the
    metrics are the same to the last bit.
    """

    def __init__(self, *, on_device: bool, device: torch.device) -> None:
        self.seen = 0
        self.host = [0.0, 0, 0]  # loss sum, correct, labeled
        self.sums = torch.zeros(3, dtype=torch.float64, device=device) if on_device else None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, b: int) -> None:
        """Count one batch of ``b`` samples; accuracy is counted where ``y`` holds hard labels
        (``-1``: unlabeled, not counted)."""
        self.seen += b
        hard = y.dim() == 1 and logits.shape[0] == b
        if self.sums is not None:
            if hard:
                has = y >= 0
                correct = ((logits.argmax(1) == y) & has).sum().double()
                labeled = has.sum().double()
            else:
                correct = labeled = loss.new_zeros((), dtype=torch.float64)
            self.sums += torch.stack((loss.double().reshape(()) * b, correct, labeled))
            return
        self.host[0] += float(loss) * b
        if hard:
            has = y >= 0
            self.host[1] += int((logits.argmax(1)[has] == y[has]).sum())
            self.host[2] += int(has.sum())

    def totals(self) -> tuple[float, int, int, int]:
        """(loss sum, correct, seen, labeled)."""
        if self.sums is not None:
            loss_sum, correct, labeled = self.sums.tolist()
            return loss_sum, int(correct), self.seen, int(labeled)
        return float(self.host[0]), int(self.host[1]), self.seen, int(self.host[2])


@dataclass
class TrainResult:
    """Outcome of one local training call."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(kw_only=True, eq=False)
class Learner:
    """Local mini-batch training with a pluggable loss.

    Parameters
    ----------
    epochs
        Local epochs per round.
    batch_size
        Mini-batch size.
    optimizer
        ``"sgd"`` or ``"adam"``; the optimizer is created anew every round.
    lr, momentum, weight_decay
        Optimizer settings (momentum is ignored by Adam).
    """

    #: Kinds of labels this learner can use (checked at start, see :func:`check_label_kind`).
    label_kinds: ClassVar[frozenset[str]] = frozenset({"clean"})
    #: whether it keeps per-client state across rounds in ``on_train_end`` (the client's
    #: ``Context.state``); a checkpoint does not hold it, so a resumed run restarts it
    keeps_client_state: ClassVar[bool] = False
    #: whether ``engine.vectorize`` may train a group of its clients in one batched pass
    #: (:mod:`clients.learners.vectorized`): the class itself must declare it (a subclass that
    #: does not falls back to the per-client loop) and implement :meth:`sample_losses`
    vectorizable: ClassVar[bool] = False
    #: a helper learner (open-set FAL's detectors, chosen by the query strategy): refused as
    #: ``local`` because it trains on K + 1 classes, the last one "unknown"
    helper_only: ClassVar[bool] = False
    epochs: Annotated[int, spec(low=1, doc="local epochs per round")] = 1
    batch_size: Annotated[int, spec(low=1, doc="mini-batch size")] = 32
    optimizer: Annotated[str, spec(choices=OPTIMIZERS, doc="created anew every round")] = "sgd"
    lr: Annotated[float, spec(low=0, low_open=True, doc="learning rate")] = 0.05
    momentum: Annotated[float, spec(low=0, doc="SGD momentum (Adam ignores it)")] = 0.9
    weight_decay: Annotated[float, spec(low=0, doc="L2 weight decay")] = 0.0
    #: The generator of the current training call's randomness (set by :meth:`train`).
    rng: torch.Generator = field(init=False, repr=False)

    # ---- hooks --------------------------------------------------------------------------------
    def make_optimizer(self, model: nn.Module) -> Any:
        """Build this round's optimizer (an object with ``step()`` and ``zero_grad()``)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return SGD(
            model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one mini-batch and the logits it was computed from.

        ``idx`` are the batch's positions in the client's data (for per-sample state).
        """
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def sample_losses(
        self, logits: torch.Tensor, y: torch.Tensor, knob: torch.Tensor
    ) -> torch.Tensor:
        """Batched pass (``vectorizable``): the per-sample losses whose mean is :meth:`loss`.

        A pure function of its arguments (it runs under ``torch.func.vmap``); ``knob`` is the
        client's :meth:`loss_knob` for the current epoch.
        """
        return F.cross_entropy(logits, y, reduction="none")

    def loss_knob(self, state: dict[str, Any], epoch: int) -> float:
        """Batched pass: the one per-client, per-epoch number :meth:`sample_losses` reads, from
        the client's persisted ``state`` and the ``epoch`` of this call (default 0)."""
        return 0.0

    def on_train_start(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        """Called before the loop; ``state`` persists across rounds for this client."""

    def on_train_end(self, model: nn.Module, data: ClientData, state: dict[str, Any]) -> None:
        """Called after the loop."""

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a uint8 image batch before normalisation (default: none)."""
        return x

    def on_epoch_start(self, model: nn.Module, data: ClientData, epoch: int) -> None:
        """Called before each local epoch (``epoch`` counts from 0 within this call)."""

    def train_indices(self, data: ClientData) -> torch.Tensor:
        """Positions one epoch iterates over: by default the samples with a label or a
        candidate set (unlabeled samples are skipped)."""
        if data.candidates is None and not bool((data.y < 0).any()):
            return torch.arange(len(data))
        return torch.nonzero((data.y >= 0) | data.candidate_matrix().any(1)).flatten()

    # ---- the loop -----------------------------------------------------------------------------
    def train(
        self,
        model: nn.Module,
        data: ClientData,
        *,
        device: torch.device,
        generator: torch.Generator,
        proximal_mu: float = 0.0,
        state: dict[str, Any] | None = None,
    ) -> TrainResult:
        """Train ``model`` in place on ``data``; return the example count and mean metrics.

        With ``proximal_mu > 0`` the FedProx term ``mu/2 * ||w - w_global||^2`` is added, where
        ``w_global`` is the model as received.
        """
        state = {} if state is None else state
        self.rng = generator
        pool = self.train_indices(data)
        n = int(pool.numel())
        if n == 0:
            return TrainResult(0, {})
        first = next(model.parameters(), None)
        if first is not None and not same_device(first.device, device):
            model.to(device)
        model.train()
        self.on_train_start(model, data, state)
        global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
        opt = self.make_optimizer(model)
        tally = Tally(on_device=device.type == "cuda", device=device)
        for epoch in range(self.epochs):
            self.on_epoch_start(model, data, epoch)
            order = pool[torch.randperm(n, generator=generator)]
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                if idx.numel() < 2 and n >= 2:  # BatchNorm needs > 1 sample; drop a last single
                    continue
                xb = to_float(self.augment(data.x[idx]).to(device), data.mean, data.std)
                yb = data.y[idx].to(device)
                loss, logits = self.loss(model, xb, yb, idx)
                if proximal_mu > 0:
                    prox = sum(
                        ((p - g) ** 2).sum()
                        for p, g in zip(model.parameters(), global_params, strict=True)
                    )
                    loss = loss + 0.5 * proximal_mu * prox
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tally.add(loss.detach(), logits.detach(), yb, int(idx.numel()))
        self.on_train_end(model, data, state)
        loss_sum, correct, seen, labeled = tally.totals()
        metrics = {
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(labeled, 1),
        }
        return TrainResult(n, metrics)


def check_label_kind(name: str, learner_cls: type[Learner], label_kind: str) -> None:
    """Refuse a learner that cannot use a client's kind of labels, with one clear line."""
    if label_kind not in learner_cls.label_kinds:
        raise ConfigError(
            f"local method {name!r} cannot train on {label_kind!r} labels: it accepts "
            f"{', '.join(sorted(learner_cls.label_kinds))}"
        )


def check_local_config(cfg: DictConfig) -> None:
    """The learners' whole-config check: every client group's local method exists, takes its
    parameters, and can use the group's kind of labels (e.g. CE refuses partial labels)."""
    from fedsim.data.weak_clients import local_of, used_specs

    for weak, kind in used_specs(cfg):
        name, params = local_of(cfg, weak)
        where = "local" if weak.local is None else "weak_labels.groups[].local"
        learner = build_learner(name, params, where=where)
        if type(learner).helper_only:
            helpers = sorted(n for n in LOCAL.names() if LOCAL.get(n).helper_only)  # type: ignore[attr-defined]
            targets = [n for n in LOCAL.names() if n not in helpers]
            raise ConfigError(
                f"{where}={name}: a helper learner of open-set detectors ({', '.join(helpers)}), "
                f"chosen by the query strategy; allowed {where}: {', '.join(targets)}"
            )
        check_label_kind(name, type(learner), kind)


def build_learner(name: str, params: Mapping[str, Any], *, where: str = "local") -> Learner:
    """Instantiate the learner registered as ``name`` with ``params`` (checked against its
    signature, so a typo gives a one-line error listing the allowed parameters)."""
    learner: Learner = LOCAL.build(name, params, prefix=where, what=f"local method {name!r}")
    return learner
