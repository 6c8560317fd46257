"""Features compose: every pair of the feature groups either runs with every metric each part
promises, or is refused before any work with one line.

The promised keys come from the components' own declarations (``promised``/``summary_promises``),
so a new component is covered as soon as it is registered and its group has a representative
here. The default run takes one representative per group and covers every pair of groups; the
slow run takes every option of every group in pairs, through the checks only, plus a second
representative per group run in pairs.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedsim import constants as C
from fedsim.config import CONF_DIR, compose
from fedsim.errors import ConfigError
from fedsim.runner import prepare, run
from server.components import promised_keys

BASE = [
    "num_clients=4",
    "clients_per_round=4",
    "rounds=1",
    "progress=false",
    "tensorboard=false",
    "local.epochs=1",
    "backdoor_eval.aux_per_class=5",
    "backdoor_eval.root_per_class=3",
]
#: group -> representative options with the overrides that make them fit digits' 8x8 images
REPRESENTATIVES: dict[str, list[list[str]]] = {
    "query": [["query=entropy", "fal.end_ratio=0.1"], ["query=fairfal", "fal.end_ratio=0.1"]],
    "attack": [
        ["attack=cba", "attack.image_size=8", "attack.trigger_size=2", "attack.trigger_pos=[5,5]"],
        ["attack=label_flip"],
    ],
    "defense": [["defense=dormant_pruning"], ["defense=dormant_pruning", "attack=none"]],
    "ssfl": [["ssfl=labels_at_server", "local=semifl"], ["ssfl=labels_at_client"]],
    "weak_labels": [["weak_labels=noisy", "weak_labels.rate=0.3"], ["weak_labels=partial"]],
    "local": [["local=gce"], ["local=fixmatch"]],
    "strategy": [["strategy=fltrust"], ["strategy=foolsgold"]],
}
GROUPS = sorted(REPRESENTATIVES)
PAIRS = list(itertools.combinations(GROUPS, 2))


def _outcome(overrides: list[str], out: Path) -> tuple[str, Any]:
    """``("refused", message)`` or ``("ran", (records, summary, cfg))``."""
    try:
        cfg = compose([*BASE, *overrides, f"output_dir={out}"])
        prepare(cfg)
    except ConfigError as e:
        return "refused", str(e)
    run(cfg)
    records = [json.loads(line) for line in (out / C.METRICS_FILE).read_text().splitlines()]
    summary = json.loads((out / C.SUMMARY_FILE).read_text())
    return "ran", (records, summary, cfg)


def _check(overrides: list[str], out: Path) -> str:
    kind, result = _outcome(overrides, out)
    if kind == "refused":
        assert "\n" not in result and len(result) < 600, result
        assert not out.exists(), f"{overrides}: refused after writing {out}"
        return kind
    records, summary, cfg = result
    rounds = [r for r in records if r.get(C.RECORD_KIND) != "stage"]
    evaluated = [r for r in rounds if C.EVAL_ACCURACY in r]
    assert evaluated, f"{overrides}: no evaluated round"
    round_keys, summary_keys = promised_keys(cfg)
    for r in evaluated:
        missing = ({C.EVAL_ACCURACY, C.EVAL_LOSS} | round_keys) - set(r)
        assert not missing, f"{overrides}: round {r[C.ROUND]} lacks {sorted(missing)}"
        for key in {C.EVAL_ACCURACY, C.EVAL_LOSS} | round_keys:
            value = r[key]
            if isinstance(value, float):
                assert math.isfinite(value), f"{overrides}: {key}={value} in round {r[C.ROUND]}"
    missing = ({C.FINAL_ACCURACY} | summary_keys) - set(summary)
    assert not missing, f"{overrides}: summary lacks {sorted(missing)}"
    assert math.isfinite(summary[C.FINAL_ACCURACY])
    return kind


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_pair_of_groups_runs_or_is_refused(a: str, b: str, tmp_path: Path) -> None:
    _check([*REPRESENTATIVES[a][0], *REPRESENTATIVES[b][0]], tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_second_representatives_in_pairs(a: str, b: str, tmp_path: Path) -> None:
    for i, j in ((0, 1), (1, 0), (1, 1)):
        _check([*REPRESENTATIVES[a][i], *REPRESENTATIVES[b][j]], tmp_path / f"run{i}{j}")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.slow
def test_every_option_pair_is_checked_with_one_line(tmp_path: Path) -> None:
    """Every option pair of two groups passes the checks or gets one line (the checks only: no
    run). Each option's group node is composed once and swapped into the base config (the groups
    hold no global keys, so this equals composing the pair)."""
    from fedsim.config import check_data, validate
    from fedsim.federation import build_federation

    base = compose([*BASE, f"output_dir={tmp_path}/x"])
    nodes = {g: {o: compose([f"{g}={o}"])[g] for o in _options(g)} for g in GROUPS}
    checked = refused = 0
    for a, b in PAIRS:
        for (x, node_a), (y, node_b) in itertools.product(nodes[a].items(), nodes[b].items()):
            cfg = base.copy()
            cfg[a], cfg[b] = node_a, node_b
            try:
                validate(cfg)
                check_data(cfg, build_federation(cfg).data)
            except ConfigError as e:
                refused += 1
                assert "\n" not in str(e), f"{a}={x} {b}={y}: {e}"
            checked += 1
    assert checked == sum(len(nodes[a]) * len(nodes[b]) for a, b in PAIRS)
    assert 0 < refused < checked


#: open-set FAL with each group's first representative (slow: 8 more end-to-end runs)
OPEN_SET = [
    "open_set=class_split",
    "query=lfosa",
    "open_set.cycles=1",
    "open_set.initial_ratio=0.05",
]


@pytest.mark.slow
@pytest.mark.parametrize("group", GROUPS)
def test_open_set_with_every_group_runs_or_is_refused(group: str, tmp_path: Path) -> None:
    rep = [o for o in REPRESENTATIVES[group][0] if not o.startswith(("query=", "fal."))]
    _check([*OPEN_SET, *rep], tmp_path / "run")
