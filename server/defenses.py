"""Post-training defenses (config group ``defense``): FLAIN and dormant-neuron pruning, applied
once to the final global model with the auxiliary set held out of the test split.

A defense is a function ``(model, initial_state, aux_x, aux_y, mean, std, device, dataset) ->
(new_state, info)`` registered in :data:`DEFENSES`; ``none`` maps to ``None``. Each changes only
the weight matrix of its target layer (by default the first ``nn.Linear``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.data import to_float
from fedsim.errors import ConfigError, invalid
from fedsim.evaluation import batched
from fedsim.registries import DEFENSES
from server import flain as fl

DEFENSES.register("none")(None)


def target_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Linear]:
    """The defense's layer: the module called ``name``, or the first ``nn.Linear``."""
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (name is None or mod_name == name):
            return mod_name, mod
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    raise invalid("defense.layer", name, f"one of the model's Linear layers {linears}")


@torch.no_grad()
def layer_inputs(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 1024,
) -> torch.Tensor:
    """The inputs of ``layer`` over ``x`` (eval mode), captured with a forward pre-hook."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        for _ in batched(model, x, model, mean=mean, std=std, device=device, batch_size=batch_size):
            pass
    finally:
        handle.remove()
    return torch.cat(captured).flatten(1)


def _head(model: nn.Module, layer: nn.Linear) -> list[nn.Module] | None:
    """The modules that map ``layer``'s output to the logits, when the model is a Sequential of
    features followed by ``model.classifier`` (fedsim's cnn, mlp); ``None`` otherwise."""
    classifier = getattr(model, "classifier", None)
    if layer is classifier:
        return []
    for mod in model.modules():
        if isinstance(mod, nn.Sequential):
            children = list(mod)
            if any(c is layer for c in children):
                i = next(j for j, c in enumerate(children) if c is layer)
                rest = children[i + 1 :]
                return [*rest, classifier] if classifier is not None else None
    return None


def aux_accuracy_fn(
    model: nn.Module,
    layer: nn.Linear,
    inputs: torch.Tensor,
    aux_x: torch.Tensor,
    aux_y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
) -> Callable[[np.ndarray], float]:
    """``W -> aux accuracy`` of ``model`` with ``layer.weight = W``: from the cached inputs and
    the layers above when the head is known and reproduces the model's logits, else by a full
    forward pass."""
    head = _head(model, layer)
    bias = layer.bias
    y = aux_y.to(device)

    @torch.no_grad()
    def fast(w: np.ndarray) -> float:
        h = F.linear(inputs, torch.as_tensor(w, dtype=inputs.dtype, device=device), bias)
        for m in head or []:
            h = m(h)
        return float((h.argmax(1) == y).float().mean())

    @torch.no_grad()
    def slow(w: np.ndarray) -> float:
        saved = layer.weight.detach().clone()
        layer.weight.copy_(torch.as_tensor(w, dtype=saved.dtype))
        was = model.training
        model.eval()
        try:
            logits = model(to_float(aux_x.to(device), mean, std))
        finally:
            layer.weight.copy_(saved)
            model.train(was)
        return float((logits.argmax(1) == y).float().mean())

    if head is not None:
        model.eval()
        with torch.no_grad():
            ref = model(to_float(aux_x.to(device), mean, std))
            h = F.linear(inputs, layer.weight, bias)
            for m in head:
                h = m(h)
        if torch.allclose(h, ref, atol=1e-4, rtol=1e-4):
            return fast
    return slow


def _setup(
    model: nn.Module,
    layer_name: str | None,
    aux_x: torch.Tensor,
    aux_y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    stat: str,
) -> tuple[str, nn.Linear, np.ndarray, Callable[[np.ndarray], float]]:
    name, layer = target_layer(model, layer_name)
    inputs = layer_inputs(model, layer, aux_x, mean=mean, std=std, device=device)
    a = fl.activation_stat(inputs.cpu().numpy().astype(np.float64), stat)
    acc = aux_accuracy_fn(model, layer, inputs, aux_x, aux_y, mean=mean, std=std, device=device)
    return name, layer, a, acc


@DEFENSES.register("flain")
def flain(
    model: nn.Module,
    initial_state: Mapping[str, torch.Tensor],
    aux_x: torch.Tensor,
    aux_y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    dataset: str,
    mode: str = "reference",
    k_init: float | None = None,
    k_step: float | None = None,
    k_cap: float | None = None,
    tolerance: float | None = None,
    rescale_norm: bool = True,
    activation_stat: str = "mean",
    on_no_stop: str = "last",
    layer: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """FLAIN on ``model`` (the final global model); ``None`` schedule values come from the
    dataset's schedule (:data:`server.flain.SCHEDULES`)."""
    k_init, k_step, k_cap, tolerance = schedule(dataset, k_init, k_step, k_cap, tolerance)
    name, lin, a, acc = _setup(model, layer, aux_x, aux_y, mean, std, device, activation_stat)
    w_t = lin.weight.detach().cpu().numpy().astype(np.float64)
    w_0 = initial_state[f"{name}.weight"].detach().cpu().numpy().astype(np.float64)
    res = fl.flain_search(
        a,
        w_t,
        w_0,
        acc,
        grid=fl.threshold_grid(k_init, k_step, k_cap),
        tolerance=tolerance,
        mode=mode,
        on_no_stop=on_no_stop,
        rescale_norm=rescale_norm,
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state[f"{name}.weight"] = torch.as_tensor(res.weight, dtype=lin.weight.dtype)
    info = {
        "layer": name,
        "mode": mode,
        "k_star": res.k_star,
        "flip_count": res.flip_count,
        "aux_acc_before": res.acc_before,
        "aux_acc_after": res.acc_after,
        "aux_acc_drop": res.acc_before - res.acc_after,
        "grid_steps": res.grid_steps,
        "evaluations": res.evaluations,
        "terminated_without_stop": int(res.terminated_without_stop),
        "schedule": [k_init, k_step, k_cap, tolerance],
        "dormant_inputs": int((a == 0).sum()),
    }
    return state, info


def schedule(
    dataset: str,
    k_init: float | None,
    k_step: float | None,
    k_cap: float | None,
    tolerance: float | None,
) -> tuple[float, float, float, float]:
    """The threshold schedule: given values, else the dataset's reference schedule."""
    given = (k_init, k_step, k_cap, tolerance)
    if all(v is not None for v in given):
        return tuple(float(v) for v in given)  # type: ignore[return-value,arg-type]
    if dataset not in fl.SCHEDULES:
        raise ConfigError(
            f"defense 'flain' has no threshold schedule for dataset {dataset!r} (known: "
            f"{', '.join(sorted(fl.SCHEDULES))}): set defense.k_init, k_step, k_cap and tolerance"
        )
    ref = fl.SCHEDULES[dataset]
    return tuple(float(r if v is None else v) for v, r in zip(given, ref, strict=True))  # type: ignore[return-value]


@DEFENSES.register("dormant_pruning")
def dormant_pruning(
    model: nn.Module,
    initial_state: Mapping[str, torch.Tensor],
    aux_x: torch.Tensor,
    aux_y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    dataset: str,
    tolerance: float = 0.01,
    step_fraction: float = 0.01,
    layer: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Dormant-neuron pruning baseline on the same layer and aux set as FLAIN."""
    name, lin, a, acc = _setup(model, layer, aux_x, aux_y, mean, std, device, "mean")
    w_t = lin.weight.detach().cpu().numpy().astype(np.float64)
    res = fl.dormant_prune(a, w_t, acc, tolerance=tolerance, step_fraction=step_fraction)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state[f"{name}.weight"] = torch.as_tensor(res.weight, dtype=lin.weight.dtype)
    info = {
        "layer": name,
        "pruned": res.pruned,
        "aux_acc_before": res.acc_before,
        "aux_acc_after": res.acc_after,
        "aux_acc_drop": res.acc_before - res.acc_after,
    }
    return state, info


#: Arguments every defense receives from the workflow (not from the config).
_FIXED = {"model", "initial_state", "aux_x", "aux_y", "mean", "std", "device", "dataset"}


def defense_params(node: Mapping[Any, Any]) -> dict[str, Any]:
    """The defense's parameters (``cfg.defense`` without ``name``)."""
    return {str(k): v for k, v in node.items() if k != "name"}


def check_defense(name: str, params: Mapping[str, Any], dataset: str) -> None:
    """One line for an unknown defense, an unknown parameter or an invalid value."""
    fn = DEFENSES.get(name)
    if fn is None:
        if params:
            raise ConfigError(
                f"invalid defense parameter {sorted(params)[0]!r} for defense 'none': allowed none"
            )
        return
    allowed = [p for p in inspect.signature(fn).parameters if p not in _FIXED]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"invalid defense parameter {unknown[0]!r} for defense {name!r}: allowed "
            f"{', '.join(allowed)}"
        )
    if name == "flain":
        if params.get("mode", "reference") not in fl.MODES:
            raise invalid("defense.mode", params.get("mode"), " or ".join(fl.MODES))
        if params.get("on_no_stop", "last") not in fl.ON_NO_STOP:
            raise invalid(
                "defense.on_no_stop", params.get("on_no_stop"), " or ".join(fl.ON_NO_STOP)
            )
        if params.get("activation_stat", "mean") not in fl.ACTIVATION_STATS:
            raise invalid(
                "defense.activation_stat",
                params.get("activation_stat"),
                " or ".join(fl.ACTIVATION_STATS),
            )
        k = schedule(
            dataset,
            params.get("k_init"),
            params.get("k_step"),
            params.get("k_cap"),
            params.get("tolerance"),
        )
        fl.threshold_grid(k[0], k[1], k[2])
        if k[3] < 0:
            raise invalid("defense.tolerance", k[3], "a number >= 0")
    if name == "dormant_pruning":
        sf = params.get("step_fraction", 0.01)
        if not 0 < sf <= 1:
            raise invalid("defense.step_fraction", sf, "a fraction in (0, 1]")
