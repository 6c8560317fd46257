"""The open-set FAL studies' report sections (:mod:`server.study_reports_osal`): the per-client
math on hand-computed cases, and the tables on hand-made runs; the control studies load and
share their default cells with ``open_set_fal``. No training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedsim import constants as C
from fedsim.study import STUDY_REPORTS, cache, load_study, parse_study, plan
from fedsim.study.runner import PlannedRun
from fedsim.study.spec import study_path
from server import study_reports_osal as osal

NAN = math.nan


def test_client_matrix_pads_and_skips_records_without_the_key() -> None:
    recs: list[dict[str, Any]] = [{"x": [1, 2]}, {"y": 0}, {"x": [3, None, 5]}]
    m = osal.client_matrix(recs, "x")
    assert m.shape == (2, 3)
    assert m[0, :2].tolist() == [1.0, 2.0] and math.isnan(m[0, 2]) and math.isnan(m[1, 1])
    assert osal.client_matrix([{"y": 0}], "x").size == 0


def test_settling_by_hand() -> None:
    # cycles >= 2: client 0 averages (0.5 + 0.7) / 2 = 0.6 (inside 0.6 +- 0.1), client 1 only
    # 0.3 (its NaN cycle is skipped): share 1/2, mean 0.45, population std 0.15
    prec = np.array([[0.2, 0.9], [0.4, 0.9], [0.5, NAN], [0.7, 0.3]])
    share, mean, std = osal.settling(prec, start=2)
    assert (share, mean, std) == pytest.approx((0.5, 0.45, 0.15))
    assert osal.settling(prec, start=0)[0] == 0.5  # client 0: 0.45, client 1: 0.7 (edge, inside)
    assert all(math.isnan(v) for v in osal.settling(prec, start=4))


def test_unknowns_before_shifts_by_one_cycle() -> None:
    after = np.array([[2, 0], [5, 1], [6, 3]])
    assert osal.unknowns_before(after).tolist() == [[0, 0], [2, 0], [5, 1]]


def test_lift_by_group_splits_at_the_median_of_the_local_unknowns() -> None:
    # mean unknowns per client 0.5, 2, 1, 3 -> median 1.5: small = clients 0 and 2
    unk = np.array([[0, 0, 0, 0], [1, 4, 2, 6]], dtype=float)
    fed = np.array([[0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6]])  # client means .2 .3 .4 .5
    loc = np.array([[0.0, 0.0, 0.0, 0.2], [0.0, 0.2, 0.2, 0.2]])  # client means 0 .1 .1 .2
    out = osal.lift_by_group(fed, loc, unk)
    assert out["small"] == pytest.approx((0.3, 0.05))
    assert out["large"] == pytest.approx((0.4, 0.15))


DET = parse_study(
    {
        "name": "osdet",
        "axes": {
            "detector": {"federated": [], "local": []},
            "method": {"lfosa": []},
            "setting": {"S2_K2": []},
        },
        "seeds": [0, 1],
        "baseline": {"detector": "federated"},
    }
)


def _run(tmp: Path, cell, seed: int, recs: list[dict], summary: dict | None = None) -> PlannedRun:  # type: ignore[no-untyped-def]
    d = tmp / f"{cell.name.replace(' ', '_')}_{seed}"
    d.mkdir(parents=True)
    (d / C.METRICS_FILE).write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (d / C.SUMMARY_FILE).write_text(json.dumps(summary or {}))
    cache.mark_done(d, {})
    return PlannedRun(cell, seed, OmegaConf.create({}), d.name, d)


def _cycle(t: int, lift: list[float], unknown_after: list[int], prec: list[float]) -> dict:
    return {
        C.RECORD_KIND: "stage",
        C.STAGE: t,
        "lift_per_client": lift,
        "labeled_unknown_per_client": unknown_after,
        "precision_per_client": prec,
    }


def test_detector_control_table_pairs_federated_and_local_by_seed(tmp_path: Path) -> None:
    runs = []
    for cell in DET.cells:
        local = cell.label("detector") == "local"
        for seed in (0, 1):
            # two clients; the local run's client 0 has fewer labeled unknowns (small group)
            lift = [0.0, 0.1] if local else [0.2 + 0.1 * seed, 0.1]
            recs = [_cycle(t, lift, [t, 3 * t + 3], [0.5, 0.5]) for t in (0, 1)]
            recs.append({C.RECORD_KIND: "stage", C.STAGE: 2})  # the last stage: no query
            runs.append(_run(tmp_path, cell, seed, recs))
    text = STUDY_REPORTS.get("osal_detector_control")(DET, runs, [], [], tmp_path)
    lines = text.splitlines()
    # small: federated 0.2 / 0.3 against local 0.0 -> +25.0 [+25 - 63.5, ...] won 2/2
    small = next(x for x in lines if x.startswith("| method=lfosa, setting=S2_K2 | small"))
    assert small.startswith("| method=lfosa, setting=S2_K2 | small | 2 | 25.0 | 0.0 | +25.0 [")
    assert small.endswith("(2/2) |")
    large = next(x for x in lines if x.startswith("| method=lfosa, setting=S2_K2 | large"))
    assert "| 10.0 | 10.0 | +0.0 [+0.0, +0.0] (0/2) |" in large
    assert any(x.startswith("| pooled | small | 2 |") for x in lines)
    assert "No seed has both" in STUDY_REPORTS.get("osal_detector_control")(
        DET, runs[:2], [], [], tmp_path
    )


def test_pooled_detector_table_pairs_summary_and_record_numbers(tmp_path: Path) -> None:
    runs = []
    for cell in DET.cells:
        local = cell.label("detector") == "local"
        for seed in (0, 1):
            recs = [
                {C.RECORD_KIND: "stage", C.STAGE: t, C.EVAL_ACCURACY: 0.5 + 0.1 * t,
                 C.QUERY_ENTROPY: (0.9 if local else 0.5) + 0.05 * t}
                for t in (0, 1, 2)
            ]  # fmt: skip
            aulc = 0.8 + 0.1 * local + 0.02 * seed
            runs.append(_run(tmp_path, cell, seed, recs, {C.AULC: aulc, "flag": True}))
    text = osal.pooled_table(DET, runs)
    assert "| lfosa | AULC (points) | 2 | 81.0 | 91.0 | +10.0 [+10.0, +10.0] (2/2) |" in text
    assert "| lfosa | accuracy after the first query (points) | 2 | 60.0 | 60.0 | +0.0" in text
    # entropy: first cycle 0.5 vs 0.9; mean over cycles 0.55 vs 0.95
    assert "| class entropy of the first query's known picks | 2 | 0.50 | 0.90 | +0.40" in text
    assert "mean over cycles | 2 | 0.55 | 0.95 | +0.40 [+0.40, +0.40] (2/2) |" in text
    assert "final accuracy" not in text  # not in these summaries: no row


QUICK = parse_study(
    {
        "name": "osq",
        "axes": {"setting": {"S2_K3": []}, "method": {"random": [], "eaoa": []}},
        "seeds": [0, 1],
    }
)


def test_osal_precision_pairs_against_random_and_tabulates_settling(tmp_path: Path) -> None:
    runs, rows = [], []
    for cell in QUICK.cells:
        eaoa = cell.label("method") == "eaoa"
        for seed in (0, 1):
            prec = [0.6, 0.9] if eaoa else [0.3, 0.3]
            recs = [{**_cycle(t, [0, 0], [0, 0], prec), "osal_k": 4.0 - t} for t in range(5)]
            runs.append(_run(tmp_path, cell, seed, recs))
            mean = (0.5 if eaoa else 0.3) + 0.1 * seed * eaoa
            acc = 0.9 - 0.05 * eaoa - 0.01 * seed  # eaoa 5 points below random on both seeds
            rows.append(
                {**dict(cell.labels), "seed": seed, "variant": "trained", osal.MEAN_PRECISION: mean}
                | {osal.FINAL_ACCURACY: acc}
            )
    text = STUDY_REPORTS.get("osal_precision")(QUICK, runs, rows, [], tmp_path)
    assert "| eaoa | +25.0 [" in text and "(2/2) |" in text  # 0.2 and 0.3 over random
    accuracy = text.split("Known-class test accuracy")[1]
    assert "| eaoa | -5.0 [-5.0, -5.0] (0/2) |" in accuracy  # paired: -0.05 on both seeds
    assert "| random | setting=S2_K3 | 2 | 0 % | 30.0 % | 0.0 | - |" in text
    # eaoa: client 0 at 0.6 (inside), client 1 at 0.9: half the clients; k = 4 - 4 at the end
    assert "| eaoa | setting=S2_K3 | 2 | 50 % | 75.0 % | 15.0 | osal_k 0.00 |" in text


CONTROLS = [
    ("open_set_fal_detector", "detector", "federated"),
    ("open_set_fal_partition", "partition", "dirichlet"),
]


@pytest.mark.parametrize(("name", "axis", "baseline"), CONTROLS)
def test_the_control_studies_load_with_their_baseline_and_reports(
    name: str, axis: str, baseline: str
) -> None:
    spec = load_study(name)
    assert spec.baseline == {axis: baseline}
    assert spec.reports and all(STUDY_REPORTS.get(r) for r in spec.reports)
    assert {c.label(axis) for c in spec.cells} >= {baseline}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "axis", "baseline"), CONTROLS)
def test_the_control_studies_share_their_default_cells_with_open_set_fal(
    name: str, axis: str, baseline: str, tmp_path: Path
) -> None:
    spec = load_study(name, [f"output={tmp_path}"])
    main = {r.key for r in plan(load_study("open_set_fal", [f"output={tmp_path}"]), root=tmp_path)}
    runs = plan(spec, root=tmp_path)
    shared = {r.key for r in runs if r.cell.label(axis) == baseline}
    assert shared and shared <= main  # the default cells are open_set_fal's own runs
    others = {r.key for r in runs if r.cell.label(axis) != baseline}
    assert not others & main
    if axis == "detector":
        local = next(r for r in runs if r.cell.label(axis) == "local")
        assert local.cfg.open_set.detector == "local"
    else:
        modes = {r.cell.label(axis): r.cfg.partition.name for r in runs}
        assert modes == {"dirichlet": "dirichlet", "iid": "iid", "separate": "dirichlet"}
        sep = next(r for r in runs if r.cell.label(axis) == "separate")
        assert sep.cfg.open_set.partition == "separate"


def test_the_main_study_covers_the_spec_settings_and_strategies(tmp_path: Path) -> None:
    spec = load_study("open_set_fal")
    settings = [c.label("setting") for c in spec.cells]
    assert set(settings) == {
        "S1_K6", "S2_K2", "S2_K3", "S2_K4", "S2b_K8",
        "S3_u0.4", "S3_u0.6", "S3_u0.7", "S3_u0.8",
    }  # fmt: skip
    methods = {c.label("method") for c in spec.cells}
    assert methods == {"random", "entropy", "fairfal", "lfosa", "bual", "eaoa"}
    assert spec.baseline == {"method": "entropy"} and tuple(spec.seeds) == (0, 1, 2)
    raw = OmegaConf.to_container(OmegaConf.load(study_path("open_set_fal")), resolve=True)
    assert isinstance(raw, dict)
    node: dict[str, Any] = {str(k): v for k, v in raw.items()}
    node["axes"]["method"] = {"lfosa": node["axes"]["method"]["lfosa"]}
    node["axes"]["setting"] = {k: node["axes"]["setting"][k] for k in ("S2b_K8", "S3_u0.6")}
    small = parse_study({**node, "seeds": [0], "baseline": {}, "output": str(tmp_path)})
    runs = {r.cell.label("setting"): r.cfg for r in plan(small, root=tmp_path)}
    k8, s3 = runs["S2b_K8"], runs["S3_u0.6"]
    assert (k8.open_set.mode, k8.open_set.num_known) == ("class_split", 8)
    assert (s3.open_set.mode, s3.open_set.unknown_ratio) == ("cross_dataset", 0.6)
    assert k8.open_set.log_picks and k8.max_train_samples == 12000 and k8.num_clients == 10
    assert (k8.partition.name, k8.partition.alpha, k8.query.name) == ("dirichlet", 0.5, "lfosa")
