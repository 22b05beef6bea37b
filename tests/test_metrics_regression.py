"""RegressionMetrics against scikit-learn, with labels far from zero and with rows taken back out."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, r2_score, root_mean_squared_error

from mle_stream.core.metrics.outcomes import RegressionOutcomes
from mle_stream.core.metrics.regression import RegressionMetrics
from test_metrics_contract import concat, regression_batches


def merged_state(batches: list[RegressionOutcomes]) -> RegressionMetrics:
    state = RegressionMetrics()
    for batch in batches:
        part = RegressionMetrics()
        part.update(batch)
        state = state.merge(part)
    return state


def sklearn_truth(y: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r2: float | None = r2_score(y, y_pred) if len(y) >= 2 else None  # sklearn: nan and a warning
    if len(y) >= 2 and np.ptp(y) == 0:
        # Constant labels: sklearn's force_finite rule (1.0 if exact, else 0.0), which sklearn itself
        # misses when its two-pass mean rounds (0.1, 0.1, 0.1 -> variance 1e-33, R^2 ~ -1e30).
        r2 = 1.0 if np.array_equal(y, y_pred) else 0.0
    return {
        "count": len(y),
        "mae": mean_absolute_error(y, y_pred),
        "rmse": root_mean_squared_error(y, y_pred),
        "r2": r2,
        "mape": mean_absolute_percentage_error(y, y_pred),
        "mean_prediction": float(np.mean(y_pred)),
        "mean_label": float(np.mean(y)),
        # The per-prediction errors' spreads a sequential mae or rmse check reads: numpy, row by row.
        "mae_std": float(np.std(np.abs(y - y_pred), ddof=1)) if len(y) >= 2 else None,
        "squared_error_std": float(np.std((y - y_pred) ** 2, ddof=1)) if len(y) >= 2 else None,
    }


def assert_matches(got: dict[str, float | None], want: dict[str, float | None], tol: float = 1e-9) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if value is None:
            assert got[name] is None, name
        else:
            assert got[name] is not None and abs(got[name] - value) <= tol * max(1.0, abs(value)), \
                (name, got[name], value)


@settings(max_examples=60, deadline=None)
@given(st.lists(regression_batches(max_size=40), min_size=1, max_size=4))
def test_every_metric_matches_sklearn(batches: list[RegressionOutcomes]) -> None:
    whole = batches[0]
    for b in batches[1:]:
        whole = concat(whole, b)
    if len(whole) == 0:
        return
    assert_matches(merged_state(batches).values(), sklearn_truth(whole.y_true, whole.y_pred))


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 5000), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_r2_stays_within_1e_9_of_sklearn_for_labels_far_from_zero(n: int, parts: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = 1e6 + rng.normal(size=n)
    y_pred = y + rng.normal(scale=0.5, size=n)
    cuts = np.sort(rng.integers(0, n, size=parts - 1))
    batches = [RegressionOutcomes(a, b) for a, b in zip(np.split(y, cuts), np.split(y_pred, cuts))]
    got = merged_state(batches).values()
    assert abs(got["r2"] - r2_score(y, y_pred)) <= 1e-9
    assert_matches(got, sklearn_truth(y, y_pred))


def test_the_textbook_sum_of_squares_would_fail_there() -> None:
    # What the stable moments buy: sum(y^2) - sum(y)^2 / n at y ~ 1e6 loses R^2 entirely.
    rng = np.random.default_rng(0)
    y = 1e6 + rng.normal(size=1000)
    y_pred = y + rng.normal(scale=0.5, size=1000)
    naive_ss_total = float(np.sum(y**2) - np.sum(y) ** 2 / len(y))
    naive_r2 = 1 - float(np.sum((y - y_pred) ** 2)) / naive_ss_total
    assert abs(naive_r2 - r2_score(y, y_pred)) > 1e-6
    state = RegressionMetrics()
    state.update(RegressionOutcomes(y, y_pred))
    assert abs(state.values()["r2"] - r2_score(y, y_pred)) <= 1e-12


def test_hand_computed_case() -> None:
    state = RegressionMetrics()
    state.update(RegressionOutcomes(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 2.0])))
    v = state.values()
    assert v["mae"] == 1.0  # errors 1, 0, 1, 2
    assert v["rmse"] == math.sqrt(6 / 4)
    assert v["r2"] == 1 - 6 / 5  # SS_tot around the mean 2.5: 2.25 + 0.25 + 0.25 + 2.25
    assert math.isclose(v["mape"], (1 / 1 + 0 / 2 + 1 / 3 + 2 / 4) / 4)
    assert (v["mean_prediction"], v["mean_label"], v["count"]) == (2.0, 2.5, 4)


def test_zero_labels_in_mape_use_sklearns_epsilon() -> None:
    state = RegressionMetrics()
    state.update(RegressionOutcomes(np.array([0.0, 1.0]), np.array([1.0, 1.0])))
    assert state.values()["mape"] == mean_absolute_percentage_error([0.0, 1.0], [1.0, 1.0])
    assert state.values()["mape"] == pytest.approx(1 / np.finfo(np.float64).eps / 2)


def test_r2_needs_two_rows_and_follows_sklearn_for_constant_labels() -> None:
    one = RegressionMetrics()
    one.update(RegressionOutcomes(np.array([3.0]), np.array([3.5])))
    assert one.values()["r2"] is None and one.values()["mae"] == 0.5
    exact, off = RegressionMetrics(), RegressionMetrics()
    exact.update(RegressionOutcomes(np.array([0.1, 0.1, 0.1]), np.array([0.1, 0.1, 0.1])))
    off.update(RegressionOutcomes(np.array([0.1, 0.1, 0.1]), np.array([0.1, 0.1, 0.2])))
    assert exact.values()["r2"] == 1.0 and off.values()["r2"] == 0.0
    # sklearn's own two-pass mean of (0.1, 0.1, 0.1) rounds, leaving a ~1e-33 variance:
    assert r2_score([0.1, 0.1, 0.1], [0.1, 0.1, 0.2]) < -1e20


def test_a_label_correction_gives_the_corrected_window_exactly() -> None:
    rng = np.random.default_rng(3)
    y = 1e6 + rng.normal(size=500)
    y_pred = y + rng.normal(scale=0.3, size=500)
    state = RegressionMetrics()
    state.update(RegressionOutcomes(y, y_pred))
    # Labels 10..19 were wrong: take them back out and add the corrected ones, in one batch.
    corrected = y[10:20] + 0.5
    state.update(RegressionOutcomes(np.concatenate([y[10:20], corrected]), np.concatenate([y_pred[10:20]] * 2),
                                    weight=np.concatenate([-np.ones(10), np.ones(10)])))
    y_new = y.copy()
    y_new[10:20] = corrected
    assert_matches(state.values(), sklearn_truth(y_new, y_pred))


def test_a_partition_holding_only_a_correction_merges_into_the_right_window() -> None:
    # The correction reached another partition's state: n = 0 there, but the content is not nothing.
    y, y_pred = np.array([5.0, 6.0, 9.0]), np.array([5.5, 6.0, 8.0])
    main, correction = RegressionMetrics(), RegressionMetrics()
    main.update(RegressionOutcomes(y, y_pred))
    correction.update(RegressionOutcomes(np.array([9.0, 7.0]), np.array([8.0, 8.0]), weight=np.array([-1.0, 1.0])))
    assert correction.count == 0 and correction.values()["mae"] is None
    assert_matches(main.merge(correction).values(), sklearn_truth(np.array([5.0, 6.0, 7.0]), y_pred))
    assert_matches(correction.merge(main).values(), sklearn_truth(np.array([5.0, 6.0, 7.0]), y_pred))


def test_non_finite_values_are_refused() -> None:
    state = RegressionMetrics()
    with pytest.raises(ValueError, match="finite"):
        state.update(RegressionOutcomes(np.array([1.0, np.nan]), np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match="finite"):
        state.update(RegressionOutcomes(np.array([1.0, 2.0]), np.array([np.inf, 2.0])))
    assert state.count == 0
