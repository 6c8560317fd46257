"""Aggregation strategies: Flower's, registered by name and selected by the config group
``strategy``.

Client sampling is not left to the strategies (Flower's stock ones sample node ids with an unseeded
RNG): the FL workflow samples *partition ids* with a seeded RNG and shows the strategy a
:class:`~strategies.grid_view.SampledGrid` holding just the sampled nodes, so every strategy
configures exactly those (``fraction_train=1``).
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)
from omegaconf import DictConfig, OmegaConf

from fedsim.errors import invalid
from fedsim.registries import STRATEGIES
from fedsim.schema import check_params
from strategies.state import Stateful


class StatefulFedAvgM(Stateful, FedAvgM):
    """Flower's FedAvgM; its momentum and current model are checkpointed."""

    state_attrs = ("momentum_vector", "current_arrays")


class StatefulFedAdam(Stateful, FedAdam):
    """Flower's FedAdam; its moments are checkpointed."""

    state_attrs = ("m_t", "v_t")


class StatefulFedYogi(Stateful, FedYogi):
    """Flower's FedYogi; its moments are checkpointed."""

    state_attrs = ("m_t", "v_t")


def _common() -> dict[str, Any]:
    # The workflow hands each strategy only the sampled nodes, so it takes all of them.
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }


@STRATEGIES.register("fedavg")
def fedavg() -> Strategy:
    """FedAvg (McMahan et al., 2017): example-weighted mean of client models."""
    return FedAvg(**_common())


@STRATEGIES.register("fedprox")
def fedprox(*, mu: float = 0.01) -> Strategy:
    """FedProx (Li et al., 2020): FedAvg, with clients adding ``mu/2 ||w - w_g||^2``."""
    if mu < 0:
        raise invalid("strategy.mu", mu, "a number >= 0")
    return FedProx(proximal_mu=mu, **_common())


@STRATEGIES.register("fedavgm")
def fedavgm(*, server_learning_rate: float = 1.0, server_momentum: float = 0.9) -> Strategy:
    """FedAvgM (Hsu et al., 2019): FedAvg with server momentum."""
    return StatefulFedAvgM(
        server_learning_rate=server_learning_rate, server_momentum=server_momentum, **_common()
    )


@STRATEGIES.register("fedadam")
def fedadam(
    *,
    eta: float = 0.01,
    eta_l: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.99,
    tau: float = 0.001,
) -> Strategy:
    """FedAdam (Reddi et al., 2021)."""
    return StatefulFedAdam(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau, **_common())


@STRATEGIES.register("fedyogi")
def fedyogi(
    *,
    eta: float = 0.01,
    eta_l: float = 0.0316,
    beta_1: float = 0.9,
    beta_2: float = 0.99,
    tau: float = 0.001,
) -> Strategy:
    """FedYogi (Reddi et al., 2021)."""
    return StatefulFedYogi(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau, **_common())


@STRATEGIES.register("fedmedian")
def fedmedian() -> Strategy:
    """Coordinate-wise median (Yin et al., 2018)."""
    return FedMedian(**_common())


@STRATEGIES.register("fedtrimmedavg")
def fedtrimmedavg(*, beta: float = 0.2) -> Strategy:
    """Coordinate-wise trimmed mean (Yin et al., 2018), cutting ``beta`` at each end."""
    if not 0 <= beta < 0.5:
        raise invalid("strategy.beta", beta, "a fraction in [0, 0.5)")
    return FedTrimmedAvg(beta=beta, **_common())


@STRATEGIES.register("krum", min_replies="num_malicious_nodes + 3")
def krum(*, num_malicious_nodes: int = 0) -> Strategy:
    """Krum (Blanchard et al., 2017)."""
    return Krum(num_malicious_nodes=num_malicious_nodes, **_common())


@STRATEGIES.register("multikrum", min_replies="num_malicious_nodes + 3")
def multikrum(*, num_malicious_nodes: int = 0, num_nodes_to_select: int = 5) -> Strategy:
    """Multi-Krum (Blanchard et al., 2017): mean of the ``num_nodes_to_select`` best by Krum."""
    return MultiKrum(
        num_malicious_nodes=num_malicious_nodes,
        num_nodes_to_select=num_nodes_to_select,
        **_common(),
    )


@STRATEGIES.register("bulyan", min_replies="4 * num_malicious_nodes + 3")
def bulyan(*, num_malicious_nodes: int = 0) -> Strategy:
    """Bulyan (El Mhamdi et al., 2018); needs at least ``4 f + 3`` replies."""
    return Bulyan(num_malicious_nodes=num_malicious_nodes, **_common())


def strategy_params(cfg: DictConfig) -> dict[str, Any]:
    """The strategy's parameters from ``cfg.strategy`` (all keys but ``name``)."""
    params = OmegaConf.to_container(cfg.strategy, resolve=True)
    assert isinstance(params, dict)
    return {str(k): v for k, v in params.items() if k != "name"}


def _fixed(cfg: DictConfig) -> dict[str, Any]:
    """The arguments fedsim sets on a strategy (not config keys)."""
    if STRATEGIES.meta(str(cfg.strategy.name)).get("needs_clients_per_round"):
        from fedsim.config import clients_per_round

        return {"num_sampled_clients": clients_per_round(cfg)}
    return {}


def check_strategy_params(cfg: DictConfig) -> None:
    """Refuse unknown strategy parameters, values of the wrong type (the factory's keyword
    signature is the group's schema) and too few clients for a robust rule."""
    from fedsim.config import clients_per_round

    name = str(cfg.strategy.name)
    params = strategy_params(cfg)
    exclude = tuple(_fixed(cfg))
    check_params(
        "strategy", STRATEGIES.get(name), params, what=f"strategy {name!r}", exclude=exclude
    )
    f = int(params.get("num_malicious_nodes", 0))
    if f < 0:
        raise invalid("strategy.num_malicious_nodes", f, "an integer >= 0")
    need = {"krum": f + 3, "multikrum": f + 3, "bulyan": 4 * f + 3}.get(name)
    k = clients_per_round(cfg)
    if need is not None and k < need:
        raise invalid("clients_per_round", k, f"at least {need} for strategy {name!r} with f={f}")


def build_strategy(cfg: DictConfig) -> Strategy:
    """Instantiate the strategy selected by ``cfg.strategy`` (its parameters checked first)."""
    check_strategy_params(cfg)
    name = str(cfg.strategy.name)
    strategy: Strategy = STRATEGIES.build(
        name, strategy_params(cfg), prefix="strategy", what=f"strategy {name!r}", fixed=_fixed(cfg)
    )
    return strategy


from strategies import robust as _robust  # noqa: E402,F401  (registers fedsim's robust rules)
