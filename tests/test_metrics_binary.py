"""BinaryMetrics against scikit-learn: exact metrics to 1e-9, ranking metrics to their error bound."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.metrics.outcomes import BinaryOutcomes
from test_metrics_contract import binary_batches, concat

THRESHOLDS = (0.3, 0.5, 0.7)


def updated(batches: list[BinaryOutcomes], **kwargs: object) -> BinaryMetrics:
    """The state of all batches, each one in its own state, merged: as partitions would be."""
    states = []
    for batch in batches:
        state = BinaryMetrics(**kwargs)  # type: ignore[arg-type]
        state.update(batch)
        states.append(state)
    merged = states[0]
    for state in states[1:]:
        merged = merged.merge(state)
    return merged


def sklearn_truth(y: np.ndarray, score: np.ndarray, predicted: np.ndarray, thresholds: tuple[float, ...],
                  calibration_bins: int) -> dict[str, float | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zero_division and single-class warnings: values checked as returned
        truth: dict[str, float | None] = {"count": len(y)}
        for suffix, decision in [("", predicted)] + [(f"@{t!r}", score >= t) for t in thresholds]:
            truth[f"accuracy{suffix}"] = accuracy_score(y, decision)
            truth[f"precision{suffix}"] = precision_score(y, decision)
            truth[f"recall{suffix}"] = recall_score(y, decision)
            truth[f"f1{suffix}"] = f1_score(y, decision)
            if suffix:  # a sequential precision@t check counts its trials from it
                truth[f"positive_rate{suffix}"] = float(np.mean(decision))
        truth["log_loss"] = log_loss(y, score, labels=[False, True])
        # The spread of the per-prediction losses (a sequential test reads it): sklearn row by row.
        per_row = [log_loss(y[i:i + 1], score[i:i + 1], labels=[False, True]) for i in range(len(y))]
        truth["log_loss_std"] = float(np.std(per_row, ddof=1)) if len(y) > 1 else None
        truth["brier_score"] = brier_score_loss(y, score, pos_label=True)
        # The per-prediction Brier score is (score - y)^2: numpy's sample std of it.
        truth["brier_score_std"] = float(np.std((score - y) ** 2, ddof=1)) if len(y) > 1 else None
        truth["error_rate"] = float(np.mean(y != predicted))
        truth["positive_rate"] = float(np.mean(predicted))
        truth["label_rate"] = float(np.mean(y))
        truth["mean_score"] = float(np.mean(score))
        truth["expected_calibration_error"] = ece_truth(y, score, calibration_bins, counts="searchsorted")
        truth["average_precision"] = average_precision_score(y, score)
        truth["roc_auc"] = roc_auc_score(y, score) if 0 < y.sum() < len(y) else None
    return truth


def ece_truth(y: np.ndarray, score: np.ndarray, bins: int, counts: str) -> float:
    """ECE from sklearn's calibration_curve(strategy="uniform"), weighted by each bin's count.

    calibration_curve returns the non-empty bins' means only. Their counts come from np.histogram
    for continuous scores; a score exactly on an inner edge needs calibration_curve's own binning
    (np.searchsorted: right-closed bins) since np.histogram's bins are left-closed.
    """
    prob_true, prob_pred = calibration_curve(y, score, n_bins=bins, strategy="uniform", pos_label=True)
    if counts == "histogram":
        n_b = np.histogram(score, bins=bins, range=(0.0, 1.0))[0]
    else:
        n_b = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], score), minlength=bins)
    n_b = n_b[n_b > 0]
    return float(np.sum(n_b / len(y) * np.abs(prob_true - prob_pred)))


def assert_close(name: str, got: float | None, want: float | None, tol: float = 1e-9) -> None:
    if want is None or got is None:
        assert got is None and want is None, (name, got, want)
    else:
        assert abs(got - want) <= tol * max(1.0, abs(want)), (name, got, want)


@settings(max_examples=60, deadline=None)
@given(st.lists(binary_batches(max_size=40), min_size=1, max_size=4), st.sampled_from([2, 5, 10]))
def test_every_metric_matches_sklearn(batches: list[BinaryOutcomes], calibration_bins: int) -> None:
    whole = batches[0]
    for b in batches[1:]:
        whole = concat(whole, b)
    if len(whole) == 0:
        return
    got = updated(batches, thresholds=THRESHOLDS, calibration_bins=calibration_bins).values()
    truth = sklearn_truth(whole.y_true, whole.score, whole.predicted, THRESHOLDS, calibration_bins)
    for name, want in truth.items():
        if name not in ("roc_auc", "average_precision"):
            assert_close(name, got[name], want)
    # Histogram metrics: within their reported bound, whatever the scores.
    if truth["roc_auc"] is None:
        assert got["roc_auc"] is None and got["roc_auc_error_bound"] is None
    else:
        assert abs(got["roc_auc"] - truth["roc_auc"]) <= got["roc_auc_error_bound"] + 1e-12
    assert abs(got["average_precision"] - truth["average_precision"]) <= got["average_precision_error_bound"] + 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(50, 5000), st.floats(0.5, 5.0), st.floats(0.5, 5.0), st.floats(0.05, 0.95),
       st.integers(0, 2**32 - 1))
def test_ranking_metrics_are_within_1e_3_on_continuous_scores(n: int, a: float, b: float, prevalence: float,
                                                              seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    if y.all() or not y.any():
        return
    # Positives score higher on average: a model with some skill.
    score = np.where(y, rng.beta(a + 1.0, b, n), rng.beta(a, b + 1.0, n))
    got = updated([BinaryOutcomes(y, score, score >= 0.5)]).values()
    assert abs(got["roc_auc"] - roc_auc_score(y, score)) <= 1e-3
    assert abs(got["average_precision"] - average_precision_score(y, score)) <= 1e-3
    assert got["roc_auc_error_bound"] <= 1e-3 and got["average_precision_error_bound"] <= 1e-3
    ece = ece_truth(y, score, 10, counts="histogram")
    assert math.isclose(got["expected_calibration_error"], ece, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("seed", [1, 2])
def test_large_windows_coarsen_within_score_bins_and_stay_within_1e_3(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200_000
    y = rng.random(n) < 0.01  # a fraud-like window: few positives, scores packed near 0
    score = np.where(y, rng.beta(0.7, 8.0, n), rng.beta(0.5, 300.0, n))
    state = updated([BinaryOutcomes(y[i:i + 20_000], score[i:i + 20_000], score[i:i + 20_000] >= 0.5)
                     for i in range(0, n, 20_000)])
    assert 0 < len(state.snapshot()["bins"]) <= 10_000
    got = state.values()
    assert abs(got["roc_auc"] - roc_auc_score(y, score)) <= min(1e-3, got["roc_auc_error_bound"])
    assert abs(got["average_precision"] - average_precision_score(y, score)) <= min(
        1e-3, got["average_precision_error_bound"])


def documented_bounds(snapshot: dict[str, object]) -> tuple[float, float]:
    """The docstring's bounds, evaluated by hand on the histogram of a snapshot."""
    pos = np.array(snapshot["bin_pos"], dtype=float)
    neg = np.array(snapshot["bin_neg"], dtype=float)
    p, n = pos.sum(), neg.sum()
    roc = float(np.sum(pos * neg)) / (2 * p * n)
    ap, tp0, fp0 = 0.0, 0.0, 0.0
    for pb, nb in zip(pos[::-1], neg[::-1]):  # highest scores first
        tp1, fp1 = tp0 + pb, fp0 + nb
        if pb:
            read, hi, lo = tp1 / (tp1 + fp1), tp1 / (tp1 + fp0), (tp0 + 1) / (tp0 + 1 + fp1)
            ap += pb / p * max(hi - read, read - lo)
        tp0, fp0 = tp1, fp1
    return roc, ap


@pytest.mark.parametrize("positive, negative", [
    (0.5 + 1e-13, 0.5),  # every score within one finest bin (~1e-12 wide)
    (1e-14, 1e-15),  # both below 1e-12: clipped into the lowest bin
])
def test_adversarial_scores_exceed_1e_3_exactly_as_the_documented_bound_predicts(positive: float,
                                                                                 negative: float) -> None:
    # Every positive outranks every negative: sklearn reads a perfect ranking.
    y = np.array([True] * 30 + [False] * 70)
    score = np.where(y, positive, negative)
    state = updated([BinaryOutcomes(y, score, score >= 0.5)])
    got = state.values()
    roc_bound, ap_bound = documented_bounds(state.snapshot())
    assert roc_auc_score(y, score) == 1.0 and average_precision_score(y, score) == 1.0
    assert math.isclose(got["roc_auc_error_bound"], roc_bound, rel_tol=1e-12)
    assert math.isclose(got["average_precision_error_bound"], ap_bound, rel_tol=1e-12)
    roc_error = abs(got["roc_auc"] - 1.0)
    ap_error = abs(got["average_precision"] - 1.0)
    assert roc_error > 1e-3 and ap_error > 1e-3  # the target is exceeded...
    assert roc_error <= roc_bound + 1e-15 and ap_error <= ap_bound + 1e-15  # ...and the bound says so.
    # A single bin, all tied: the bounds are attained.
    assert math.isclose(roc_error, roc_bound) and math.isclose(ap_error, ap_bound)


def test_hand_computed_case() -> None:
    y = np.array([True, False, True, False])
    score = np.array([0.9, 0.6, 0.4, 0.1])
    state = BinaryMetrics(thresholds=(0.5, 0.05), calibration_bins=2)
    state.update(BinaryOutcomes(y, score, score >= 0.5))
    v = state.values()
    # One of each of tp, fp, fn, tn.
    for name in ("accuracy", "error_rate", "precision", "recall", "f1", "accuracy@0.5", "f1@0.5"):
        assert v[name] == 0.5, name
    # At 0.05 everything is positive: precision 2/4, recall 1, f1 2*2/(2*2+2).
    assert (v["precision@0.05"], v["recall@0.05"], v["f1@0.05"], v["accuracy@0.05"]) == (0.5, 1.0, 2 / 3, 0.5)
    assert v["roc_auc"] == 0.75  # 3 of the 4 positive-negative pairs are ordered right
    assert math.isclose(v["average_precision"], 0.5 * 1.0 + 0.5 * 2 / 3)  # precision 1/1, then 2/3
    assert v["roc_auc_error_bound"] == 0.0 and v["average_precision_error_bound"] == 0.0
    assert math.isclose(v["log_loss"], -(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.9)) / 4)
    assert math.isclose(v["brier_score"], (0.01 + 0.36 + 0.36 + 0.01) / 4)
    # Bins [0, 0.5] and (0.5, 1]: each holds a positive and a negative, mean scores 0.25 and 0.75.
    assert math.isclose(v["expected_calibration_error"], 0.5 * 0.25 + 0.5 * 0.25)
    assert (v["positive_rate"], v["label_rate"], v["mean_score"], v["count"]) == (0.5, 0.5, 0.5, 4)


def test_sklearn_zero_division_conventions_and_undefined_values() -> None:
    state = BinaryMetrics()
    assert state.values()["count"] == 0
    assert all(v is None for k, v in state.values().items() if k != "count")
    # Only negatives, nothing predicted positive: sklearn warns and returns 0.0 for all four.
    state.update(BinaryOutcomes(np.array([False, False]), np.array([0.2, 0.4]), np.array([False, False])))
    v = state.values()
    assert (v["precision"], v["recall"], v["f1"], v["average_precision"]) == (0.0, 0.0, 0.0, 0.0)
    assert v["accuracy"] == 1.0
    assert v["roc_auc"] is None and v["roc_auc_error_bound"] is None  # sklearn raises: one class
    assert v["log_loss"] is not None  # defined; sklearn needs labels=[False, True] to say so
    # Only positives: average precision is 1.0 (sklearn agrees), AUC still undefined.
    state = BinaryMetrics()
    state.update(BinaryOutcomes(np.array([True, True]), np.array([0.2, 0.4]), np.array([False, True])))
    assert state.values()["average_precision"] == 1.0 and state.values()["roc_auc"] is None


def test_threshold_keys_and_order_do_not_matter() -> None:
    a, b = BinaryMetrics(thresholds=(0.7, 0.3)), BinaryMetrics(thresholds=(0.3, 0.7))
    assert a.thresholds == b.thresholds == (0.3, 0.7)
    a.merge(b)  # same hyperparameters
    assert "precision@0.3" in a.values() and "f1@0.7" in a.values()
    assert "precision@0.1" in BinaryMetrics(thresholds=(0.1,)).values()
    assert not any("@" in k for k in BinaryMetrics(thresholds=()).values())


def test_a_bad_score_is_refused_and_leaves_the_state_untouched() -> None:
    state = BinaryMetrics()
    state.update(BinaryOutcomes(np.array([True]), np.array([0.9]), np.array([True])))
    before = state.snapshot()
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="score"):
            state.update(BinaryOutcomes(np.array([True, False]), np.array([0.5, bad]), np.array([True, False])))
    assert state.snapshot() == before


def test_small_windows_store_only_their_bins() -> None:
    state = BinaryMetrics()
    state.update(BinaryOutcomes(np.array([True, False, True]), np.array([0.2, 0.2, 0.9]), np.array([False] * 3)))
    snapshot = state.snapshot()
    assert len(snapshot["bins"]) == 2 and snapshot["level"] == 0
