"""Backdoor evaluation and workflow: held-out sets, MA/ASR/RA, workflow choice, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from clients.attacks import build_attack
from fedsim import constants as C
from fedsim.config import compose
from fedsim.errors import ConfigError
from fedsim.runner import prepare
from server.backdoor_eval import backdoor_metrics, holdout_split
from server.components import build_components


def test_holdout_takes_first_per_class_for_aux_and_removes_both_sets() -> None:
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2, 2])
    aux, root, clean = holdout_split(y, aux_per_class=2, root_per_class=1, seed=0)
    assert aux.tolist() == [0, 1, 2, 3, 8, 9]  # first two of each class in test order
    assert len(root) == 3 and sorted(y[root].tolist()) == [0, 1, 2]
    assert not set(root) & set(aux)
    assert sorted([*aux, *root, *clean]) == list(range(12)) and not set(clean) & set(root)
    _, _, clean_ref = holdout_split(
        y, aux_per_class=2, root_per_class=1, seed=0, source="test_head"
    )
    assert clean_ref.tolist() == list(range(12))  # the reference evaluates on the whole test split
    with pytest.raises(ConfigError, match="aux_source='x'"):
        holdout_split(y, aux_per_class=2, root_per_class=1, seed=0, source="x")


class _TriggerDetector(nn.Module):
    """Predicts 5 when pixel (23, 23) is bright, else the label encoded in pixel (0, 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        label = (x[:, 0, 0, 0] * 0.3 + 0.1) * 255  # undo to_float with mean 0.1, std 0.3
        logits[torch.arange(len(x)), label.round().long().clamp(0, 9)] = 1.0
        triggered = x[:, 0, 23, 23] > 2.0
        logits[triggered] = 0.0
        logits[triggered, 5] = 1.0
        return logits


def test_asr_ra_and_source_accuracy_on_a_constructed_model() -> None:
    y = torch.tensor([0, 0, 0, 0, 1, 5])
    x = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 0, 0] = y.to(torch.uint8)
    x[3, 0, 0, 0] = 7  # one class-0 image misclassified as 7 even when clean
    attack = build_attack("cba", {"source": [0], "target": 5})
    m = backdoor_metrics(
        _TriggerDetector(), x, y, attack, mean=[0.1], std=[0.3], device=torch.device("cpu")
    )
    # eligible: the four class-0 images; all triggered ones are predicted 5
    assert m[C.BACKDOOR_ASR] == 1.0 and m[C.BACKDOOR_RA] == 0.0 and m[C.SOURCE_ACCURACY] == 0.75
    a2o = build_attack("cba", {"source": None, "target": 5})
    m = backdoor_metrics(
        _TriggerDetector(), x, y, a2o, mean=[0.1], std=[0.3], device=torch.device("cpu")
    )
    assert m[C.BACKDOOR_ASR] == 1.0 and m[C.SOURCE_ACCURACY] == pytest.approx(
        0.8
    )  # 5 eligible (not the 5)
    flip = build_attack("label_flip", {"source": [0], "target": 5})
    m = backdoor_metrics(
        _TriggerDetector(), x, y, flip, mean=[0.1], std=[0.3], device=torch.device("cpu")
    )
    assert m[C.BACKDOOR_ASR] == 0.0 and m[C.BACKDOOR_RA] == 0.75  # clean images, no trigger


def test_components_follow_the_config() -> None:
    def names(overrides: list[str]) -> list[str]:
        return [c.name for c in build_components(compose(overrides))]

    assert names([]) == ["validation"]  # dataset.val_fraction > 0 by default
    assert names(["dataset.val_fraction=0"]) == []
    assert names(["attack=cba"]) == ["validation", "backdoor"]
    assert names(["strategy=fltrust"]) == ["validation", "backdoor", "fltrust"]
    assert names(["dataset=mnist", "defense=flain"]) == ["validation", "backdoor", "defense"]
    assert names(["query=entropy", "attack=cba", "defense=flain", "strategy=fltrust"]) == [
        "validation",
        "backdoor",
        "fltrust",
        "fal",
        "defense",
    ]


def test_backdoor_tags_are_tensorboard_scalars() -> None:
    assert C.TB_TAGS[C.BACKDOOR_MA] == "backdoor/ma" and C.TB_TAGS[C.BACKDOOR_ASR] == "backdoor/asr"


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            ["attack=cba", "attack.mcr=-0.1"],
            r"invalid attack.mcr=-0.1: allowed a number in \[0, 1\)",
        ),
        (["attack.name=trojan"], r"unknown attack 'trojan': valid attack names are cba, dba"),
        (
            ["defense.name=prune"],
            r"unknown defense 'prune': valid defense names are dormant_pruning, flain, none",
        ),
        (
            ["dataset=mnist", "defense=flain", "defense.mode=strict"],
            r"invalid defense.mode='strict'",
        ),
        (
            ["dataset=mnist", "defense=flain", "+defense.k=1"],
            r"invalid defense parameter 'k' for defense 'flain'",
        ),
        (["defense=flain"], r"no threshold schedule for dataset 'digits'"),
        (["strategy=rlr", "strategy.threshold=-1"], r"invalid strategy.threshold=-1"),
        (["strategy=norm_clipping", "strategy.clip_norm=0"], r"invalid strategy.clip_norm=0"),
        (["strategy=dp_fixed_clipping", "strategy.inner=fedfoo"], r"unknown strategy 'fedfoo'"),
        (
            ["strategy=fltrust", "backdoor_eval.root_per_class=0"],
            r"invalid backdoor_eval.root_per_class=0",
        ),
        (["backdoor_eval.aux_source=train"], r"invalid backdoor_eval.aux_source='train'"),
    ],
)
def test_bad_backdoor_input_is_one_line(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg = compose(overrides)
        cfg.output_dir = "unused"
        prepare(cfg)
    assert "\n" not in str(info.value) and re.search(pattern, str(info.value)), str(info.value)


@pytest.mark.slow  # 9 s; attack x strategy x defense pairs run in test_combinations
def test_digits_run_with_attack_fltrust_and_flain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """End to end on the embedded digits (8x8): MA/ASR every evaluated round, theta_0 stored,
    FLAIN logged in the summary, defense.json and TensorBoard; exact attackers per round."""
    import json

    from fedsim.outputs import read_metrics
    from fedsim.runner import run

    cfg = compose(
        [
            "rounds=2",
            "num_clients=10",
            "clients_per_round=5",
            "strategy=fltrust",
            "attack=cba",
            "attack.image_size=8",
            "attack.trigger_size=2",
            "attack.trigger_pos=[6,6]",
            "attack.mcr=0.4",
            "defense=flain",
            "defense.k_init=0.01",
            "defense.k_step=0.01",
            "defense.k_cap=1",
            "defense.tolerance=0.02",
            "backdoor_eval.aux_per_class=10",
            "backdoor_eval.root_per_class=5",
            "progress=false",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    summary = run(cfg)
    records = read_metrics(tmp_path / "run")
    assert all(r[C.BACKDOOR_ASR] is not None and r[C.BACKDOOR_MA] is not None for r in records)
    assert all(len(r[C.MALICIOUS_SAMPLED]) == 2 for r in records)  # floor(4 * 5 / 10)
    assert (tmp_path / "run" / C.INITIAL_MODEL_FILE).is_file()
    d = json.loads((tmp_path / "run" / C.DEFENSE_FILE).read_text())
    assert d == summary["defense"] and d["name"] == "flain" and d["k_star"] is not None
    assert d["ma_before"] == pytest.approx(summary["final_ma"])
    assert {"asr_after", "ma_after", "flip_count"} <= set(d)
    cfg2 = cfg.copy()
    cfg2.output_dir = str(tmp_path / "run2")
    again = run(cfg2)  # same seed, same config -> same metrics
    assert again["final_asr"] == summary["final_asr"] and again["final_ma"] == summary["final_ma"]


def test_attack_checked_against_the_dataset_before_work() -> None:
    for overrides, pattern in (
        (["attack=cba"], r"invalid attack.image_size=28: the dataset's images are 8x8"),
        (
            [
                "attack=cba",
                "attack.image_size=8",
                "attack.trigger_size=2",
                "attack.trigger_pos=[6,6]",
                "attack.target=12",
            ],
            r"invalid attack.target/source=\[12, 0\]",
        ),
    ):
        cfg = compose(overrides)
        cfg.output_dir = "unused"
        with pytest.raises(ConfigError, match=pattern):
            prepare(cfg)
