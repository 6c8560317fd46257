"""Config tree <-> registries, composition, and one-line errors for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clients.attacks import ATTACKS
from clients.learners import LOCAL
from clients.query import QUERY
from fedsim.config import (
    CONF_DIR,
    clients_per_round,
    compose,
    from_run_config,
    to_run_config,
    validate,
)
from fedsim.data import DATASETS, PARTITIONERS
from fedsim.data.weak_labels import WEAK_LABELS
from fedsim.engine import ENGINES
from fedsim.errors import ConfigError
from fedsim.models import MODELS
from fedsim.registry import Registry
from fedsim.runner import prepare
from fedsim.ssfl import SSFL
from server.defenses import DEFENSES
from strategies import STRATEGIES

GROUPS = {
    "dataset": DATASETS,
    "partition": PARTITIONERS,
    "model": MODELS,
    "strategy": STRATEGIES,
    "local": LOCAL,
    "engine": ENGINES,
    "weak_labels": WEAK_LABELS,
    "attack": ATTACKS,
    "defense": DEFENSES,
    "query": QUERY,
    "ssfl": SSFL,
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_config_maps_to_a_registered_entry_and_back(group: str) -> None:
    registry = GROUPS[group]
    assert registry.kind == group
    names = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        assert node["name"] == path.stem, f"{path}: name differs from the file name"
        names[path.stem] = node
    assert sorted(names) == registry.names()


def test_registry_refuses_duplicates_and_lists_valid_names() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="duplicate"):
        reg.register("a")(2)
    with pytest.raises(ConfigError, match="valid thing names are a"):
        reg.get("b")


def test_registry_build_checks_params_and_keeps_fixed_args_out_of_config() -> None:
    reg: Registry = Registry("thing")

    @reg.register("scaled")
    def scaled(*, size: int, factor: float = 2.0, dims: tuple[int, ...] = (1,)) -> tuple:
        return size, factor, dims

    assert reg.build("scaled", {"factor": 3}, fixed={"size": 4}) == (4, 3, (1,))
    assert reg.build("scaled", {"dims": (2, 3)}, fixed={"size": 1})[2] == [2, 3]  # plain lists
    with pytest.raises(
        ConfigError,
        match=r"invalid thing parameter 'facter' for thing 'scaled': "
        r"allowed factor, dims",
    ):
        reg.build("scaled", {"facter": 3}, fixed={"size": 4})
    with pytest.raises(ConfigError, match="invalid thing parameter 'size'"):  # set by fedsim
        reg.build("scaled", {"size": 3}, fixed={"size": 4})
    with pytest.raises(ConfigError, match="invalid box.factor='big'"):
        reg.build("scaled", {"factor": "big"}, prefix="box", fixed={"size": 4})


def test_default_config_composes_and_validates() -> None:
    cfg = compose()
    validate(cfg)
    assert cfg.dataset.name == "digits" and cfg.partition.name == "dirichlet"
    assert cfg.partition.alpha == 0.5 and cfg.num_clients == 10 and cfg.strategy.name == "fedavg"


def test_issue_overrides_compose() -> None:
    cfg = compose(
        [
            "dataset=mnist",
            "dataset.root=../shared/data",
            "partition=dirichlet",
            "partition.alpha=0.1",
            "num_clients=100",
            "clients_per_round=10",
            "rounds=50",
            "model=cnn",
            "strategy=fedprox",
            "strategy.mu=0.01",
            "local.epochs=2",
            "seed=3",
        ]
    )
    validate(cfg)
    assert (cfg.dataset.name, cfg.model.name, cfg.strategy.mu, cfg.local.epochs) == (
        "mnist",
        "cnn",
        0.01,
        2,
    )
    assert clients_per_round(cfg) == 10


def test_run_config_round_trip() -> None:
    cfg = compose(["rounds=4", "strategy=fedavgm"])
    back = from_run_config(to_run_config(cfg))
    assert back == cfg
    via_overrides = from_run_config({"fedsim-config": "", "overrides": "rounds=4 strategy=fedavgm"})
    assert via_overrides.rounds == 4 and via_overrides.strategy.name == "fedavgm"


def test_clients_per_round_as_fraction() -> None:
    cfg = compose(["num_clients=20", "clients_per_round=0.25"])
    assert clients_per_round(cfg) == 5


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["dataset=nope"], "dataset.*nope"),
        (
            ["model.name=transformer"],
            "unknown model 'transformer': valid model names are cnn, cnn4conv, mlp",
        ),
        (["strategy.name=fedfoo"], "unknown strategy 'fedfoo'.*fedavg"),
        (["partition.name=zipf"], "unknown partition 'zipf'.*dirichlet"),
        (["partition.alpha=0"], r"invalid partition.alpha=0: allowed a number > 0"),
        (["partition.alpha=-1"], r"invalid partition.alpha=-1"),
        (
            ["clients_per_round=11"],
            r"invalid clients_per_round=11: allowed an integer in \[1, num_clients=10\]",
        ),
        (["clients_per_round=1.5"], r"invalid clients_per_round=1.5.*fraction in \(0, 1\]"),
        (["clients_per_round=0"], r"invalid clients_per_round=0"),
        (["rounds=0"], r"invalid rounds=0: allowed an integer >= 1"),
        (["num_clients=0"], r"invalid num_clients=0"),
        (["engine.client_gpus=1.5"], r"invalid engine.client_gpus=1.5"),
        (
            ["engine.chunks_per_actor=0"],
            r"invalid engine.chunks_per_actor=0: allowed an integer >= 1",
        ),
        (["engine.inline_bytes=-1"], r"invalid engine.inline_bytes=-1: allowed an integer >= 0"),
        (["engine.lean_ray=maybe"], r"invalid engine.lean_ray='maybe': allowed true or false"),
        (["engine.lean_agents=1"], r"invalid engine.lean_agents=1: allowed true or false"),
        (["device=tpu"], r"invalid device='tpu'"),
        (["longtail_rho=0.5"], r"invalid longtail_rho=0.5"),
        (
            ["strategy=bulyan", "strategy.num_malicious_nodes=2"],
            r"clients_per_round=10: allowed at least 11",
        ),
        (
            ["strategy=fedprox", "+strategy.muu=0.1"],
            r"invalid strategy parameter 'muu' for strategy 'fedprox': allowed mu",
        ),
        (["+local.lr_decay=0.1"], r"invalid local parameter 'lr_decay'"),
    ],
)
def test_bad_input_is_one_clear_line(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg = compose(overrides)
        cfg.output_dir = "unused"
        prepare(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_more_clients_than_samples_fails_before_any_output(tmp_path: Path) -> None:
    cfg = compose(["num_clients=5000", "clients_per_round=10", "partition=iid"])
    cfg.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="num_clients=5000.*more clients than samples"):
        prepare(cfg)
    assert not (tmp_path / "run").exists()


def test_missing_dataset_names_where_it_looked(tmp_path: Path) -> None:
    cfg = compose(["dataset=mnist", f"dataset.root={tmp_path}"])
    cfg.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=f"{tmp_path}.*download"):
        prepare(cfg)


def test_cli_overrides_are_checked_before_hydra_runs() -> None:
    from fedsim.cli import check_overrides

    with pytest.raises(ConfigError, match="Could not override 'foo'"):
        check_overrides(["foo=1"])
    with pytest.raises(ConfigError, match=r"invalid partition.alpha=0"):
        check_overrides(["-m", "seed=0,1", "partition.alpha=0"])  # a sweep is checked too
    with pytest.raises(ConfigError, match=r"invalid rounds=0"):
        check_overrides(["-m", "rounds=0,5"])  # its first value
    check_overrides(["-m", "seed=0,1,2", "--cfg", "job", "hydra.job.chdir=false", "model=cnn"])


def test_fal_group_and_query_default() -> None:
    for path in (CONF_DIR / "fal").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["name"] == path.stem
    cfg = compose()
    assert cfg.get("query") is None and cfg.fal.name == "standard"  # plain runs are not FAL
    assert compose(["query=fairfal"]).query.name == "fairfal"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=cuda"], r"device=cuda with engine.client_gpus=0: simulated clients get no GPU"),
        (
            ["device=cuda:1", "engine.client_gpus=0.5"],
            r"device=cuda:1 with engine.client_gpus=0.5: .* allowed: cuda or cuda:0$",
        ),
        (
            ["device=cuda:2", "engine.client_gpus=2"],
            r"sees only its own 2 GPU\(s\); allowed: cuda or cuda:0 to cuda:1$",
        ),
    ],
)
def test_simulation_refuses_cuda_without_a_gpu_share(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    from fedsim.runner import run

    cfg = compose(overrides)
    cfg.output_dir = str(tmp_path / "out")
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_simulation_accepts_cuda_with_a_gpu_share() -> None:
    from fedsim.config import check_simulation_device

    for overrides in (
        ["device=cuda", "engine.client_gpus=0.25"],
        ["device=cuda:1", "engine.client_gpus=2"],
        ["device=auto"],
        ["device=cpu"],
    ):
        check_simulation_device(compose(overrides))  # no error


def test_auto_device_in_a_ray_actor_follows_its_gpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """An actor Ray gave no GPU trains on the CPU even where it can see a GPU (fedsim lets Ray
    leave ``CUDA_VISIBLE_DEVICES`` alone for such actors); outside an actor, any GPU is used."""
    import sys
    import types

    import torch

    from fedsim.config import resolve_device

    state = {"actor": None, "gpus": []}
    fake = types.SimpleNamespace(
        is_initialized=lambda: True,
        get_runtime_context=lambda: types.SimpleNamespace(get_actor_id=lambda: state["actor"]),
        get_gpu_ids=lambda: state["gpus"],
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"  # the driver
    state["actor"] = "a1"
    assert resolve_device("auto") == "cpu"  # an actor without a GPU share
    state["gpus"] = [0]
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
