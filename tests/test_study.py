"""``fedsim study``: the cache (reuse, reruns of exactly the changed runs), resume after a kill,
two processes sharing the work, selection on validation only, and the report."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

from fedsim import constants as C
from fedsim.errors import ConfigError
from fedsim.study import cache, load_study, parse_study, plan, run_study, write_report
from fedsim.study.tables import apply_selections, metric_value, posthoc_row

TINY = {
    "name": "t",
    "base": ["num_clients=4", "clients_per_round=4", "rounds=2", "tensorboard=false"],
    "seeds": [0, 1],
    "axes": {"method": {"fedavg": ["strategy=fedavg"], "fedprox": ["strategy=fedprox"]}},
    "baseline": {"method": "fedavg"},
    "tables": [{"title": "acc", "metric": "test_accuracy_at_best_val", "rows": "method"}],
}


def _spec(tmp_path: Path, **changes: Any):
    node = {**TINY, "output": str(tmp_path / "studies"), **changes}
    return parse_study(node)


class Counting:
    """Runs configs on the test session and records which ran."""

    def __init__(self, stop_after: int | None = None) -> None:
        from fedsim.engine.session import open_session

        self.session = open_session()
        self.ran: list[str] = []
        self.stop_after = stop_after

    def __call__(self, cfg: DictConfig) -> Any:
        if self.stop_after is not None and len(self.ran) >= self.stop_after:
            raise KeyboardInterrupt  # the study process is killed before this run
        self.ran.append(Path(cfg.output_dir).name)
        assert self.session is not None
        return self.session.run(cfg)


def _table(spec, tmp_path: Path) -> str:
    text = write_report(spec, plan(spec, root=tmp_path), root=tmp_path)
    assert "| method |" in text  # the table itself
    return "\n".join(line for line in text.splitlines() if "**Commit:**" not in line)


def test_a_study_reuses_its_runs_and_reruns_exactly_the_changed_ones(tmp_path: Path) -> None:
    spec = _spec(tmp_path, seeds=[0])
    first = Counting()
    runs = run_study(spec, root=tmp_path, execute=first)
    assert len(first.ran) == 2 and all(cache.is_done(r.dir) for r in runs)
    table = _table(spec, tmp_path)
    again = Counting()
    run_study(spec, root=tmp_path, execute=again)
    assert again.ran == []  # every run cached
    assert _table(spec, tmp_path) == table
    # one key changed for one cell: only that cell's two seeds run again
    axes = {"method": {"fedavg": ["strategy=fedavg"], "fedprox": ["strategy=fedprox", "rounds=3"]}}
    changed = _spec(tmp_path, axes=axes, seeds=[0])
    third = Counting()
    new_runs = run_study(changed, root=tmp_path, execute=third)
    fedprox = {r.dir.name for r in new_runs if r.cell.label("method") == "fedprox"}
    assert set(third.ran) == fedprox and len(third.ran) == 1  # fedavg's run is reused
    rows = (tmp_path / "studies" / "t" / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and rows[0].startswith("method,seed,variant,key")


ONE_METHOD = {"method": {"fedprox": ["strategy=fedprox"]}}


def test_archived_runs_survive_a_fresh_checkout(tmp_path: Path) -> None:
    import shutil

    archive = tmp_path / "archive"
    spec = _spec(tmp_path, seeds=[0], archive=str(archive))
    runs = run_study(spec, root=tmp_path, execute=Counting())
    files = sorted(archive.iterdir())
    assert [p.name for p in files] == sorted(f"{r.key}.tar.gz" for r in runs)
    blobs = [p.read_bytes() for p in files]
    table = _table(spec, tmp_path)
    # a fresh checkout: no cache, and one run interrupted there before it was complete
    shutil.rmtree(tmp_path / "studies")
    runs[1].dir.mkdir(parents=True)
    (runs[1].dir / C.CONFIG_FILE).write_text("half: made\n")
    again = Counting()
    run_study(spec, root=tmp_path, execute=again)
    assert again.ran == []  # both restored from the archive, none made again
    assert _table(spec, tmp_path) == table
    assert not (runs[1].dir / C.CONFIG_FILE).read_text().startswith("half")
    assert [p.read_bytes() for p in sorted(archive.iterdir())] == blobs  # nothing rewritten
    for run in runs:  # byte-identical when written again from the same files
        (archive / f"{run.key}.tar.gz").unlink()
        assert cache.archive_run(run.dir, archive)
    assert [p.read_bytes() for p in sorted(archive.iterdir())] == blobs
    assert not any(n.endswith(".pt") for n in cache._members(files[0]))  # no checkpoints


def test_a_killed_study_resumes_and_ends_with_the_same_table(tmp_path: Path) -> None:
    whole = _spec(tmp_path / "a", axes=ONE_METHOD, baseline={}, seeds=[0, 1])
    run_study(whole, root=tmp_path, execute=Counting())
    expected = _table(whole, tmp_path)

    spec = _spec(tmp_path / "b", axes=ONE_METHOD, baseline={}, seeds=[0, 1])
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, root=tmp_path, execute=Counting(stop_after=1))
    runs = plan(spec, root=tmp_path)
    assert sum(cache.is_done(r.dir) for r in runs) == 1
    assert not list((tmp_path / "b" / "studies" / "runs").glob("*.lock"))  # released
    # a run killed mid-way: its directory holds round 1's checkpoint (made with rounds=1)
    partial = runs[1]
    cfg = partial.cfg.copy()
    cfg.rounds, cfg.output_dir = 1, str(partial.dir)
    Counting()(cfg)
    assert cache.can_resume(partial.dir) and not cache.is_done(partial.dir)
    rest = Counting()
    run_study(spec, root=tmp_path, execute=rest)
    assert len(rest.ran) == 1
    metrics = [json.loads(x) for x in (partial.dir / C.METRICS_FILE).read_text().splitlines()]
    assert [m[C.ROUND] for m in metrics] == [1, 2]  # continued from round 1, not redone
    assert _table(spec, tmp_path) == expected


@pytest.mark.slow  # 5 s of composing (make test-all)
def test_two_processes_share_a_study_and_make_each_run_once(tmp_path: Path) -> None:
    spec = _spec(tmp_path, seeds=[0, 1])
    made: list[str] = []
    lock = threading.Lock()

    def fake(cfg: DictConfig) -> None:  # writes what a finished run leaves
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / C.SUMMARY_FILE).write_text(json.dumps({"test_accuracy_at_best_val": 0.5}))
        with lock:
            made.append(out.name)
        threading.Event().wait(0.05)

    threads = [
        threading.Thread(
            target=run_study,
            args=(spec,),
            kwargs={"root": tmp_path, "execute": fake, "out": io.StringIO()},
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(made) == sorted(r.dir.name for r in plan(spec, root=tmp_path))  # once each


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    held = cache.try_claim(lock)
    assert held is not None and cache.try_claim(lock) is None  # this (live) process holds it
    held.release()
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": __import__("socket").gethostname()}))
    assert cache.holder(lock) is None  # its process does not exist
    assert cache.try_claim(lock) is not None


def test_selection_is_on_validation_only_and_picks_the_best_mean() -> None:
    node = {
        **TINY,
        "select": [
            {
                "name": "best",
                "axis": "method",
                "among": ["fedavg", "fedprox"],
                "metric": "eval_accuracy",
                "mode": "max",
            }
        ],
    }
    with pytest.raises(ConfigError, match="never chooses on the test split"):
        parse_study(node)
    node["select"][0]["metric"] = "final_val_accuracy - final_val_asr"
    spec = parse_study(node)
    rows = [
        {
            "method": "fedavg",
            "seed": 0,
            "final_val_accuracy": 0.9,
            "final_val_asr": 0.5,
            "final_accuracy": 0.1,
        },
        {
            "method": "fedavg",
            "seed": 1,
            "final_val_accuracy": 0.8,
            "final_val_asr": 0.4,
            "final_accuracy": 0.2,
        },
        {
            "method": "fedprox",
            "seed": 0,
            "final_val_accuracy": 0.7,
            "final_val_asr": 0.1,
            "final_accuracy": 0.3,
        },
        {
            "method": "fedprox",
            "seed": 1,
            "final_val_accuracy": 0.6,
            "final_val_asr": 0.2,
            "final_accuracy": 0.4,
        },
    ]
    # means: fedavg 0.4, fedprox 0.5 -> fedprox, whose test numbers are reported as "best"
    out, choices = apply_selections(spec, rows)
    assert choices[0]["chosen"] == "fedprox" and choices[0]["value"] == pytest.approx(0.5)
    best = [r for r in out if r["method"] == "best"]
    assert [r["final_accuracy"] for r in best] == [0.3, 0.4]
    assert metric_value(rows[0], "final_val_accuracy - final_val_asr") == pytest.approx(0.4)


def test_posthoc_rows_take_the_defended_numbers() -> None:
    row = posthoc_row(
        {"final_ma": 0.9, "final_asr": 0.8, "seed": 0},
        {"ma_before": 0.9, "ma_after": 0.85, "asr_after": 0.1, "eps": 0.01},
    )
    assert row == {"final_ma": 0.85, "final_asr": 0.1, "seed": 0, "defense_eps": 0.01}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": []}, "invalid seeds"),
        ({"bogus": 1}, "invalid study key 'bogus'"),
        ({"baseline": {"method": "fedsgd"}}, "invalid baseline.method='fedsgd'"),
        ({"tables": [{"metric": "x", "rows": "setting"}]}, "invalid tables\\[0\\].rows"),
        ({"tables": [{"metric": "x", "rows": "method", "scale": "big"}]}, "tables\\[0\\].scale"),
        ({"plots": [{"metric": "x", "hue": "method", "colour": 1}]}, "plots\\[0\\] parameter"),
        ({"axes": {"method": {"a": "strategy=fedavg"}}}, "a list of override strings"),
        ({"posthoc": {"flain": {"name": "flain"}}}, "one trained label when posthoc"),
        ({"archive": 3}, "invalid archive=3"),
    ],
)
def test_bad_study_declarations_get_one_line(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_study({**TINY, **change})


def test_unknown_study_and_bad_cell_are_refused_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown study 'nope': valid study names are .*tiny"):
        load_study("nope")
    spec = _spec(tmp_path, axes={"method": {"x": ["strategy=fedsgd"]}}, baseline={})
    with pytest.raises(ConfigError, match="study t, cell method=x: .*fedsgd"):
        plan(spec, root=tmp_path)
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize(("local", "resumes"), [("supervised", True), ("gce", False)])
def test_runs_whose_clients_keep_state_restart_instead_of_resuming(
    tmp_path: Path, local: str, resumes: bool
) -> None:
    from omegaconf import OmegaConf

    from fedsim.checkpoint import save_checkpoint
    from fedsim.config import compose
    from fedsim.study.runner import PlannedRun, _make

    cfg = compose([f"local={local}", "rounds=2"])
    run = PlannedRun(parse_study(TINY).cells[0], 0, cfg, "k", tmp_path / "k")
    run.dir.mkdir()
    OmegaConf.save(cfg, run.dir / C.CONFIG_FILE)  # an interrupted run: config and a checkpoint
    save_checkpoint(run.dir, 1, {"round": 1})
    seen: list[Any] = []
    _make(run, lambda c: seen.append((c.get("resume"), (run.dir / C.CONFIG_FILE).exists())))
    # gce's per-client state is not in the checkpoint: its run starts again from an empty dir
    assert seen == [(str(run.dir), True)] if resumes else seen == [(None, False)]
    done = json.loads((run.dir / cache.DONE_FILE).read_text())  # marked complete after the run
    assert done["seed"] == 0 and done["key"] == "k"
    assert done["versions"]["torch"] == torch.__version__.split("+")[0]  # what made the numbers


STUDIES = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "study").glob("*.yaml")
)


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_config_loads(name: str) -> None:
    spec = load_study(name)
    assert spec.cells and spec.seeds and spec.name == name


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_every_study_plans_every_run(name: str, tmp_path: Path) -> None:
    runs = plan(load_study(name, [f"output={tmp_path}"]), root=tmp_path)
    assert len(runs) == len(load_study(name).cells) * len(load_study(name).seeds)
    assert len({r.key for r in runs}) == len(runs)  # no two cells are the same run


def test_label_quality_section_averages_clients_and_runs(tmp_path: Path) -> None:
    from fedsim.study.extras import label_quality
    from fedsim.study.runner import PlannedRun

    spec = parse_study(TINY)
    header = "client,group,weak_labels,kind,local,n,labeled,noise_rate,mean_candidates,coverage\n"
    runs = []
    for i, rate in enumerate((0.2, 0.4)):  # two runs of the same cell
        d = tmp_path / str(i)
        d.mkdir()
        (d / C.LABEL_QUALITY_CSV).write_text(
            header + f"0,-1,noisy,noisy,gce,10,10,{rate},1,{1 - rate}\n"
            f"1,-1,noisy,noisy,gce,30,15,{rate + 0.1},1,{0.9 - rate}\n"
        )
        runs.append(PlannedRun(spec.cells[0], i, None, str(i), d))  # type: ignore[arg-type]
    text = label_quality(spec, runs, [], [], tmp_path)
    # noise: run means 0.25 and 0.45 -> 0.35; coverage 0.75 and 0.55 -> 0.65; labeled 25/40
    assert "| fedavg | 0.350 | 1.000 | 0.650 | 0.625 |" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "nope"], "unknown study 'nope'"),
        (["study", "tiny", "--bogus"], "unknown option '--bogus' of fedsim study"),
        (["study", "tiny", "seeds=[-1]"], "invalid seeds=[-1]"),
        (["study"], "fedsim study needs a study name"),
    ],
)
def test_the_study_command_refuses_bad_input_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedsim.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow  # a study run through the CLI (make test-all)
def test_dry_run_counts_made_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsim.cli import main

    assert main(["study", "tiny", f"output={tmp_path}", "seeds=[0]"]) is not None
    capsys.readouterr()
    assert main(["study", "tiny", f"output={tmp_path}", "--dry-run"]) == 0
    assert "study tiny: 4 runs, 2 made, 2 to make" in capsys.readouterr().out


def test_the_run_key_ignores_speed_settings_but_not_the_batched_pass() -> None:
    from fedsim.config import compose

    base = cache.run_key(compose(["rounds=2"]))
    assert cache.run_key(compose(["rounds=2", "engine.chunks_per_actor=4"])) == base
    assert cache.run_key(compose(["rounds=2", "engine=flower"])) == base  # identical metrics
    assert cache.run_key(compose(["rounds=2", "progress=false"])) == base
    assert cache.run_key(compose(["rounds=3"])) != base
    assert cache.run_key(compose(["rounds=2", "engine.vectorize=on"])) != base


def test_the_header_lists_the_library_versions_of_the_complete_runs(tmp_path: Path) -> None:
    from fedsim.study.report import environments
    from fedsim.study.runner import PlannedRun

    cell = parse_study(TINY).cells[0]
    runs = [PlannedRun(cell, s, None, f"k{s}", tmp_path / f"k{s}") for s in range(4)]  # type: ignore[arg-type]
    for run, versions in zip(runs, [{"torch": "2.1"}, {"torch": "2.1"}, None], strict=False):
        run.dir.mkdir()
        cache.mark_done(run.dir, {"seed": run.seed, **({"versions": versions} if versions else {})})
    assert environments(runs) == "torch 2.1 (2 runs); not recorded (1 runs)"  # k3: not made
    assert environments(runs[3:]) == "no run made yet"


def test_a_plot_of_stage_records_draws_them_and_a_missing_metric_gets_a_note(
    tmp_path: Path,
) -> None:
    from fedsim.study.runner import PlannedRun

    plots = [
        {"metric": "query_precision", "hue": "method", "x": "stage", "records": "stages"},
        {"metric": "query_precision", "hue": "method", "x": "stage", "title": "from rounds"},
    ]
    spec = _spec(tmp_path, plots=plots)
    runs = []
    for i, cell in enumerate(spec.cells):
        d = tmp_path / "runs" / str(i)
        d.mkdir(parents=True)
        (d / C.SUMMARY_FILE).write_text(json.dumps({"test_accuracy_at_best_val": 0.5}))
        records = [{"round": 1, "eval_accuracy": 0.4}]
        records += [
            {"kind": "stage", "round": 1, "stage": t, "query_precision": 0.1 * t + i}
            for t in (1, 2)
        ]
        (d / C.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        cache.mark_done(d, {"seed": 0})
        runs.append(PlannedRun(cell, 0, None, str(i), d))  # type: ignore[arg-type]
    text = write_report(spec, runs, root=tmp_path)
    assert "![query_precision](t_query_precision_0.png)" in text
    assert (tmp_path / "studies" / "t" / "t_query_precision_0.png").stat().st_size > 1000
    assert "(Plot `from rounds`: no run has `query_precision` against `stage` in its rounds" in text
    assert not (tmp_path / "studies" / "t" / "t_query_precision_1.png").exists()  # no empty figure
    stages = (tmp_path / "studies" / "t" / "stages.csv").read_text().splitlines()
    assert len(stages) == 1 + 2 * 2 and stages[0].startswith("method,seed,variant,key,stage")
    with pytest.raises(ConfigError, match=r"records='cycles': allowed rounds or stages"):
        _spec(tmp_path, plots=[{**plots[0], "records": "cycles"}])


def test_a_run_the_server_stops_is_kept_listed_and_left_out_of_the_tables(tmp_path: Path) -> None:
    from fedsim.errors import RunStopped

    archive = tmp_path / "archive"
    spec = _spec(tmp_path, seeds=[0, 1], archive=str(archive))
    diverging = next(
        r.dir.name
        for r in plan(spec, root=tmp_path)
        if r.cell.label("method") == "fedprox" and r.seed == 1
    )

    class Diverging(Counting):
        def __call__(self, cfg: DictConfig) -> Any:
            if Path(cfg.output_dir).name == diverging:
                self.ran.append(diverging)
                raise RunStopped("round 2: 0 of 4 sampled clients replied usably (NaN weights)")
            return super().__call__(cfg)

    out = io.StringIO()
    first = Diverging()
    runs = run_study(spec, root=tmp_path, execute=first, out=out)
    assert len(first.ran) == 4  # the study went on after the stopped run
    assert "stopped early: method=fedprox seed=1: round 2: 0 of 4" in out.getvalue()
    stopped = [r for r in runs if cache.stopped_reason(r.dir) is not None]
    assert [r.dir.name for r in stopped] == [diverging]
    assert (archive / f"{diverging}.tar.gz").is_file()  # a fresh checkout reuses it too
    again = Diverging()
    run_study(spec, root=tmp_path, execute=again)
    assert again.ran == []  # a stopped run counts as made
    text = write_report(spec, plan(spec, root=tmp_path), root=tmp_path)
    assert "**runs:** 3 of 4 made (1 more stopped early, listed below)" in text
    assert "- method=fedprox, seed 1: round 2: 0 of 4 sampled clients replied usably" in text
    assert "| fedprox | " in text and "(n=1)" in text and "(n=2)" in text  # n: complete runs
    rows = (tmp_path / "studies" / "t" / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + 3
