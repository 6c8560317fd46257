"""Hand-computed cases for :mod:`strategies.robust_math` that the mutation run (docs/mutation.md)
showed were missing: equality at thresholds, small norms (below 1), zero weights, the exact noise
draw, FoolsGold's pardoning and logit offset, RLR's threshold at equality."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from strategies import robust_math as rm


def test_flatten_casts_every_layer_to_float64() -> None:
    U = rm.flatten([[np.array([1, 2]), np.array([[3]])]])  # integer layers only
    assert U.dtype == np.float64 and U.tolist() == [[1.0, 2.0, 3.0]]
    assert rm.flatten([[np.array([0.5], dtype=np.float32)]]).dtype == np.float64


def test_unflatten_names_both_sizes_on_mismatch() -> None:
    with pytest.raises(ValueError, match="vector of size 5 does not match arrays of total size 4"):
        rm.unflatten(np.zeros(5), [np.zeros(4)])


def test_weighted_mean_cases() -> None:
    U = np.array([[1.0, 10.0], [3.0, 30.0]])
    assert rm.weighted_mean(U).tolist() == [2.0, 20.0]  # None: uniform
    assert rm.weighted_mean(U, [3, 1]).tolist() == [1.5, 15.0]
    # weights summing to less than 1 are still a mean, not "no weight"
    assert rm.weighted_mean(U, [0.25, 0.25]).tolist() == [2.0, 20.0]
    # all-zero weights: a zero update of the right size, never 0/0
    z = rm.weighted_mean(U, [0, 0])
    assert z.shape == (2,) and z.tolist() == [0.0, 0.0]
    # integer sample counts are summed in float64 (no int64 overflow to a negative total)
    big = rm.weighted_mean(U, [2**62, 2**62])
    assert big.tolist() == [2.0, 20.0]


def test_clip_rows_on_norms_below_one() -> None:
    # ||(0.3, 0.4)|| = 0.5, clipped to 0.25: factor 0.5
    out = rm.clip_rows(np.array([[0.3, 0.4], [0.0, 0.0]]), 0.25)
    assert np.allclose(out, [[0.15, 0.2], [0.0, 0.0]])


def test_norm_clipping_weights_and_exact_noise() -> None:
    U = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert rm.norm_clipping(U, [3, 1], clip_norm=10.0).tolist() == [0.75, 0.25]
    noisy = rm.norm_clipping(U, [3, 1], clip_norm=10.0, noise_std=0.5, rng=np.random.default_rng(5))
    expected = np.array([0.75, 0.25]) + np.random.default_rng(5).normal(0.0, 0.5, size=2)
    assert np.allclose(noisy, expected)
    # without an rng the draw is seeded with 0 (reproducible)
    default = rm.norm_clipping(U, [3, 1], clip_norm=10.0, noise_std=0.5)
    assert np.allclose(default, [0.75, 0.25] + np.random.default_rng(0).normal(0.0, 0.5, size=2))


def test_cosine_matrix_small_norms_and_exact_bounds() -> None:
    # rows of norm < 1 are normalised (the 1e-12 floor only guards zero rows)
    c = rm.cosine_matrix(np.array([[0.3, 0.4], [0.6, 0.8], [0.0, 0.0]]))
    assert np.allclose(c, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    # (0.7, 0.7) / its norm dotted with itself is 1.0000000000000002 in float64: clipped to [-1, 1]
    c = rm.cosine_matrix(np.array([[0.7, 0.7], [-0.7, -0.7]]))
    assert c.tolist() == [[1.0, -1.0], [-1.0, 1.0]]


def test_fltrust_hand_computed_small_norms() -> None:
    # g0 = (0.5, 0); cos = (1, 1/sqrt2, -1) -> TS = (1, 1/sqrt2, 0); each u rescaled to norm 0.5
    U = np.array([[0.5, 0.0], [0.3, 0.3], [-0.1, 0.0]])
    agg, ts = rm.fltrust(U, np.array([0.5, 0.0]))
    r = 1 / math.sqrt(2)
    assert np.allclose(ts, [1.0, r, 0.0])
    # (1 * (0.5, 0) + r * (0.5 r, 0.5 r)) / (1 + r) = (0.75, 0.25) / (1 + r)
    assert np.allclose(agg, np.array([0.75, 0.25]) / (1 + r))
    # one client with trust 0.5 (< 1 in total): its update rescaled to ||g0||, not dropped
    agg, ts = rm.fltrust(np.array([[1.0, math.sqrt(3)]]), np.array([0.5, 0.0]))
    assert np.allclose(ts, [0.5]) and np.allclose(agg, [0.25, 0.25 * math.sqrt(3)])
    # every trust zero: a zero update of the model's size, not NaN
    agg, ts = rm.fltrust(np.array([[-1.0, 0.0, 0.0]]), np.array([1.0, 0.0, 0.0]))
    assert agg.shape == (3,) and agg.tolist() == [0.0, 0.0, 0.0] and ts.tolist() == [0.0]


def test_flame_accept_small_and_majority_cases() -> None:
    two = rm.flame_accept(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    assert two.dtype == bool and two.tolist() == [True, True]  # under 3 clients: all kept
    # 3 clients: min_cluster_size 2; the opposite one is out
    three = rm.flame_accept(np.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]]))
    assert three.tolist() == [True, True, False]
    # 3 near x, 2 near z: only the majority (3 = 5 // 2 + 1) forms a cluster
    five = np.array([[1.0, 0, 0], [1, 0.1, 0], [1, 0, 0.1], [0, 0, 1], [0, 0.1, 1]])
    assert rm.flame_accept(five).tolist() == [True, True, True, False, False]
    # 5 similar + 1 opposite: the 5 are one cluster (HDBSCAN on the cosine distances)
    six = np.array(
        [[1.0, 0, 0], [1, 0.1, 0], [1, 0, 0.1], [1, 0.1, 0.1], [1, -0.1, 0], [-1, -1, 0]]
    )
    assert rm.flame_accept(six).tolist() == [True] * 5 + [False]
    # every pair dissimilar: the least dissimilar pair (cos -0.26 vs -0.35, -0.75) is the majority
    spread = np.array(
        [[-1.31, -0.76, -0.13, -0.06], [1.29, -1.01, 0.35, -0.51], [1.37, 2.53, 0.3, 1.67]]
    )
    assert rm.flame_accept(spread).tolist() == [False, True, True]


def test_flame_exact_noise_and_default_lambda() -> None:
    U = np.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
    accepted = np.array([True, True, False])
    s = float(np.median(np.linalg.norm(U, axis=1)))  # 1.0
    clean = rm.clip_rows(U[accepted], s).mean(0)
    agg, acc = rm.flame(U, rng=np.random.default_rng(3))  # default lambda 0.001
    assert acc.tolist() == accepted.tolist()
    assert np.allclose(agg, clean + np.random.default_rng(3).normal(0.0, 0.001 * s, size=2))
    agg, _ = rm.flame(U, noise_lambda=0.5)  # no rng: seeded with 0
    assert np.allclose(agg, clean + np.random.default_rng(0).normal(0.0, 0.5 * s, size=2))
    # noise scales with the median norm S (here 2), not 1 / S
    agg, _ = rm.flame(2 * U, noise_lambda=0.5, rng=np.random.default_rng(3))
    assert np.allclose(agg, 2 * clean + np.random.default_rng(3).normal(0.0, 1.0, size=2))


def test_foolsgold_pardoning_and_logit_offset_by_hand() -> None:
    # h0 = e1, h1 at cos 0.75 to h0, h2 = e2 (cos(h1, h2) = s = sqrt(1 - 0.75^2)).
    # v = (0.75, 0.75, s); pardon cs[2, 1] *= s / 0.75 -> s^2 / 0.75 = 0.583333;
    # alpha = (0.25, 0.25, 0.416667) / 0.416667 = (0.6, 0.6, 1 -> 0.99);
    # weight = ln(0.6 / 0.4) + 0.5 = 0.905465 for h0, h1; ln(99) + 0.5 clipped to 1 for h2.
    s = math.sqrt(1 - 0.75**2)
    H = np.array([[1.0, 0.0], [0.75, s], [0.0, 1.0]])
    w = rm.foolsgold_weights(H)
    assert np.allclose(w, [math.log(1.5) + 0.5, math.log(1.5) + 0.5, 1.0])
    # kappa scales the logit: 0.1 * (ln 99 + 0.5) = 0.50951 for the most distinct client
    w = rm.foolsgold_weights(H, kappa=0.1)
    assert np.allclose(w, [0.1 * (math.log(1.5) + 0.5), 0.1 * (math.log(1.5) + 0.5), 0.50951199])


def test_foolsgold_sybils_limits_and_shapes() -> None:
    sybils = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log(0) for the sybils is silenced, not warned
        w = rm.foolsgold_weights(sybils, kappa=0.1)
    assert np.allclose(w, [0.0, 0.0, 0.1 * (math.log(99) + 0.5)])
    # kappa 0: 0 * -inf is NaN for the sybils, which counts as weight 0
    with np.errstate(invalid="ignore"):
        assert rm.foolsgold_weights(sybils, kappa=0.0).tolist() == [0.0, 0.0, 0.0]
    # all identical directions: everyone is a sybil
    same = rm.foolsgold_weights(np.array([[1.0, 0.0], [2.0, 0.0]]))
    assert same.shape == (2,) and same.tolist() == [0.0, 0.0]
    one = rm.foolsgold_weights(np.array([[1.0, 2.0]]))
    assert one.shape == (1,) and one.tolist() == [1.0]


def test_foolsgold_four_clients_pinned() -> None:
    # integer histories where pardoning and both clips act; checked against a plain-loop
    # evaluation of the docstring formula (alpha = (0.073, 0.073, 0.99, 0.387) after scaling)
    H = np.array([[3.0, 0, 1], [3, -1, 2], [-2, -1, 1], [1, -2, 1]])
    with np.errstate(all="ignore"):
        w = rm.foolsgold_weights(H)
    assert np.allclose(w, [0.0, 0.0, 1.0, 0.03836237], atol=1e-8)


def test_rlr_threshold_is_inclusive_and_weights_count() -> None:
    # coordinate 0: signs (+, +, -) -> |sum| = 1; coordinate 1: (+, +, +) -> 3
    U = np.array([[1.0, 1.0], [1.0, 2.0], [-1.0, 3.0]])
    agg, lr = rm.rlr(U, [1, 1, 2], threshold=1, server_lr=0.5)
    assert lr.tolist() == [0.5, 0.5]  # 1 >= 1: agreement at the threshold keeps +lr
    # weighted mean (1 + 1 - 2) / 4 = 0, (1 + 2 + 6) / 4 = 2.25
    assert agg.tolist() == [0.0, 0.5 * 2.25]
    agg, lr = rm.rlr(U, [1, 1, 2], threshold=2, server_lr=0.5)
    assert lr.tolist() == [-0.5, 0.5] and agg.tolist() == [-0.0, 1.125]
