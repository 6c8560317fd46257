"""Workflow components: the features of a run (backdoor metrics, FLTrust's server data, the SSFL
server step, post-training defenses, FAL's stages) as plug-ins of the one round loop.

A component is a class registered in :data:`COMPONENTS`. It declares, on itself:

- :meth:`Component.wanted`: whether a config turns it on (any number can be on at once);
- :meth:`Component.check`: its config checks and the combinations it refuses, with one line;
- :meth:`Component.check_data`: checks against the loaded data, still before any work;
- :attr:`Component.promises` / :attr:`Component.summary_promises`: the metric keys it adds to
  evaluated rounds in ``metrics.jsonl`` and to ``summary.json``;
- :attr:`Component.needs`: what it needs from the server (``"holdout"``: the aux/root sets held
  out of the test split);
- :meth:`Component.state_dict` / :meth:`Component.load_state_dict`: its checkpointed state.

The hooks (all optional) are called by :class:`~server.workflow.Workflow` in a fixed order; see
its docstring for one round's flow. At most one component may drive stages
(:attr:`Component.drives_stages`); the others see every stage's rounds as ordinary rounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from fedsim.registry import Registry

if TYPE_CHECKING:
    from fedsim.federation import Federation
    from fedsim.models import ClassifierModel
    from server.workflow import Workflow

COMPONENTS: Registry[type[Component]] = Registry("component")


class Component:
    """Base class of a workflow component; every hook defaults to doing nothing."""

    #: registry name
    name: ClassVar[str] = ""
    #: keys this component adds to every evaluated round's record
    promises: ClassVar[tuple[str, ...]] = ()
    #: keys this component adds to the run summary
    summary_promises: ClassVar[tuple[str, ...]] = ()
    #: what it needs from the server ("holdout": aux/root sets held out of the test split)
    needs: ClassVar[frozenset[str]] = frozenset()
    #: whether this component splits the run into stages (FAL)
    drives_stages: ClassVar[bool] = False
    #: hooks run in increasing order (ties: by name)
    order: ClassVar[int] = 50

    # ---- declarations -------------------------------------------------------------------------
    @classmethod
    def wanted(cls, cfg: DictConfig) -> bool:
        """Whether ``cfg`` turns this component on."""
        return False

    @classmethod
    def promised(cls, cfg: DictConfig) -> tuple[str, ...]:
        """The keys of :attr:`promises` that ``cfg`` makes it add (default: all)."""
        return cls.promises

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        """Refuse a bad or conflicting config with one :class:`~fedsim.errors.ConfigError`."""

    @classmethod
    def check_data(cls, cfg: DictConfig, federation: Federation) -> None:
        """Refuse a config the loaded data and partition cannot serve (before any work)."""

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (plain Python and numpy values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (on resume)."""

    # ---- setup --------------------------------------------------------------------------------
    def setup(self, wf: Workflow) -> None:
        """Once, after the federation is built and before the initial model."""

    def on_initial_model(self, wf: Workflow, model: ClassifierModel) -> None:
        """Once per fresh model (not on resume): e.g. a warm start on server data, in place."""

    def on_nodes(self, wf: Workflow, grid: Grid, *, resumed: bool) -> None:
        """Once the nodes are known (``wf.node_of``), before the first round."""

    def wrap_strategy(self, wf: Workflow, strategy: Strategy) -> Strategy:
        """The strategy to use (e.g. with server data handed to it)."""
        return strategy

    # ---- stages (a stage driver only) ------------------------------------------------------------
    def num_stages(self, wf: Workflow) -> int:
        """How many stages of ``cfg.rounds`` rounds the run has."""
        return 1

    def on_stage_start(self, wf: Workflow, stage: int, arrays: ArrayRecord | None) -> ArrayRecord:
        """The global model a stage starts from (called before its first round)."""
        assert arrays is not None
        return arrays

    def on_stage_end(
        self, wf: Workflow, grid: Grid, stage: int, arrays: ArrayRecord
    ) -> dict[str, Any]:
        """After a stage's last round: the stage's record (a ``metrics.jsonl`` line)."""
        return {}

    # ---- rounds -------------------------------------------------------------------------------
    def sample(self, wf: Workflow, server_round: int, k: int, attempt: int) -> list[int] | None:
        """The partitions that train (``None``: the seeded default)."""
        return None

    def trainers(self, wf: Workflow, sampled: list[int]) -> list[int]:
        """Of the sampled partitions, those that are sent a train message."""
        return sampled

    def train_config(self, wf: Workflow, server_round: int) -> dict[str, Any]:
        """Extra config entries of this round's train messages."""
        return {}

    def round_strategy(self, wf: Workflow, strategy: Strategy, arrays: ArrayRecord) -> Strategy:
        """The strategy for one round (a per-round wrapper, e.g. a reply filter)."""
        return strategy

    def after_aggregate(
        self, wf: Workflow, server_round: int, arrays: ArrayRecord, metrics: dict[str, Any]
    ) -> ArrayRecord:
        """The aggregated model, possibly changed (a server step); may add to ``metrics``."""
        return arrays

    def round_record(
        self, wf: Workflow, server_round: int, train_metrics: dict[str, Any]
    ) -> dict[str, Any]:
        """Extra entries of every round's record."""
        return {}

    def evaluate(
        self, wf: Workflow, server_round: int, model: ClassifierModel, base: dict[str, Any]
    ) -> dict[str, Any]:
        """Extra entries of an evaluated round (``base``: the centralized loss/accuracy)."""
        return {}

    def on_round_end(self, wf: Workflow, server_round: int, record: dict[str, Any]) -> None:
        """After a round's record is written."""

    # ---- the end ------------------------------------------------------------------------------
    def summary(self, wf: Workflow, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra summary entries, from the round records (stage records excluded)."""
        return {}

    def on_run_end(self, wf: Workflow, summary: dict[str, Any]) -> dict[str, Any]:
        """After training: post-training steps (a defense); extra summary entries."""
        return {}


def register(cls: type[Component]) -> type[Component]:
    """Class decorator: register a component under its ``name`` (duplicates refused)."""
    return COMPONENTS.register(cls.name)(cls)


def wanted_components(cfg: DictConfig) -> list[type[Component]]:
    """The component classes ``cfg`` turns on, in registration order."""
    found = [COMPONENTS.get(n) for n in COMPONENTS.names()]
    return sorted((c for c in found if c.wanted(cfg)), key=lambda c: (c.order, c.name))
