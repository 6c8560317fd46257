"""Hand-computed cases for ``clients.query.kafal`` (docs/mutation.md): KSAS per row on rows of
very different scales, the ``log n_c`` shift with one and with no labeled sample, no warning for
absent classes, and the strategy's checks, models and class-count length."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from clients.query import ModelOutputs, QueryInputs
from clients.query.kafal import KafalQuery, ksas_scores
from fedsim.errors import ConfigError

# softmax([0, -1]) = [s, 1 - s]; its symmetric KL to [0.5, 0.5] is 0.5 * (s - 0.5) * ln(s / (1 - s))
# = 0.5 * (s - 0.5), since ln(s / (1 - s)) is the logit gap 1
_S = math.e / (1.0 + math.e)
_SKL = 0.5 * (_S - 0.5)

LOCAL = np.array([[0.0, -1.0], [-800.0, -801.0], [0.0, 0.0]])  # row 1 = row 0 shifted by -800
GLOBAL = np.zeros((3, 2))


def test_ksas_is_per_row_and_stable_on_large_logits() -> None:
    scores = ksas_scores(LOCAL, GLOBAL, np.array([3, 3]))
    assert scores.shape == (3,)
    assert np.allclose(scores, [_SKL, _SKL, 0.0], rtol=0, atol=1e-12)


def test_ksas_no_labels_means_no_shift() -> None:
    scores = ksas_scores(LOCAL, GLOBAL, np.array([0, 0]))
    assert np.allclose(scores, [_SKL, _SKL, 0.0], rtol=0, atol=1e-12)


def test_ksas_shift_by_log_counts() -> None:
    # counts [1, 3]: local [0, 0] -> p = [1/4, 3/4]; global [0, -1] -> logit gap ln 3 - 1, so
    # p_b1 = (3/e) / (1 + 3/e); the symmetric KL is 0.5 * (3/4 - p_b1) * 1
    pb1 = (3 / math.e) / (1 + 3 / math.e)
    scores = ksas_scores(np.array([[0.0, 0.0]]), np.array([[0.0, -1.0]]), np.array([1, 3]))
    assert scores[0] == pytest.approx(0.5 * (0.75 - pb1), abs=1e-12)


def test_ksas_single_labeled_sample_masks_the_other_classes() -> None:
    # one labeled sample (class 0): class 1 has n_c = 0, both predictions become [1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log(0) for the absent class must not warn
        scores = ksas_scores(LOCAL, GLOBAL, np.array([1, 0]))
    assert scores.tolist() == [0.0, 0.0, 0.0]


def test_kafal_modes_message_and_models() -> None:
    assert KafalQuery().models() == {"global", "last_local"}
    assert KafalQuery(local_model="local_only").models() == {"global", "local_only"}
    with pytest.raises(ConfigError) as info:
        KafalQuery(local_model="global")
    assert str(info.value) == "invalid query.local_model='global': allowed local_only, last_local"


def test_kafal_select_counts_every_class() -> None:
    # 3 classes, labeled rows 0, 1 with classes 0, 1 (class 2 never labeled: counts [1, 1, 0])
    local = np.log(np.array([[0.4, 0.3, 0.3]] * 2 + [[0.5, 0.25, 0.25], [0.6, 0.2, 0.2]]))
    glob = np.log(np.array([[0.4, 0.3, 0.3]] * 2 + [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]]))
    outs = {
        "last_local": ModelOutputs(log_probs=local, features=np.zeros((4, 1))),
        "global": ModelOutputs(log_probs=glob, features=np.zeros((4, 1))),
    }
    inp = QueryInputs(
        labeled=np.array([True, True, False, False]),
        labels=np.array([0, 1, -1, -1]),
        budget=1,
        num_classes=3,
        rng=np.random.default_rng(0),
        outputs=lambda mode: outs[mode],
    )
    assert KafalQuery().select(inp).tolist() == [3]
