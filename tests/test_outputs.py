"""Tests of run outputs (metrics, TensorBoard, summary, plot) and ``fedsim report``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.constants import (
    ACCURACY_PNG,
    BEST_ACCURACY,
    CONFIG_FILE,
    EVAL_ACCURACY,
    EVAL_LOSS,
    FAILURES,
    FINAL_ACCURACY,
    FINAL_LOSS,
    METRICS_FILE,
    ROUND,
    ROUNDS_DONE,
    SEED,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    TEST_AT_BEST_VAL,
    TOTAL_FAILURES,
    TOTAL_SECONDS,
    TRAIN_LOSS,
    WALL_SECONDS,
)
from fedsim.errors import ConfigError
from fedsim.outputs import (
    RunWriter,
    plot_accuracy,
    read_metrics,
    write_json_atomic,
    write_summary,
    write_text_atomic,
)
from fedsim.report import group_runs, load_run, main_report, report_table


def _record(rnd: int, acc: float | None = None, **more: object) -> dict:
    rec: dict = {ROUND: rnd, TRAIN_LOSS: 1.0 / rnd, FAILURES: 0, WALL_SECONDS: 2.0 * rnd}
    if acc is not None:
        rec[EVAL_ACCURACY] = acc
        rec[EVAL_LOSS] = 1.0 - acc
    rec.update(more)
    return rec


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_writes_round_trip_and_leave_no_temp_files(tmp_path: Path) -> None:
    obj = {"b": [1, 2.5, None], "a": {"nested": "x"}}
    write_json_atomic(tmp_path / "sub" / "o.json", obj)
    write_json_atomic(tmp_path / "sub" / "o.json", obj)  # overwrite in place
    write_text_atomic(tmp_path / "t.txt", "hello\nworld")
    assert json.loads((tmp_path / "sub" / "o.json").read_text()) == obj
    assert (tmp_path / "t.txt").read_text() == "hello\nworld"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["o.json", "sub", "t.txt"]


# --- RunWriter ----------------------------------------------------------------------------------


def test_run_writer_logs_lines_and_tensorboard(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunWriter(run).open() as writer:
        for rnd in (1, 2, 3):
            writer.log_round(_record(rnd, 0.5 + 0.1 * rnd, note="text", bad=float("nan")))
    lines = (run / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(line)[ROUND] for line in lines] == [1, 2, 3]
    assert read_metrics(run)[2][EVAL_ACCURACY] == pytest.approx(0.8)
    events = list((run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_run_writer_resume_keeps_rounds_up_to_checkpoint(tmp_path: Path) -> None:
    with RunWriter(tmp_path, tensorboard=False).open() as writer:
        for rnd in (1, 2, 3, 4):
            writer.log_round(_record(rnd, 0.5))
    with RunWriter(tmp_path, tensorboard=False).open(resume_after_round=2) as writer:
        assert [r[ROUND] for r in read_metrics(tmp_path)] == [1, 2]
        writer.log_round(_record(3, 0.7))
    assert [r[ROUND] for r in read_metrics(tmp_path)] == [1, 2, 3]
    # a fresh (non-resumed) open truncates
    RunWriter(tmp_path, tensorboard=False).open().close()
    assert read_metrics(tmp_path) == []


def test_run_writer_resume_with_tensorboard(tmp_path: Path) -> None:
    with RunWriter(tmp_path).open() as writer:
        writer.log_round(_record(1, 0.5))
    with RunWriter(tmp_path).open(resume_after_round=1) as writer:
        writer.log_round(_record(2, 0.6))
    assert [r[ROUND] for r in read_metrics(tmp_path)] == [1, 2]


def test_read_metrics_ignores_trailing_partial_line(tmp_path: Path) -> None:
    full = "".join(json.dumps(_record(r, 0.5)) + "\n" for r in (1, 2))
    (tmp_path / METRICS_FILE).write_text(full + '{"round": 3, "eval_acc')
    assert [r[ROUND] for r in read_metrics(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path / "missing") == []


# --- summary and plot -------------------------------------------------------------------------


def test_write_summary_values(tmp_path: Path) -> None:
    metrics = [
        _record(1, 0.6),
        _record(2, 0.8, **{FAILURES: 2}),
        _record(3, 0.7, **{FAILURES: 1}),
        _record(4),  # no evaluation in the last round
    ]
    summary = write_summary(tmp_path, metrics, seed=7, extra={"dataset": "digits"})
    assert summary[FINAL_ACCURACY] == pytest.approx(0.7)
    assert summary[FINAL_LOSS] == pytest.approx(0.3)
    assert summary[BEST_ACCURACY] == pytest.approx(0.8)
    assert summary[ROUNDS_DONE] == 4
    assert summary[TOTAL_SECONDS] == pytest.approx(8.0)
    assert summary[TOTAL_FAILURES] == 3
    assert summary[SEED] == 7
    assert summary["dataset"] == "digits"
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == summary


def test_plot_accuracy_writes_png(tmp_path: Path) -> None:
    out = plot_accuracy(tmp_path, [_record(1, 0.5), _record(2), _record(3, 0.7)])
    assert out == tmp_path / ACCURACY_PNG
    assert out.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == [ACCURACY_PNG]


# --- report -----------------------------------------------------------------------------------


def _fake_run(folder: Path, strategy: dict, seed: int, acc: float) -> Path:
    from omegaconf import OmegaConf

    folder.mkdir(parents=True)
    config = {
        "seed": seed,
        "rounds": 5,
        "output_dir": str(folder),
        "resume": None,
        "dataset": {"name": "digits"},
        "strategy": strategy,
        "hydra": {"job": {"num": seed}},
    }
    OmegaConf.save(OmegaConf.create(config), folder / CONFIG_FILE)
    summary = {
        FINAL_ACCURACY: acc,
        BEST_ACCURACY: acc + 0.01,
        TEST_AT_BEST_VAL: acc - 0.01,
        ROUNDS_DONE: 5,
        TOTAL_SECONDS: 10.0 + seed,
        TOTAL_FAILURES: 1,
        SEED: seed,
    }
    write_json_atomic(folder / SUMMARY_FILE, summary)
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    fedavg = {"name": "fedavg"}
    fedprox = {"name": "fedprox", "mu": 0.01}
    return [
        _fake_run(tmp_path / "sweep" / "a" / "0", fedavg, 0, 0.90),
        _fake_run(tmp_path / "sweep" / "a" / "1", fedavg, 1, 0.92),
        _fake_run(tmp_path / "sweep" / "b", fedprox, 0, 0.85),
    ]


def _row(table: str, needle: str) -> str:
    return next(line for line in table.splitlines() if needle in line)


def test_report_groups_over_seeds(runs: list[Path]) -> None:
    groups = group_runs([load_run(p) for p in runs])
    assert sorted(len(v) for v in groups.values()) == [1, 2]
    assert any("strategy=fedavg" in k for k in groups)
    assert any("strategy=fedprox" in k for k in groups)
    assert not any("seed" in k or "hydra" in k or "dataset" in k for k in groups)

    table = report_table(runs)
    assert len(table.splitlines()) == 2 + 2  # header, rule, two groups
    fedavg = _row(table, "strategy=fedavg")
    # 0.90 and 0.92: s = 0.01414, half width t(0.975, 1) * s / sqrt(2) = 12.706 * 0.01 = 0.1271
    assert "0.9100 [0.7829, 1.0371]" in fedavg
    assert "0.9000" in fedavg  # test accuracy at the best-validation round (not the best test)
    assert "0.9200" not in fedavg and "0.9300" not in fedavg
    assert " 2 " in fedavg and "10.5" in fedavg
    fedprox = _row(table, "strategy=fedprox")
    assert "0.8500 " in fedprox and "[" not in fedprox  # one seed: no interval


def test_report_pairs_over_seeds_against_a_baseline(runs: list[Path], tmp_path: Path) -> None:
    fedprox = {"name": "fedprox", "mu": 0.01}
    runs.append(_fake_run(tmp_path / "sweep" / "b1", fedprox, 1, 0.86))
    table = report_table(runs, baseline="strategy=fedavg")
    assert "Δ final vs" in table.splitlines()[0]
    # diffs -0.05 and -0.06: mean -0.055, s = 0.00707, half 12.706 * 0.005 = 0.0635; lost both
    assert "-0.0550 [-0.1185, +0.0085] (0/2)" in _row(table, "strategy=fedprox")
    assert "baseline" in table.splitlines()[2] and "strategy=fedavg" in table.splitlines()[2]
    with pytest.raises(ConfigError, match="invalid --baseline 'strategy=krum'"):
        report_table(runs, baseline="strategy=krum")


def test_report_single_group_is_all(runs: list[Path]) -> None:
    groups = group_runs([load_run(p) for p in runs[:2]])
    assert list(groups) == ["all"]
    assert len(groups["all"]) == 2


def test_report_expands_parent_dir(runs: list[Path], tmp_path: Path) -> None:
    assert report_table([tmp_path / "sweep"]) == report_table(runs)
    assert report_table([tmp_path]) == report_table(runs)


def test_report_rejects_non_run_dir(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a fedsim run directory") as err:
        load_run(empty)
    assert str(empty) in str(err.value)
    with pytest.raises(ConfigError, match="empty"):
        report_table([empty])


def test_main_report_markdown(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main_report([str(p) for p in runs] + ["--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| group |") and lines[0].endswith("|")
    assert set(lines[1]) <= set("|-: ")
    assert len(lines) == 4
    assert "0.9100 [0.7829, 1.0371]" in _row("\n".join(lines), "strategy=fedavg")


def test_mean_std_of_seeds() -> None:
    from fedsim.report import mean_std

    # mean 0.5, sample std sqrt(((0.4-0.5)^2 + (0.6-0.5)^2) / 1) = 0.141421...
    assert mean_std([0.4, 0.6], scale=100) == "50.00 ± 14.14"
    assert mean_std([0.25], digits=3) == "0.250 ± 0.000"
    assert mean_std([float("nan"), None, 0.5], scale=100) == "50.00 ± 0.00"  # type: ignore[list-item]
    assert mean_std([], empty="not run") == "not run"
