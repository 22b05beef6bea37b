"""Regression metrics of one window, from sums and numerically stable moments that merge.

R^2 needs the variance of the labels. Summing y and y^2 and subtracting loses every digit when
the labels sit far from zero (y ~ 1e6 + N(0, 1): y^2 ~ 1e12 while the variance is 1). Chan, Golub
and LeVeque (1983) give two cures, both used here: sums of deviations from a shift value taken
from the data (a label, so y - shift is exact for nearby labels), and their pairwise update to
combine two such summaries. Keeping Chan's (n, mean, M2) form instead would store the mean rounded
to ~1e-10 at y ~ 1e6: taking rows back out then leaves ~1e-11 of spurious variance, enough to turn
R^2 of remaining constant labels from sklearn's 0.0 into -1e10 (the contract tests found it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mle_stream.core.metrics.base import EMPTY_MOMENTS, Moments, check_mergeable, check_snapshot, combine_moments, moments_of
from mle_stream.core.metrics.outcomes import RegressionOutcomes

_KIND, _VERSION = "regression", 1
# sklearn.metrics.mean_absolute_percentage_error divides by max(|y|, eps), eps of float64.
_EPS = float(np.finfo(np.float64).eps)
class RegressionMetrics:
    """mae, rmse, r2, mape, mean_prediction, mean_label and count of y_pred against y_true.

    As scikit-learn: mape = mean(|y - y_pred| / max(|y|, eps)) with eps = float64 machine epsilon
    (so a zero label gives a huge, finite term); r2 is None with fewer than two rows (sklearn
    warns and returns nan), and for constant labels follows sklearn's force_finite rule: 1.0 if
    every prediction is exact, else 0.0. Constant labels are detected exactly here, where sklearn's
    two-pass mean can round to a variance of ~1e-33 and return a huge negative R^2 instead.

    Removing rows (weight -1) subtracts their sums: after update(b), update(-b) every sum is back
    to within rounding of the largest magnitude it went through. Where the rows taken out dwarfed
    the rest (an outlier removed), what remains of that rounding can show in R^2 of the remaining
    labels.
    """

    def __init__(self) -> None:
        self._moments: Moments = EMPTY_MOMENTS  # of y_true
        self._abs_error_sum = 0.0
        self._sq_error_sum = 0.0
        self._pct_error_sum = 0.0  # sum of |y - y_pred| / max(|y|, eps)
        self._pred_sum = 0.0

    @property
    def count(self) -> int:
        return self._moments[0]

    def update(self, batch: RegressionOutcomes) -> None:
        w = batch.weights()
        y = np.asarray(batch.y_true, dtype=np.float64)
        y_pred = np.asarray(batch.y_pred, dtype=np.float64)
        if not (np.isfinite(y).all() and np.isfinite(y_pred).all()):
            raise ValueError("y_true and y_pred must be finite numbers")
        error = np.abs(y - y_pred)
        self._abs_error_sum += float(w @ error)
        self._sq_error_sum += float(w @ error**2)
        self._pct_error_sum += float(w @ (error / np.maximum(np.abs(y), _EPS)))
        self._pred_sum += float(w @ y_pred)
        added, removed = moments_of(y[w > 0]), moments_of(y[w < 0])
        removed = (-removed[0], removed[1], -removed[2], -removed[3])
        self._moments = combine_moments(combine_moments(self._moments, added), removed)

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        check_mergeable(self, other, ())
        merged = RegressionMetrics()
        merged._moments = combine_moments(self._moments, other._moments)
        merged._abs_error_sum = self._abs_error_sum + other._abs_error_sum
        merged._sq_error_sum = self._sq_error_sum + other._sq_error_sum
        merged._pct_error_sum = self._pct_error_sum + other._pct_error_sum
        merged._pred_sum = self._pred_sum + other._pred_sum
        return merged

    def values(self) -> dict[str, float | None]:
        n, pivot, s1, s2 = self._moments
        out: dict[str, float | None] = {"count": n}
        if n <= 0:
            return out | dict.fromkeys(["mae", "rmse", "r2", "mape", "mean_prediction", "mean_label"])
        # _combine keeps the pivot within a standard deviation of the mean: no cancellation here.
        ss_total = s2 - s1 * s1 / n
        r2: float | None = None
        if n >= 2 and ss_total > 0:
            r2 = 1.0 - self._sq_error_sum / ss_total
        elif n >= 2:  # constant labels (ss_total is 0, or a rounding below it)
            r2 = 1.0 if self._sq_error_sum == 0 else 0.0
        return out | {
            "mae": self._abs_error_sum / n,
            "rmse": math.sqrt(max(self._sq_error_sum, 0.0) / n),
            "r2": r2,
            "mape": self._pct_error_sum / n,
            "mean_prediction": self._pred_sum / n,
            "mean_label": pivot + s1 / n,
        }

    def snapshot(self) -> dict[str, Any]:
        n, pivot, s1, s2 = self._moments
        return {
            "kind": _KIND, "v": _VERSION, "n": n, "pivot": pivot, "s1": s1, "s2": s2,
            "abs_error_sum": self._abs_error_sum, "sq_error_sum": self._sq_error_sum,
            "pct_error_sum": self._pct_error_sum, "pred_sum": self._pred_sum,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> RegressionMetrics:
        check_snapshot(data, _KIND, _VERSION)
        state = cls()
        state._moments = (int(data["n"]), float(data["pivot"]), float(data["s1"]), float(data["s2"]))
        state._abs_error_sum, state._sq_error_sum = float(data["abs_error_sum"]), float(data["sq_error_sum"])
        state._pct_error_sum, state._pred_sum = float(data["pct_error_sum"]), float(data["pred_sum"])
        return state

    def __repr__(self) -> str:
        return f"RegressionMetrics(count={self.count})"
