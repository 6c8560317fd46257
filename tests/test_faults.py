"""Faults: clients that raise, malformed updates, too few replies (retry or stop), bad config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.faults import corrupt, fault_for
from fedsim import constants as C
from fedsim.checkpoint import latest_checkpoint
from fedsim.config import compose, validate
from fedsim.errors import ConfigError, RunStopped
from fedsim.outputs import read_metrics
from fedsim.runner import resume_config, run
from fedsim.seeding import sample_partitions
from server.validation import train_reply_problem


def _cfg(tmp: Path, name: str, overrides: list[str]):  # type: ignore[no-untyped-def]
    cfg = compose(["progress=false", "tensorboard=false", *overrides])
    cfg.output_dir = str(tmp / name)
    return cfg


def test_fault_for_picks_clients_and_rounds() -> None:
    faults = {"raise_clients": [1], "nan_clients": [2], "slow_clients": [], "rounds": [2, 3]}
    assert fault_for(faults, 1, 2) == "raise"
    assert fault_for(faults, 2, 3) == "nan"
    assert fault_for(faults, 1, 1) is None  # not a faulty round
    assert fault_for(faults, 0, 2) is None
    assert fault_for({"bad_shape_clients": [0], "rounds": []}, 0, 7) == "bad_shape"  # every round
    assert fault_for(None, 0, 1) is None


class _Reply:
    """What validation reads of a reply Message: its error and its content."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

        self.error = None
        self.content = RecordDict(
            {
                C.ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                C.METRICS_KEY: MetricRecord({C.NUM_EXAMPLES_KEY: 10}),
            }
        )

    def has_error(self) -> bool:
        return False


def test_corrupted_updates_are_refused_by_validation() -> None:
    from flwr.app import Array, ArrayRecord

    model = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    ref = ArrayRecord({k: Array(v) for k, v in model.items()})
    nan = corrupt(model, "nan")
    assert np.isnan(nan["w"]).sum() == 1 and not np.isnan(model["w"]).any()
    assert "NaN" in str(train_reply_problem(_Reply(nan), ref))  # type: ignore[arg-type]
    bad = corrupt(model, "bad_shape")
    assert len(bad) == 1 and train_reply_problem(_Reply(bad), ref) is not None  # type: ignore[arg-type]
    assert train_reply_problem(_Reply(model), ref) is None  # type: ignore[arg-type]


def test_bad_fault_and_round_policy_config_is_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"faults.nan_clients=\[10\]: allowed partition ids in \[0, 9\]"
    ):
        validate(compose(["faults.nan_clients=[10]"]))
    with pytest.raises(ConfigError, match="too_few_replies='again': allowed retry or stop"):
        validate(compose(["too_few_replies=again"]))
    with pytest.raises(ConfigError, match="min_clients=4: allowed at most clients_per_round=3"):
        validate(compose(["clients_per_round=3", "min_clients=4"]))


def test_failing_clients_are_counted_and_never_reach_the_model(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "f",
        [
            "rounds=3",
            "num_clients=5",
            "clients_per_round=5",
            "faults.raise_clients=[1]",
            "faults.nan_clients=[2]",
            "faults.bad_shape_clients=[3]",
            "faults.rounds=[2]",
        ],
    )
    summary = run(cfg)
    metrics = read_metrics(Path(cfg.output_dir))
    assert [r[C.FAILURES] for r in metrics] == [0, 3, 0]
    failed = {f["client"]: f["reason"] for f in metrics[1][C.FAILED_CLIENTS]}
    assert sorted(failed) == [1, 2, 3]
    assert "InjectedFault" in failed[1] and "NaN" in failed[2]
    assert all(np.isfinite(r[C.EVAL_LOSS]) for r in metrics)  # the NaN update was not averaged
    assert summary[C.TOTAL_FAILURES] == 3 and summary[C.ROUNDS_DONE] == 3


def test_too_few_replies_retries_with_a_fresh_sample(tmp_path: Path) -> None:
    first = sample_partitions(0, 2, 6, 3)
    second = sample_partitions(0, 2, 6, 3, attempt=1)
    assert first != second
    bad = [p for p in first if p not in second][:2]  # fail attempt 0, spare attempt 1
    cfg = _cfg(
        tmp_path,
        "r",
        [
            "rounds=2",
            "num_clients=6",
            "clients_per_round=3",
            "min_clients=2",
            f"faults.raise_clients={bad}",
            "faults.rounds=[2]",
        ],
    )
    run(cfg)
    r2 = read_metrics(Path(cfg.output_dir))[1]
    assert r2[C.RETRIES] == 1 and r2[C.CLIENTS_SAMPLED] == second
    assert r2[C.FAILURES] == len(bad)


def test_too_few_replies_stops_clearly_and_resume_continues(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "s",
        [
            "rounds=3",
            "num_clients=4",
            "clients_per_round=4",
            "min_clients=2",
            "too_few_replies=stop",
            "checkpoint_every=0",
            "faults.raise_clients=[0,1,2]",
            "faults.rounds=[2]",
        ],
    )
    with pytest.raises(RunStopped, match=r"round 2: 1 of 4 sampled clients replied usably"):
        run(cfg)
    out = Path(cfg.output_dir)
    assert (out / C.STOPPED_FILE).exists() and not (out / C.SUMMARY_FILE).exists()
    assert [r[C.ROUND] for r in read_metrics(out)] == [1]
    assert latest_checkpoint(out) is not None  # round 1 saved although checkpoint_every=0
    from omegaconf import OmegaConf

    summary = run(resume_config(out, OmegaConf.create({"faults": {"raise_clients": []}})))
    assert summary[C.ROUNDS_DONE] == 3 and not (out / C.STOPPED_FILE).exists()


def test_aggregated_integer_buffers_keep_their_dtype() -> None:
    """FedAvg returns BatchNorm's num_batches_tracked as a float mean; the workflow casts it back,
    or the next round's reply check would refuse every client."""
    from flwr.app import Array, ArrayRecord

    from server.workflow import keep_dtypes

    ref = ArrayRecord(
        {"w": Array(np.ones(3, np.float32)), "bn.num_batches_tracked": Array(np.array(4))}
    )
    new = ArrayRecord(
        {"w": Array(np.full(3, 2.0, np.float32)), "bn.num_batches_tracked": Array(np.array(5.5))}
    )
    fixed = keep_dtypes(new, ref)
    assert fixed["bn.num_batches_tracked"].numpy().dtype == np.int64
    assert fixed["bn.num_batches_tracked"].numpy() == 5
    assert np.array_equal(fixed["w"].numpy(), np.full(3, 2.0, np.float32))
    assert keep_dtypes(ref, ref) is ref
