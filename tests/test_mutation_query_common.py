"""Hand-computed cases for ``clients.query.common`` (docs/mutation.md): float64 arithmetic on
float32 model outputs, the one- and two-class margin, k-center's defaults, chunks and sentinels,
BADGE's embedding and the k-means++ seeding's branches."""

from __future__ import annotations

import numpy as np

from clients.query.common import (
    badge_embedding,
    entropy,
    kcenter_greedy,
    kmeans_pp_seeding,
    least_confidence,
    margin,
)

# 10000, 10001 and 10002 are exact in float32, their squares are not (ulp 8 near 1e8): in float32
# arithmetic every squared distance between them cancels to 0, in float64 it is exact.
_BIG = np.float32


def test_uncertainty_scores_are_float64_on_float32_outputs() -> None:
    p32 = np.array([[0.1, 0.9], [1.0, 1e-8]], dtype=np.float32)
    a, b = float(p32[0, 0]), float(p32[0, 1])
    h = entropy(p32)
    assert h.dtype == np.float64
    assert abs(h[0] - -(a * np.log(a) + b * np.log(b))) < 1e-15
    m = margin(p32)
    assert m.dtype == np.float64
    # 1 - 1e-8 rounds to 1.0 in float32
    assert m[1] == 1.0 - float(p32[1, 1])
    assert m[0] == b - a
    lc = least_confidence(p32)
    assert lc.dtype == np.float64
    assert lc.tolist() == [b, 1.0]


def test_margin_with_one_and_two_classes() -> None:
    assert margin(np.array([[0.7], [0.2]])).tolist() == [0.7, 0.2]
    assert np.allclose(margin(np.array([[0.2, 0.8], [0.5, 0.5]])), [0.6, 0.0])


def test_kcenter_default_first_pick_and_empty_result() -> None:
    pts = np.array([[0.0], [3.0], [1.0]])
    assert kcenter_greedy(pts, np.zeros((0, 1)), 2).tolist() == [0, 1]
    assert kcenter_greedy(pts, np.zeros((0, 1)), 2, first=2).tolist() == [2, 1]
    for centers in (np.zeros((0, 1)), pts[:1]):
        empty = kcenter_greedy(pts, centers, 0)
        assert empty.shape == (0,) and empty.dtype == np.int64
        assert np.arange(3)[empty].tolist() == []  # usable as an index


def test_kcenter_small_distances_and_picked_sentinel() -> None:
    # all squared distances < 1: the picks must still be excluded (sentinel -1) and not floored
    pts = np.array([[0.0], [0.1], [0.5], [0.3]])
    assert kcenter_greedy(pts, np.zeros((0, 1)), 4, first=0).tolist() == [0, 2, 3, 1]
    centers = np.array([[0.05]])
    assert kcenter_greedy(pts, centers, 2).tolist() == [2, 3]


def test_kcenter_chunks_cover_every_center() -> None:
    # two centers, chunk=1: the second center (at 10) makes point 2 near, so point 0 is farthest
    # (squared distances 16, 1, 1; with only the first center point 2 would be, at 81)
    pts = np.array([[-4.0], [1.0], [9.0]])
    centers = np.array([[0.0], [10.0]])
    assert kcenter_greedy(pts, centers, 1, chunk=1).tolist() == [0]
    assert kcenter_greedy(pts, centers, 3, chunk=1).tolist() == [0, 1, 2]


def test_kcenter_distances_in_float64_for_float32_points_and_centers() -> None:
    pts = np.array([[10000.0], [10001.0], [10002.0]], dtype=_BIG)
    assert kcenter_greedy(pts, np.zeros((0, 1)), 2, first=0).tolist() == [0, 2]
    # c = 10001: c^2 in float32 is 1 too small, which shrinks every distance to it by 1; point 0
    # is 4 (squared) from it, point 1 is 3.61 from the center at 0: point 0 is the farthest.
    centers = np.array([[0.0], [10001.0]], dtype=_BIG)
    assert kcenter_greedy(np.array([[10003.0], [1.9]]), centers, 1).tolist() == [0]


def test_badge_embedding_float32_probs_and_float_targets() -> None:
    h = np.array([[2.0, -1.0]])
    p32 = np.array([[1e-8, 1.0]], dtype=np.float32)
    e = badge_embedding(h, p32, np.array([0.0]))  # float labels are converted to int
    q = float(p32[0, 0])
    # block 0: h * (1 - q) with 1 - q in float64 (float32 would round it to 1.0)
    assert e.shape == (1, 4)
    assert e[0, 0] == 2.0 * (1.0 - q) and e[0, 0] != 2.0
    assert e[0, 2:].tolist() == [-2.0, 1.0]


def test_kmeanspp_k_zero_and_one() -> None:
    pts = np.array([[1.0], [-3.0], [2.0]])
    rng = np.random.default_rng(0)
    empty = kmeans_pp_seeding(pts, 0, rng)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert np.arange(3)[empty].tolist() == []
    assert kmeans_pp_seeding(pts, 1, rng).tolist() == [1]  # the largest norm


def test_kmeanspp_identical_points_draw_the_rest_uniformly() -> None:
    pts = np.zeros((4, 2))
    for seed in range(3):
        picks = kmeans_pp_seeding(pts, 4, np.random.default_rng(seed)).tolist()
        assert picks[0] == 0 and sorted(picks) == [0, 1, 2, 3]


def test_kmeanspp_second_pick_follows_small_d2() -> None:
    # first pick: position 1 (norm 0.1, ties to the lower position); then every other 0.1-point
    # is at distance 0 and the origin at 0.01 > 0: D^2 sampling must pick position 0
    pts = np.array([[0.0]] + [[0.1]] * 8)
    for seed in range(4):
        assert kmeans_pp_seeding(pts, 2, np.random.default_rng(seed)).tolist() == [1, 0]


def test_kmeanspp_second_pick_in_float64_for_float32_points() -> None:
    # first pick: position 0 (largest norm); the only point at distance > 0 is 10000 (4 in
    # float64, 0 in float32)
    pts = np.array([[10002.0]] * 8 + [[10000.0]], dtype=_BIG)
    for seed in range(4):
        assert kmeans_pp_seeding(pts, 2, np.random.default_rng(seed)).tolist() == [0, 8]


def test_kmeanspp_third_pick_skips_the_picked_points() -> None:
    # 100 (first) x5, 0 x5, 50: once 100 and a 0 are picked, only 50 is at distance > 0
    pts = np.array([[100.0]] * 5 + [[0.0]] * 5 + [[50.0]])
    for seed in range(6):
        picks = kmeans_pp_seeding(pts, 3, np.random.default_rng(seed)).tolist()
        assert picks[0] == 0
        if picks[1] != 10:
            assert 5 <= picks[1] < 10 and picks[2] == 10
        else:
            assert 5 <= picks[2] < 10
