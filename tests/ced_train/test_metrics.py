"""AP and mAP equal scikit-learn's average_precision_score (ties, no-positive classes)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from ced_train.metrics import average_precision, mean_average_precision


def _sklearn_per_class(scores, targets):
    return np.array([
        average_precision_score(targets[:, c], scores[:, c]) if targets[:, c].any() else np.nan
        for c in range(targets.shape[1])
    ])


@pytest.mark.parametrize("levels", [None, 2, 5])  # None: continuous scores; else heavy ties
def test_equals_sklearn_on_random_data(levels):
    rng = np.random.default_rng(levels or 0)
    for _ in range(30):
        n, c = rng.integers(1, 80), rng.integers(1, 8)
        scores = rng.random((n, c))
        if levels:
            scores = np.floor(scores * levels) / levels
        targets = rng.random((n, c)) < rng.uniform(0.05, 0.6)
        targets[:, 0] = False  # always one class without positives
        m, per_class = mean_average_precision(scores, targets)
        expected = _sklearn_per_class(scores, targets)
        np.testing.assert_allclose(per_class, expected, rtol=0, atol=1e-12)
        assert np.isnan(per_class[0])
        if np.isnan(expected).all():
            assert np.isnan(m)
        else:
            assert m == pytest.approx(np.nanmean(expected), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=30)
    .filter(lambda rows: any(t for _, t in rows))
)
def test_single_class_equals_sklearn_with_ties(data):
    scores = np.array([s / 4 for s, _ in data])
    targets = np.array([t for _, t in data], dtype=int)
    assert average_precision(scores, targets) == pytest.approx(
        average_precision_score(targets, scores), abs=1e-12)


@pytest.mark.parametrize(
    "scores, targets, expected",
    [
        ([0.9, 0.8, 0.3], [1, 0, 1], 0.5 * 1 + 0.5 * 2 / 3),
        ([0.5, 0.5, 0.5], [1, 0, 0], 1 / 3),  # one threshold: precision of the whole tie
        ([0.1, 0.2, 0.3], [0, 0, 1], 1.0),
        ([0.3, 0.2, 0.1], [0, 0, 1], 1 / 3),
        ([0.7, 0.7, 0.1], [True, False, True], 0.5 * 0.5 + 0.5 * 2 / 3),
    ],
)
def test_known_values(scores, targets, expected):
    assert average_precision(scores, targets) == pytest.approx(expected, abs=1e-15)


def test_no_positives_is_nan():
    assert np.isnan(average_precision([0.1, 0.9], [0, 0]))
    m, per_class = mean_average_precision(np.random.default_rng(0).random((4, 3)), np.zeros((4, 3)))
    assert np.isnan(m) and np.isnan(per_class).all() and per_class.shape == (3,)


@pytest.mark.parametrize(
    "scores, targets, message",
    [
        ([[0.1, 0.2]], [[1, 0, 0]], r"scores and targets differ in shape: \(1, 2\) vs \(1, 3\)"),
        ([[np.nan, 0.2]], [[1, 0]], "scores must be finite; found NaN or Inf"),
        ([[0.1, 0.2]], [[2, 0]], r"targets must be binary \(0/1 or bool\)"),
        ([0.1, 0.2], [1, 0], r"expected \[N, C\] scores, got shape \(2,\)"),
    ],
)
def test_bad_inputs(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        mean_average_precision(scores, targets)


def test_average_precision_rejects_2d():
    with pytest.raises(ValueError, match=r"expected 1-D scores, got shape \(1, 2\)"):
        average_precision([[0.1, 0.2]], [[1, 0]])
