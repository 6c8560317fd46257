"""Bad input gets one clear line, before any work: a parametrized sweep over every config group.

Each case is a set of overrides as a user types them after ``fedsim run``; :func:`validate` (what
the CLI runs before it writes anything) must raise :class:`ConfigError` with one line that names
the key (or the unknown name) and what is allowed. A few cases also go through the CLI: exit
status 2, one line on stderr, no run directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.config import compose, validate
from fedsim.errors import ConfigError

#: (overrides, what the line must name, part of what it must say is allowed)
CASES = [
    ("dataset=nosuch", "Could not find 'dataset/nosuch'", "cifar10 cifar100"),
    ("dataset.root=5", "invalid dataset.root=", "a string"),
    ("dataset.download=maybe", "invalid dataset.download=", "true or false"),
    ("partition=nosuch", "Could not find 'partition/nosuch'", "dir_balance dirichlet"),
    ("partition.alpha=abc", "invalid partition.alpha=", "a number"),
    ("partition.alpha=0", "invalid partition.alpha=", "a number > 0"),
    ("partition.min_partition_size=-1", "invalid partition.min_partition_size=", "an integer >= 0"),
    (
        "+partition.bogus=1",
        "parameter 'bogus' for partitioner 'dirichlet'",
        "alpha, min_partition_size",
    ),
    (
        "partition=shards partition.classes_per_client=0",
        "invalid partition.classes_per_client=",
        "an integer >= 1",
    ),
    (
        "partition=shards partition.classes_per_client=two",
        "invalid partition.classes_per_client=",
        "an integer",
    ),
    ("partition=dir_balance partition.beta=abc", "invalid partition.beta=", "a number"),
    ("model=nosuch", "Could not find 'model/nosuch'", "cnn cnn4conv"),
    ("model.params.hidden=abc", "invalid model.params.hidden=", "a list of integers"),
    ("+model.params.bogus=1", "parameter 'bogus' for model 'mlp'", "hidden, dropout"),
    ("+model.params.dropout=abc", "invalid model.params.dropout=", "a number"),
    ("strategy=nosuch", "Could not find 'strategy/nosuch'", "bulyan dp_fixed_clipping"),
    ("strategy=fedprox strategy.mu=abc", "invalid strategy.mu=", "a number"),
    ("strategy=fedprox strategy.mu=-1", "invalid strategy.mu=", "a number >= 0"),
    ("strategy=fedprox +strategy.muu=1", "parameter 'muu' for strategy 'fedprox'", "mu"),
    (
        "strategy=krum strategy.num_malicious_nodes=abc",
        "invalid strategy.num_malicious_nodes=",
        "an integer",
    ),
    ("strategy=fedtrimmedavg strategy.beta=abc", "invalid strategy.beta=", "a number"),
    (
        "strategy=fedavgm strategy.server_momentum=abc",
        "invalid strategy.server_momentum=",
        "a number",
    ),
    ("strategy=norm_clipping strategy.clip_norm=-1", "invalid strategy.clip_norm=", "a number > 0"),
    ("strategy=rlr strategy.threshold=abc", "invalid strategy.threshold=", "a number"),
    ("local=nosuch", "Could not find 'local/nosuch'", "bldr cc"),
    ("local.optimizer=rmsprop", "invalid local.optimizer=", "sgd or adam"),
    ("local.epochs=0", "invalid local.epochs=", "an integer >= 1"),
    ("local.epochs=1.5", "invalid local.epochs=", "an integer >= 1"),
    ("local.batch_size=abc", "invalid local.batch_size=", "an integer >= 1"),
    ("local.lr=0", "invalid local.lr=", "a number > 0"),
    ("local.lr=abc", "invalid local.lr=", "a number > 0"),
    ("local.momentum=-1", "invalid local.momentum=", "a number >= 0"),
    ("local.weight_decay=abc", "invalid local.weight_decay=", "a number >= 0"),
    ("+local.bogus=1", "parameter 'bogus' for local method 'supervised'", "epochs, batch_size, "),
    ("local=gce local.q=abc", "invalid local.q=", "a number"),
    ("local=fixmatch local.threshold=abc", "invalid local.threshold=", "a number"),
    ("weak_labels=nosuch", "Could not find 'weak_labels/nosuch'", "clean noisy"),
    ("weak_labels=noisy weak_labels.rate=abc", "invalid weak_labels.rate=", "a number in [0, 1]"),
    ("weak_labels=noisy weak_labels.rate=2", "invalid weak_labels.rate=", "a number in [0, 1]"),
    (
        "weak_labels=noisy weak_labels.noise_type=weird",
        "invalid weak_labels.noise_type=",
        "symmetric, pair, asymmetric,",
    ),
    ("weak_labels=partial weak_labels.q=abc", "invalid weak_labels.q=", "a number in [0, 1]"),
    (
        "weak_labels=semi weak_labels.labeled_ratio=abc",
        "invalid weak_labels.labeled_ratio=",
        "a number in [0, 1]",
    ),
    (
        "weak_labels=partial local=supervised",
        "'supervised' cannot train on 'partial' labels",
        "clean, noisy, semi",
    ),
    ("ssfl=nosuch", "Could not find 'ssfl/nosuch'", "labels_at_client labels_at_server"),
    (
        "ssfl=labels_at_client ssfl.labeled_ratio=abc",
        "invalid ssfl.labeled_ratio=",
        "a number in (0, 1]",
    ),
    (
        "ssfl=labels_at_client ssfl.labeled_ratio=2",
        "invalid ssfl.labeled_ratio=",
        "a number in (0, 1]",
    ),
    (
        "ssfl=partial_client ssfl.labeled_clients=abc",
        "invalid ssfl.labeled_clients=",
        "an integer in [1, num_client",
    ),
    ("engine=nosuch", "Could not find 'engine/nosuch'", "fast flower"),
    ("engine.client_cpus=0", "invalid engine.client_cpus=", "a number > 0"),
    ("engine.client_gpus=abc", "invalid engine.client_gpus=", "a number"),
    ("engine.lean_ray=maybe", "invalid engine.lean_ray=", "true or false"),
    ("engine.num_cpus=abc", "invalid engine.num_cpus=", "an integer >= 1"),
    ("attack=nosuch", "Could not find 'attack/nosuch'", "cba dba"),
    (
        "attack=cba attack.trigger_pos=5",
        "invalid attack.trigger_pos=",
        "a pair of integers >= 0 [a,",
    ),
    (
        "attack=cba attack.trigger_pos=[1,2,3]",
        "invalid attack.trigger_pos=",
        "a pair of integers >= 0 [a,",
    ),
    (
        "attack=cba attack.trigger_pos=[a,b]",
        "invalid attack.trigger_pos=",
        "a pair of integers >= 0 [a,",
    ),
    ("attack=cba attack.mcr=abc", "invalid attack.mcr=", "a number in [0, 1)"),
    ("attack=cba attack.mcr=1.5", "invalid attack.mcr=", "a number in [0, 1)"),
    ("attack=cba attack.per_round=never", "invalid attack.per_round=", "exact or sampled"),
    ("attack=cba attack.malicious_ids=last", "invalid attack.malicious_ids=", "first or seeded"),
    ("attack=cba attack.source=abc", "invalid attack.source=", "a list of integers >= 0 or n"),
    ("attack=cba attack.target=-1", "invalid attack.target=", "an integer >= 0"),
    ("attack=cba attack.trigger=star", "invalid attack.trigger=", "square or plus"),
    ("attack=cba attack.trigger_size=0", "invalid attack.trigger_size=", "an integer >= 1"),
    (
        "attack=cba attack.trigger_value=300",
        "invalid attack.trigger_value=",
        "an integer in [0, 255]",
    ),
    ("attack=cba attack.poison_frac=abc", "invalid attack.poison_frac=", "a number in [0, 1]"),
    ("attack=cba attack.start_round=0", "invalid attack.start_round=", "an integer >= 1"),
    ("attack=cba +attack.bogus=1", "parameter 'bogus' for attack 'cba'", "mcr, malicious_ids, "),
    ("attack=dba attack.num_parts=abc", "invalid attack.num_parts=", "an integer"),
    ("attack=model_replacement attack.scale=abc", "invalid attack.scale=", "a number or null"),
    ("defense=nosuch", "Could not find 'defense/nosuch'", "dormant_pruning flain"),
    ("defense=flain defense.mode=weird", "invalid defense.mode=", "reference or rollback"),
    (
        "defense=flain +defense.bogus=1",
        "parameter 'bogus' for defense 'flain'",
        "mode, k_init, k_step",
    ),
    ("query=nosuch", "Could not find 'query/nosuch'", "badge bual coreset e2oal eaoa"),
    ("query=lfosa open_set=nosuch", "Could not find 'open_set/nosuch'", "class_split"),
    ("query=entropy fal.end_ratio=2", "invalid fal.end_ratio=", "a number in (0, 1]"),
    ("query=entropy fal.initial_ratio=abc", "invalid fal.initial_ratio=", "a number in (0, 1]"),
    ("query=entropy fal.reset=weird", "invalid fal.reset=", "random, continue"),
    (
        "query=entropy +query.bogus=1",
        "parameter 'bogus' for query strategy 'entropy'",
        "model_mode",
    ),
    (
        "query=entropy query.model_mode=weird",
        "invalid query.model_mode=",
        "global, local_only, last_loc",
    ),
    ("seed=-1", "invalid seed=", "an integer >= 0"),
    ("seed=abc", "invalid seed=", "an integer >= 0"),
    ("seed=1.5", "invalid seed=", "an integer >= 0"),
    ("num_clients=0", "invalid num_clients=", "an integer >= 1"),
    ("num_clients=abc", "invalid num_clients=", "an integer >= 1"),
    ("clients_per_round=0", "invalid clients_per_round=", "an integer in [1, num_client"),
    ("clients_per_round=abc", "invalid clients_per_round=", "an integer in [1, num_client"),
    ("clients_per_round=1.5", "invalid clients_per_round=", "an integer in [1, num_client"),
    ("clients_per_round=11", "invalid clients_per_round=", "an integer in [1, num_client"),
    ("rounds=0", "invalid rounds=", "an integer >= 1"),
    ("rounds=abc", "invalid rounds=", "an integer >= 1"),
    ("eval_every=0", "invalid eval_every=", "an integer >= 1"),
    ("eval_batch_size=0", "invalid eval_batch_size=", "an integer >= 1"),
    ("federated_eval_every=-1", "invalid federated_eval_every=", "an integer >= 0"),
    ("min_clients=0", "invalid min_clients=", "an integer >= 1"),
    ("min_clients=20", "invalid min_clients=", "at most clients_per_round=10"),
    ("too_few_replies=again", "invalid too_few_replies=", "retry or stop"),
    ("round_retries=-1", "invalid round_retries=", "an integer >= 0 or null"),
    ("round_timeout=0", "invalid round_timeout=", "a number > 0"),
    ("round_timeout=abc", "invalid round_timeout=", "a number > 0"),
    ("checkpoint_every=-1", "invalid checkpoint_every=", "an integer >= 0"),
    ("max_train_samples=0", "invalid max_train_samples=", "an integer >= 1 or null"),
    ("longtail_rho=0.5", "invalid longtail_rho=", "a number >= 1"),
    ("longtail_rho=abc", "invalid longtail_rho=", "a number >= 1"),
    ("device=tpu", "invalid device=", "auto, cpu, cuda or cuda:N"),
    ("device=cuda:x", "invalid device=", "auto, cpu, cuda or cuda:N"),
    ("progress=maybe", "invalid progress=", "true or false"),
    ("verbose=2", "invalid verbose=", "true or false"),
    ("tensorboard=abc", "invalid tensorboard=", "true or false"),
    ("resume=5", "invalid resume=", "a string or null"),
    ("faults.raise_clients=[99]", "invalid faults.raise_clients=", "partition ids in [0, 9]"),
    ("faults.raise_clients=abc", "invalid faults.raise_clients=", "a list of integers >= 0"),
    ("faults.nan_clients=[a]", "invalid faults.nan_clients=", "a list of integers >= 0"),
    ("faults.rounds=[0]", "invalid faults.rounds=", "a list of integers >= 1"),
    ("faults.slow_seconds=-1", "invalid faults.slow_seconds=", "a number >= 0"),
    ("faults.slow_seconds=abc", "invalid faults.slow_seconds=", "a number >= 0"),
    ("backdoor_eval.aux_per_class=-1", "invalid backdoor_eval.aux_per_class=", "an integer >= 0"),
    ("backdoor_eval.aux_source=weird", "invalid backdoor_eval.aux_source=", "holdout or test_head"),
]


@pytest.mark.parametrize(("overrides", "names", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_key_and_the_allowed_values(
    overrides: str, names: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides.split()))
    message = str(info.value)
    assert "\n" not in message
    assert names in message, message
    assert allowed in message, message


def test_every_group_has_bad_input_cases() -> None:
    groups = {o.lstrip("+").split("=")[0].split(".")[0] for c in CASES for o in c[0].split()}
    expected = {"dataset", "partition", "model", "strategy", "local", "weak_labels", "ssfl"}
    expected |= {"engine", "attack", "defense", "query", "fal", "faults", "backdoor_eval"}
    expected |= {"seed", "num_clients", "clients_per_round", "rounds", "device"}
    assert expected <= groups


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["attack=cba", "attack.trigger_pos=5"],
            "fedsim: error: invalid attack.trigger_pos=5: allowed a pair of integers",
        ),
        pytest.param(  # each CLI call is a process (4 s); the messages are checked in-process too
            ["local.optimizer=rmsprop"],
            "fedsim: error: invalid local.optimizer='rmsprop': allowed sgd or adam",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["strategy=fedprox", "strategy.mu=abc"],
            "fedsim: error: invalid strategy.mu='abc'",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_the_cli_exits_2_with_the_one_line_before_any_work(
    tmp_path: Path, overrides: list[str], line: str
) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", f"output_dir={run_dir}", *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = [s for s in out.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith(line), out.stderr
    assert not run_dir.exists()
