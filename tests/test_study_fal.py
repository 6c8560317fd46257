"""The FAL studies (``conf/study/fal_fmnist_lt.yaml``, ``fal_reference.yaml``) load and plan, and
their report sections (:mod:`server.study_reports_fal`) give the expected tables and plots on
hand-made runs. No training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fedsim import constants as C
from fedsim.study import STUDY_REPORTS, cache, load_study, parse_study, plan
from fedsim.study.runner import PlannedRun
from fedsim.study.spec import study_path
from server import study_reports_fal as fal  # noqa: F401  (registers the report sections)

STUDIES = ("fal_fmnist_lt", "fal_reference")


@pytest.mark.parametrize("name", STUDIES)
def test_the_fal_studies_load_and_one_cell_per_beta_plans(name: str, tmp_path: Path) -> None:
    spec = load_study(name)
    methods = {c.label("method") for c in spec.cells}
    assert {"fairfal", "entropy", "least_confidence", "random"} <= methods
    assert {c.label("beta") for c in spec.cells} == {"0.1", "100"}
    assert spec.baseline == {"method": "entropy"}
    assert set(spec.reports) == {"fal_fairfal_choice", "fal_query_balance"}
    assert all(STUDY_REPORTS.get(r) for r in spec.reports)
    node = OmegaConf.to_container(OmegaConf.load(study_path(name)), resolve=True)
    assert isinstance(node, dict)
    node["axes"]["method"] = {"fairfal": node["axes"]["method"]["fairfal"]}
    small = parse_study({**node, "seeds": [0], "baseline": {}, "output": str(tmp_path)})
    runs = plan(small, root=tmp_path)
    presets = {r.cell.label("beta"): r.cfg.partition.beta for r in runs}
    assert presets == {"0.1": 0.1, "100": 100}
    cfg = runs[0].cfg
    assert cfg.query.name == "fairfal" and cfg.model.name == "cnn4conv"
    assert cfg.longtail_rho == 20 and cfg.fal.end_ratio == 0.45 and cfg.num_clients == 10
    if name == "fal_reference":
        assert (cfg.rounds, cfg.local.epochs, cfg.dataset.val_fraction) == (100, 5, 0)
        assert len(spec.seeds) == 5
    else:
        assert cfg.rounds < 100 and cfg.eval_every == cfg.rounds and len(spec.seeds) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_every_run_of_the_fal_studies_plans(name: str, tmp_path: Path) -> None:
    spec = load_study(name, [f"output={tmp_path}"])
    runs = plan(spec, root=tmp_path)
    assert len(runs) == len(spec.cells) * len(spec.seeds)
    assert len({r.key for r in runs}) == len(runs)


SPEC = parse_study(
    {
        "name": "falt",
        "axes": {
            "beta": {"0.1": []},
            "method": {"fairfal": [], "entropy": [], "random": []},
        },
        "seeds": [0, 1],
        "baseline": {"method": "entropy"},
    }
)


def _stage(cycle: int, hist: list[int], tail: float, **fair: Any) -> dict[str, Any]:
    return {
        C.RECORD_KIND: "stage",
        C.STAGE: cycle,
        C.ROUND: 2 * (cycle + 1),
        C.LABELED_RATIO: 0.05 * (cycle + 1),
        C.FAL_QUERY_HIST: hist,
        C.QUERY_TAIL_SHARE: tail,
        **fair,
    }


def _fair(rbar: float, computed: float, unc: list[int], grad: list[int]) -> dict[str, Any]:
    return {
        C.RBAR: rbar,
        "fairfal_rbar_computed": computed,
        "fairfal_divergences": [0.2, 0.4],
        "fairfal_imbalances": [computed - 0.1, computed + 0.1],
        C.FAL_USE_GLOBAL_UNC: unc,
        C.FAL_USE_GLOBAL_GRAD: grad,
        C.FAL_PSEUDO_ACC: [0.5, 0.7],
    }


def _runs(tmp_path: Path) -> list[PlannedRun]:
    """Two seeds of each method; FairFAL's r̄ 0.6 / 0.8 in cycle 0, recomputed 0.4 / 0.5 in
    cycle 1 (frozen: used 0.6 / 0.8), seed 0's clients on G in cycle 1 only."""
    runs = []
    for cell in SPEC.cells:
        method = cell.label("method")
        for seed in (0, 1):
            d = tmp_path / f"{method}{seed}"
            d.mkdir(parents=True)
            rbar = 0.6 + 0.2 * seed
            recs = []
            for cycle in (0, 1):
                fair = {}
                if method == "fairfal":
                    on_g = [1, 1] if (cycle, seed) == (1, 0) else [0, 0]
                    computed = rbar if cycle == 0 else 0.4 + 0.1 * seed
                    fair = _fair(rbar, computed, on_g, on_g)
                hist = [6, 2] if method == "entropy" else [7, 1]
                recs += [{C.ROUND: 2 * cycle + 1}, _stage(cycle, hist, hist[1] / 8, **fair)]
            recs.append({C.RECORD_KIND: "stage", C.STAGE: 2, C.ROUND: 6})  # last: no cycle
            (d / C.METRICS_FILE).write_text("\n".join(json.dumps(r) for r in recs) + "\n")
            (d / C.SUMMARY_FILE).write_text("{}")
            cache.mark_done(d, {})
            cfg = OmegaConf.create({"query": {"name": method, "rbar_threshold": 0.5}})
            runs.append(PlannedRun(cell, seed, cfg, f"{method}{seed}", d))
    return runs


def test_cycle_rows_read_the_stage_records(tmp_path: Path) -> None:
    rows = fal.cycle_rows(_runs(tmp_path))
    assert len(rows) == 3 * 2 * 2  # methods x seeds x cycles; the last stage has no cycle
    ff = [r for r in rows if r["method"] == "fairfal" and r["seed"] == 1 and r["cycle"] == 1]
    assert ff[0]["rbar"] == 0.8 and ff[0]["rbar_computed"] == pytest.approx(0.5)
    assert ff[0]["divergence"] == pytest.approx(0.3) and ff[0]["imbalance_min"] == 0.4
    assert "rbar" not in next(r for r in rows if r["method"] == "entropy")


def test_fairfal_choice_table_and_plot(tmp_path: Path) -> None:
    runs = _runs(tmp_path / "runs")
    text = fal.fairfal_choice(SPEC, runs, [], [], tmp_path / "doc")
    lines = [x for x in text.splitlines() if x.startswith("| 0 ") or x.startswith("| 1 ")]
    assert lines[0].startswith("| 0 | 0.05 | 2 | 0.70 [0.60, 0.80] | 0.70 [0.60, 0.80] | 0.50-0.90")
    assert lines[0].endswith("| 0.30 | 0% | 0% | 0.60 |")
    assert lines[1].startswith("| 1 | 0.10 | 2 | 0.70 [0.60, 0.80] | 0.45 [0.40, 0.50] | 0.30-0.60")
    assert "| 50% | 50% |" in lines[1]
    assert "**beta=0.1, method=fairfal**" in text
    assert (tmp_path / "doc" / "falt_fairfal_choice.png").stat().st_size > 1000
    assert "No finished FairFAL run" in fal.fairfal_choice(SPEC, runs[2:], [], [], tmp_path)


def test_query_balance_histogram_tail_plot_and_fairfal_minus_each(tmp_path: Path) -> None:
    runs = _runs(tmp_path / "runs")
    run_rows = [
        {
            "beta": "0.1",
            "method": m,
            "seed": s,
            "variant": "trained",
            C.FINAL_ACCURACY: acc + 0.01 * s,
            C.AULC: acc - 0.1,
            C.QUERY_TAIL_SHARE: 0.2,
        }
        for m, acc in (("fairfal", 0.6), ("entropy", 0.5), ("random", 0.4))
        for s in (0, 1)
    ]
    text = STUDY_REPORTS.get("fal_query_balance")(SPEC, runs, run_rows, [], tmp_path / "doc")
    assert "| fairfal | 32 | 87.5 | 12.5 |" in text  # 2 seeds x 2 cycles x 8 picks
    assert "| entropy | 32 | 75.0 | 25.0 |" in text
    assert "`random` estimates the pool's own share (12.5 %, mean over seeds and cycles)." in text
    assert "| entropy | +10.0 [+10.0, +10.0] (2/2) | +10.0 [+10.0, +10.0] (2/2) | +0.0" in text
    assert "| random | +20.0 [+20.0, +20.0] (2/2)" in text
    assert (tmp_path / "doc" / "falt_query_tail_share.png").stat().st_size > 1000
