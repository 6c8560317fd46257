"""The declared schema of fedsim's top-level keys and of the ``faults`` node.

Each key is declared once here: its type, range or choices (:func:`fedsim.schema.spec`), its
default and a one-line meaning. :func:`fedsim.config.validate` checks a config against it before
any work starts; :func:`readme_table` prints the README's table of top-level keys (a test keeps
the README and ``conf/config.yaml``'s defaults equal to it). Plugin groups declare their own
schema on their entries (a learner's or an attack's dataclass fields, a strategy's keyword
parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fedsim.schema import spec, table

#: What a round does when fewer than ``min_clients`` replies are usable.
TOO_FEW_REPLIES = ("retry", "stop")
#: The fault-injection lists of partition ids (``faults.*``).
FAULT_LISTS = ("raise_clients", "nan_clients", "bad_shape_clients", "slow_clients")


@dataclass(kw_only=True)
class RunSchema:
    """fedsim's top-level keys (``conf/config.yaml``)."""

    seed: Annotated[
        int,
        spec(
            low=0,
            doc="seeds the partition, the model's initialisation, client sampling and local training",
        ),
    ] = 0
    num_clients: Annotated[int, spec(low=1, doc="number of simulated clients (partitions)")] = 10
    clients_per_round: Annotated[
        int | float,
        spec(
            allowed="an integer in [1, num_clients] or a fraction in (0, 1]",
            doc="clients sampled per round: a count, or a fraction of `num_clients`",
        ),
    ] = 10
    rounds: Annotated[int, spec(low=1, doc="FL rounds (FAL runs: rounds per stage)")] = 20
    eval_every: Annotated[
        int,
        spec(
            low=1,
            doc="centralized evaluation on the test split every k rounds (and after the last)",
        ),
    ] = 1
    eval_batch_size: Annotated[int, spec(low=1, doc="batch size of the server's evaluation")] = 1024
    federated_eval_every: Annotated[
        int,
        spec(
            low=0, doc="clients evaluate the global model on their own data every k rounds (0: off)"
        ),
    ] = 0
    min_clients: Annotated[
        int,
        spec(
            low=1, doc="a round needs at least this many usable replies (else: `too_few_replies`)"
        ),
    ] = 1
    too_few_replies: Annotated[
        str,
        spec(
            choices=TOO_FEW_REPLIES,
            doc="retry: run the round again with a fresh seeded sample; stop: stop the run",
        ),
    ] = "retry"
    round_retries: Annotated[
        int | None,
        spec(low=0, doc="retries of a round before the run stops (`too_few_replies=retry`)"),
    ] = 2
    round_timeout: Annotated[
        float, spec(low=0, low_open=True, doc="seconds the server waits for a round's replies")
    ] = 3600
    checkpoint_every: Annotated[
        int,
        spec(
            low=0,
            doc="save the global model every k rounds (always after the last; 0: only the last)",
        ),
    ] = 5
    resume: Annotated[
        str | None, spec(doc="a run directory to continue from its last checkpoint")
    ] = None
    max_train_samples: Annotated[
        int | None,
        spec(low=1, doc="keep a seeded random subset of the train split (null: all)"),
    ] = None
    longtail_rho: Annotated[
        float,
        spec(
            low=1,
            doc="long-tail profile on the train split before partitioning (class c keeps `n_max·rho^(-c/(C-1))`; 1: off)",
        ),
    ] = 1.0
    device: Annotated[
        str, spec(allowed="auto, cpu, cuda or cuda:N", doc="`auto`: CUDA when present")
    ] = "auto"
    progress: Annotated[bool, spec(doc="per-round progress lines")] = True
    verbose: Annotated[bool, spec(doc="Flower/Ray logs at INFO level")] = False
    tensorboard: Annotated[bool, spec(doc="TensorBoard events")] = True
    output_dir: Annotated[
        str | None, spec(doc="the run directory (the CLI sets Hydra's run dir)")
    ] = None


@dataclass(kw_only=True)
class FaultsSchema:
    """Fault injection (``faults.*``): partition ids that misbehave in their train replies."""

    raise_clients: Annotated[list[int], spec(low=0, doc="the ClientApp raises")] = field(
        default_factory=list
    )
    nan_clients: Annotated[list[int], spec(low=0, doc="the update holds NaN")] = field(
        default_factory=list
    )
    bad_shape_clients: Annotated[list[int], spec(low=0, doc="the update has a wrong shape")] = (
        field(default_factory=list)
    )
    slow_clients: Annotated[list[int], spec(low=0, doc="the reply comes after `slow_seconds`")] = (
        field(default_factory=list)
    )
    slow_seconds: Annotated[float, spec(low=0, doc="a slow client's delay (s)")] = 30.0
    rounds: Annotated[list[int], spec(low=1, doc="the rounds with faults (empty: every round)")] = (
        field(default_factory=list)
    )


def readme_table() -> str:
    """The README's table of top-level keys, as Markdown."""
    lines = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for key, default, allowed, doc in table(RunSchema):
        lines.append(f"| `{key}` | {default} | {allowed} | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m fedsim.config_schema: print the README table
    print(readme_table())
