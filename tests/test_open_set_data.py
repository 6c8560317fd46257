"""Open-set pools (OS-FAL spec 1.1-1.5, 6): class split, cross dataset, partitions, statistics,
the detection test set and the ``open_set`` checks, on hand-made 1x4x4 datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fedsim.data.datasets import DatasetArrays, _build, _channel_stats
from fedsim.data.open_set import (
    OPEN_SET_STREAM,
    build_open_set,
    check_open_set,
    known_classes,
    partition_open_set,
    pool_stats,
)
from fedsim.data.open_set_config import mode_keys
from fedsim.data.partition import partition_dataset
from fedsim.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "open_set"


def _images(n: int, marker: int, rng: np.random.Generator, bright: bool = False) -> torch.Tensor:
    """``uint8 [n, 1, 4, 4]``: pixel 0 = ``marker``, pixels 1-2 = the index (two bytes), the
    rest random (brighter with ``bright``)."""
    low = 128 if bright else 0
    x = rng.integers(low, low + 128, size=(n, 1, 4, 4), dtype=np.uint8)
    x[:, 0, 0, 0] = marker
    x[:, 0, 0, 1] = np.arange(n) % 256
    x[:, 0, 0, 2] = np.arange(n) // 256
    return torch.from_numpy(x)


def _decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(marker, index) of every image made by :func:`_images`."""
    a = x.numpy().astype(np.int64)
    return a[:, 0, 0, 0], a[:, 0, 0, 1] + 256 * a[:, 0, 0, 2]


def _dataset(
    name: str, train_y: list[int], test_y: list[int], num_classes: int, marker: int, seed: int
) -> DatasetArrays:
    rng = np.random.default_rng(seed)
    bright = marker == 2
    tx = _images(len(train_y), marker, rng, bright)
    vx = _images(len(test_y), marker + 10, rng, bright)
    return _build(name, tx, train_y, vx, test_y, num_classes)


def _labels(counts: list[int], seed: int) -> list[int]:
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(y).tolist()


# known dataset: 5 classes; test: classes 0-2 have 30 images, 3-4 have 20
BASE = _dataset("base", _labels([12, 9, 7, 8, 4], 0), _labels([10, 10, 10, 10, 10], 1), 5, 1, 0)
TEN = _dataset("ten", _labels([3] * 10, 6), _labels([1] * 10, 7), 10, 1, 3)
# unknown dataset: 2 classes, same image shape
OTHER = _dataset("other", _labels([30, 20], 2), _labels([15, 25], 3), 2, 2, 1)


def _preset(name: str) -> dict[str, Any]:
    """The group's yaml (the one source of its defaults) as a plain dict."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert isinstance(raw, dict)
    return {str(k): v for k, v in raw.items()}


def _split(**kw: Any) -> dict[str, Any]:
    return {**_preset("class_split"), **kw}


def _cross(**kw: Any) -> dict[str, Any]:
    return {**_preset("cross_dataset"), **kw}


# --- class split ----------------------------------------------------------------------------------


def test_class_split_remaps_known_and_marks_the_rest_unknown() -> None:
    od = build_open_set(BASE, _split(num_known=3), seed=0)
    src = BASE.train_y.numpy()
    y = od.data.train_y.numpy()
    assert od.known == (0, 1, 2) and od.num_known == 3 and od.data.num_classes == 3
    assert od.num_source_classes == 5 and np.array_equal(od.source_y, src)
    assert od.source_y.dtype == np.int64 and od.data.train_y.dtype == torch.int64
    assert set(y.tolist()) == {0, 1, 2, 3}
    assert int((y == 3).sum()) == 8 + 4  # the samples of source classes 3 and 4
    assert np.array_equal(y[src < 3], src[src < 3])
    assert np.array_equal(od.is_unknown, src >= 3)
    assert od.data.train_x is BASE.train_x  # no copy of the pool
    assert (od.data.mean, od.data.std) == (BASE.mean, BASE.std)
    # the test split: known classes only, remapped, the images of those samples in order
    ty = BASE.test_y.numpy()
    keep = ty < 3
    assert len(od.data.test_y) == 30 and set(od.data.test_y.tolist()) == {0, 1, 2}
    assert np.array_equal(od.data.test_y.numpy(), ty[keep])
    assert torch.equal(od.data.test_x, BASE.test_x[torch.from_numpy(keep)])
    assert od.detection_x is None and od.detection_known is None


def test_explicit_known_classes_win_and_map_in_sorted_order() -> None:
    spec = _split(num_known=2, known_classes=[3, 1], class_order="seeded")
    assert known_classes(spec, 5) == [1, 3]
    od = build_open_set(BASE, spec, seed=0)
    lut = {1: 0, 3: 1, 0: 2, 2: 2, 4: 2}
    assert od.data.train_y.tolist() == [lut[c] for c in BASE.train_y.tolist()]
    test = [lut[c] for c in BASE.test_y.tolist() if c in (1, 3)]
    assert od.data.test_y.tolist() == test and od.known == (1, 3)
    # without num_known, its value is the list's length
    assert known_classes(_split(num_known=3, known_classes=[4, 0, 2]), 5) == [0, 2, 4]


def test_the_seeded_class_order_depends_on_split_seed_only() -> None:
    spec = _split(num_known=6, class_order="seeded", split_seed=1)
    expect = sorted(np.random.default_rng(1).permutation(10)[:6].tolist())
    assert known_classes(spec, 10) == expect and expect != list(range(6))
    assert known_classes(_split(num_known=6, class_order="seeded", split_seed=2), 10) != expect
    assert known_classes(_split(num_known=6), 10) == list(range(6))  # natural is the default
    base = _dataset("ten", _labels([5] * 10, 4), _labels([3] * 10, 5), 10, 1, 2)
    runs = [build_open_set(base, spec, seed=s) for s in (0, 1, 7)]
    assert {od.known for od in runs} == {tuple(expect)}
    assert all(np.array_equal(od.data.train_y, runs[0].data.train_y) for od in runs)


# --- cross dataset --------------------------------------------------------------------------------


def _check_cross_pool(od: Any, n_kn: int, n_unk: int, seed: int) -> None:
    marker, idx = _decode(od.data.train_x)
    # known first (the base images), then unknown (the other dataset's)
    assert marker.tolist() == [1] * n_kn + [2] * n_unk
    rng = np.random.default_rng([seed, OPEN_SET_STREAM, 0])
    assert idx[:n_kn].tolist() == sorted(rng.permutation(len(BASE.train_y))[:n_kn].tolist())
    assert idx[n_kn:].tolist() == sorted(rng.permutation(len(OTHER.train_y))[:n_unk].tolist())
    src = od.source_y
    assert src[:n_kn].tolist() == BASE.train_y.numpy()[idx[:n_kn]].tolist()
    assert src[n_kn:].tolist() == (5 + OTHER.train_y.numpy()[idx[n_kn:]]).tolist()
    y = od.data.train_y.numpy()
    assert y[:n_kn].tolist() == src[:n_kn].tolist() and set(y[n_kn:].tolist()) == {5}


def test_cross_dataset_pool_counts_source_ids_and_statistics() -> None:
    spec = _cross(unknown_ratio=0.4)
    od = build_open_set(BASE, spec, seed=3, unknown=OTHER)
    assert len(od.data.train_y) == 40  # N = the known train split's size
    _check_cross_pool(od, 24, 16, seed=3)  # round(0.6 * 40) known
    assert od.known == (0, 1, 2, 3, 4) and od.data.num_classes == 5
    assert od.num_source_classes == 7 and set(od.source_y[24:].tolist()) == {5, 6}
    assert torch.equal(od.data.test_x, BASE.test_x) and torch.equal(od.data.test_y, BASE.test_y)
    # normalised with the known images' statistics, not the mixed pool's
    assert (od.data.mean, od.data.std) == _channel_stats(od.data.train_x[:24])
    assert od.data.mean[0] < _channel_stats(od.data.train_x)[0][0] - 0.1
    # pool_size, rounding, determinism and the seed's effect
    small = build_open_set(BASE, _cross(unknown_ratio=0.3), seed=3, unknown=OTHER, pool_size=25)
    assert len(small.source_y) == 25
    _check_cross_pool(small, 18, 7, seed=3)  # round(0.7 * 25) = round(17.5) = 18
    again = build_open_set(BASE, spec, seed=3, unknown=OTHER)
    other = build_open_set(BASE, spec, seed=4, unknown=OTHER)
    assert torch.equal(again.data.train_x, od.data.train_x)
    assert not torch.equal(other.data.train_x, od.data.train_x)


def test_cross_dataset_refuses_bad_unknown_data_in_one_line() -> None:
    wide = _build(
        "wide",
        torch.zeros(10, 1, 5, 5, dtype=torch.uint8),
        [0] * 10,
        torch.zeros(2, 1, 5, 5),
        [0, 0],
        1,
    )
    with pytest.raises(ConfigError, match=r"open_set.unknown_dataset=.*\(1, 4, 4\)") as e:
        build_open_set(BASE, _cross(), seed=0, unknown=wide)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="needs 48 of base") as e:
        build_open_set(BASE, _cross(unknown_ratio=0.2), seed=0, unknown=OTHER, pool_size=60)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="and 54 of other"):
        build_open_set(BASE, _cross(unknown_ratio=0.9), seed=0, unknown=OTHER, pool_size=60)
    with pytest.raises(ValueError, match="needs the unknown dataset"):
        build_open_set(BASE, _cross(), seed=0)
    with pytest.raises(ValueError, match="none"):
        build_open_set(BASE, {"name": "none", "mode": "none"}, seed=0)


# --- detection test set ---------------------------------------------------------------------------


def test_the_detection_set_pairs_known_test_images_with_seeded_unknowns() -> None:
    ty = BASE.test_y.numpy()
    # K = 3: 30 known test images, only 20 unknown ones -> all of them
    od = build_open_set(BASE, _split(num_known=3, detection_test=True), seed=0)
    assert od.detection_x is not None and od.detection_known is not None
    assert od.detection_known.dtype == bool
    assert od.detection_known.tolist() == [True] * 30 + [False] * 20
    assert torch.equal(od.detection_x[:30], od.data.test_x)
    _, idx = _decode(od.detection_x[30:])
    assert sorted(idx.tolist()) == np.flatnonzero(ty >= 3).tolist()
    # K = 1: 10 known, 40 unknown -> a seeded 10 of the unknowns, distinct, of unknown classes
    one = build_open_set(BASE, _split(num_known=1, detection_test=True), seed=0)
    assert one.detection_known is not None and one.detection_x is not None
    assert one.detection_known.tolist() == [True] * 10 + [False] * 10
    _, idx = _decode(one.detection_x[10:])
    assert len(set(idx.tolist())) == 10 and set(ty[idx].tolist()) <= {1, 2, 3, 4}
    pick = np.random.default_rng([0, OPEN_SET_STREAM, 1]).permutation(40)[:10]
    assert idx.tolist() == np.flatnonzero(ty >= 1)[np.sort(pick)].tolist()
    again = build_open_set(BASE, _split(num_known=1, detection_test=True), seed=0)
    other = build_open_set(BASE, _split(num_known=1, detection_test=True), seed=1)
    assert again.detection_x is not None and other.detection_x is not None
    assert torch.equal(again.detection_x, one.detection_x)
    assert not torch.equal(other.detection_x, one.detection_x)
    # cross dataset: the 50 base test images plus 40 of the other dataset's 40 test images
    cross = build_open_set(BASE, _cross(detection_test=True), seed=0, unknown=OTHER)
    assert cross.detection_x is not None and cross.detection_known is not None
    assert cross.detection_known.tolist() == [True] * 50 + [False] * 40
    marker, _ = _decode(cross.detection_x)
    assert marker.tolist() == [11] * 50 + [12] * 40  # the test images' markers


# --- partitions and statistics --------------------------------------------------------------------


def _big_pool(seed: int = 0) -> Any:
    base = _dataset("big", _labels([60, 50, 40, 30, 20, 100], seed), [0, 1], 6, 1, seed)
    return build_open_set(base, _split(num_known=4), seed=seed)


def _hand_stats(od: Any, part: np.ndarray) -> tuple[int, int, list[int]]:
    known = sum(1 for i in part if od.data.train_y[i] < od.num_known)
    unknown = sum(1 for i in part if od.source_y[i] not in od.known)
    hist = Counter(int(od.source_y[i]) for i in part)
    return known, unknown, [hist.get(c, 0) for c in range(od.num_source_classes)]


def test_the_joint_partition_runs_on_source_classes() -> None:
    od = _big_pool()
    params = {"alpha": 0.3, "min_partition_size": 5}
    parts = partition_open_set("dirichlet", params, od.source_y, od.is_unknown, 4, seed=2)
    expect = partition_dataset("dirichlet", od.source_y, 4, 2, params)
    assert all(np.array_equal(p, q) for p, q in zip(parts, expect, strict=True))
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
    y = od.data.train_y.numpy()
    shares = []
    for p in parts:
        st = pool_stats(y[p], od.source_y[p], 4, 6)
        known, unknown, hist = _hand_stats(od, p)
        assert (st["pool_size"], st["known"], st["unknown"]) == (len(p), known, unknown)
        assert st["unknown_share"] == pytest.approx(unknown / len(p))
        assert st["source_histogram"] == hist and len(st["label_histogram"]) == 5
        shares.append(st["unknown_share"])
    assert max(shares) - min(shares) > 0.05  # clients differ in their unknown share


def test_the_separate_partition_deals_unknowns_in_drawn_proportions() -> None:
    od = _big_pool()
    params = {"alpha": 0.5, "min_partition_size": 5}
    parts = partition_open_set(
        "dirichlet",
        params,
        od.source_y,
        od.is_unknown,
        5,
        seed=1,
        how="separate",
        unknown_alpha=0.4,
    )
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)
    kn = np.flatnonzero(~od.is_unknown)
    expect = partition_dataset("dirichlet", od.source_y[kn], 5, 1, params)
    for p, q in zip(parts, expect, strict=True):
        assert np.array_equal(p[~od.is_unknown[p]], kn[q])
    props = np.random.default_rng([1, OPEN_SET_STREAM, 2]).dirichlet(np.full(5, 0.4))
    counts = np.array([int(od.is_unknown[p].sum()) for p in parts])
    assert counts.sum() == 120  # source classes 4 and 5
    exact = props * 120
    assert np.all(np.abs(counts - exact) < 1)
    up = counts > np.floor(exact)  # largest remainders round up
    rest = exact - np.floor(exact)
    assert up.sum() == 120 - np.floor(exact).sum() and rest[up].min() >= rest[~up].max()
    joint = partition_open_set("dirichlet", params, od.source_y, od.is_unknown, 5, seed=1)
    assert any(not np.array_equal(p, q) for p, q in zip(parts, joint, strict=True))
    with pytest.raises(ConfigError, match="open_set.partition"):
        partition_open_set("iid", {}, od.source_y, od.is_unknown, 3, 0, how="mixed")
    with pytest.raises(ConfigError, match="open_set.unknown_alpha"):
        partition_open_set(
            "iid", {}, od.source_y, od.is_unknown, 3, 0, how="separate", unknown_alpha=0
        )


def test_pool_stats_by_hand() -> None:
    st = pool_stats(np.array([0, 1, 2, 2, 0]), np.array([0, 1, 3, 4, 0]), 2, 5)
    assert st == {
        "pool_size": 5,
        "known": 3,
        "unknown": 2,
        "unknown_share": 0.4,
        "label_histogram": [2, 1, 2],
        "source_histogram": [2, 1, 0, 1, 1],
    }
    empty = pool_stats(np.zeros(0, np.int64), np.zeros(0, np.int64), 2, 3)
    assert empty["unknown_share"] == 0.0 and empty["source_histogram"] == [0, 0, 0]


# --- the config group -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["none", "class_split", "cross_dataset"])
def test_the_presets_pass_hold_every_key_of_their_mode_and_document_them(preset: str) -> None:
    path = CONF / f"{preset}.yaml"
    node = _preset(preset)
    assert node["name"] == node["mode"] == preset
    check_open_set(node, 10)
    assert set(node) == set(mode_keys(preset))
    if preset != "none":  # the two modes share their common keys' defaults
        other = _preset("cross_dataset" if preset == "class_split" else "class_split")
        assert {k: node[k] for k in node if k in other and k not in ("name", "mode")} == {
            k: other[k] for k in node if k in other and k not in ("name", "mode")
        }
    text = path.read_text().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith(("#", "name:"))]
    assert all("#" in ln for ln in lines), "every key has a comment"
    if preset != "none":
        assert known_classes(node, 10) == (
            list(range(6)) if preset == "class_split" else list(range(10))
        )


def test_good_nodes_pass() -> None:
    check_open_set(None, 10)
    check_open_set({k: v for k, v in _split().items() if k != "mode"}, 10)  # mode from the name
    check_open_set(_split(num_known=9, known_classes=list(range(9))), 10)
    check_open_set(_cross(unknown_ratio=0.8, partition="separate", cycles=1, query_ratio=1), 10)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"mode": "bogus"}, "open_set.mode=.*none, class_split, cross_dataset"),
    (_split(num_known=0), "open_set.num_known"),
    (_split(num_known=10), r"open_set.num_known=10: allowed an integer in \[1, 9\]"),
    (_split(num_known=2.5), "open_set.num_known"),
    (_split(num_known=True), "open_set.num_known"),
    (_split(num_known="6"), "open_set.num_known"),
    (_split(num_known=3, known_classes=[0, 0, 1]), "open_set.known_classes.*distinct"),
    (_split(num_known=2, known_classes=[0, 10]), "open_set.known_classes"),
    (_split(num_known=2, known_classes=[0, -1]), "open_set.known_classes"),
    (_split(num_known=2, known_classes="01"), "open_set.known_classes"),
    (_split(num_known=2, known_classes=[0, 1.0]), "open_set.known_classes"),
    (_split(num_known=6, known_classes=[0, 1]), "open_set.known_classes.*num_known=6"),
    (_split(class_order="random"), "open_set.class_order"),
    (_split(split_seed="1"), "open_set.split_seed"),
    (_split(split_seed=1.5), "open_set.split_seed"),
    (_split(split_seed=-1), "open_set.split_seed"),
    (_cross(unknown_ratio=0), "open_set.unknown_ratio"),
    (_cross(unknown_ratio=1), "open_set.unknown_ratio"),
    (_cross(unknown_ratio="0.4"), "open_set.unknown_ratio"),
    (_cross(unknown_dataset=3), "open_set.unknown_dataset"),
    (_cross(unknown_dataset=""), "open_set.unknown_dataset"),
    (_split(partition="mixed"), "open_set.partition=.*joint, separate"),
    (_cross(unknown_alpha=0), "open_set.unknown_alpha"),
    (_cross(unknown_alpha=-1.0), "open_set.unknown_alpha"),
    (_split(unknown_alpha=float("nan")), "open_set.unknown_alpha"),
    (_split(detection_test="yes"), "open_set.detection_test"),
    (_cross(detection_test=1), "open_set.detection_test"),
    (_split(initial_ratio=0), "open_set.initial_ratio"),
    (_cross(initial_ratio=1.5), "open_set.initial_ratio"),
    (_split(query_ratio=0.0), "open_set.query_ratio"),
    (_split(cycles=0), "open_set.cycles"),
    (_cross(cycles=1.5), "open_set.cycles"),
    (_split(cycles=True), "open_set.cycles"),
    (_split(alpha=0.5), "unknown key open_set.alpha: allowed keys are name, mode, .*cycles"),
    ({"mode": "none", "foo": 1}, "unknown key open_set.foo"),
    (_cross(num_known=6), "open_set.num_known does not apply to mode 'cross_dataset'"),
    (_split(unknown_ratio=0.4), "open_set.unknown_ratio does not apply to mode 'class_split'"),
    ({"name": 3, "mode": "none"}, "open_set.name"),
    (
        {"mode": "class_split", "num_known": 3},
        "open_set mode 'class_split' is missing key.*known_classes",
    ),
    ({k: v for k, v in _cross().items() if k != "cycles"}, "missing key.*cycles: select the group"),
]


@pytest.mark.parametrize(("spec", "match"), BAD, ids=[m.split("=")[0][:40] for _, m in BAD])
def test_each_bad_value_is_refused_in_one_line(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        check_open_set(spec, 10)
    assert "\n" not in str(e.value)
    if spec.get("mode") != "none":  # build_open_set checks the node first
        with pytest.raises(ConfigError, match=match):
            build_open_set(TEN, spec, 0, unknown=OTHER)
