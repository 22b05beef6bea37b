"""Regression metrics of one window, from exact sums that merge.

R^2 needs the variance of the labels. Summing y and y^2 in floats and subtracting loses every
digit when the labels sit far from zero (y ~ 1e6 + N(0, 1): y^2 ~ 1e12 while the variance is 1).
Here the sums are exact (exact_sum.py: y^2 split into two doubles that add up to it exactly), and
n sum(y^2) - sum(y)^2 is computed in integers, so the variance is correctly rounded however far
from zero the labels sit, constant labels give exactly zero, and rows taken back out leave no trace.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mle_stream.core.exact_sum import SCALE_BITS, exact_column_sums, pack, square_parts, to_float, unpack
from mle_stream.core.metrics.base import (
    EMPTY_MOMENTS,
    Moments,
    add_moments,
    check_mergeable,
    check_snapshot,
    combine_moments,
    moment_columns,
    moments_snapshot,
    restore_moments,
)
from mle_stream.core.metrics.outcomes import RegressionOutcomes

_KIND, _VERSION = "regression", 3  # v2: exact sums; v3: the errors' fourth powers (v2 restores without them)
# sklearn.metrics.mean_absolute_percentage_error divides by max(|y|, eps), eps of float64.
_EPS = float(np.finfo(np.float64).eps)
# Squares of larger values overflow a double (at ~1.3e154), and the exact sums take finite values.
MAX_MAGNITUDE = 1e150
# A squared error of 2**256 or more has its square summed scaled down by 2**-512 (exact: a power of
# two), so that errors up to 2 * MAX_MAGNITUDE keep a finite fourth power.
_BIG_SQUARE, _SQUARE_SCALE = 2.0 ** 256, 512


class RegressionMetrics:
    """mae, rmse, r2, mape, mean_prediction, mean_label and count of y_pred against y_true, and for
    sequential tests mae_std and squared_error_std: the sample standard deviations of the
    per-prediction absolute and squared errors (None with fewer than two rows; squared_error_std
    also for a state restored from a v2 snapshot, which did not keep the fourth powers).

    As scikit-learn: mape = mean(|y - y_pred| / max(|y|, eps)) with eps = float64 machine epsilon
    (so a zero label gives a huge, finite term); r2 is None with fewer than two rows (sklearn
    warns and returns nan), and for constant labels follows sklearn's force_finite rule: 1.0 if
    every prediction is exact, else 0.0. Constant labels are detected exactly here, where sklearn's
    two-pass mean can round to a variance of ~1e-33 and return a huge negative R^2 instead.

    Every sum is exact: removing rows (weight -1) returns the state to exactly what it was, and
    the squared error is the exact square of each row's (rounded) error.
    """

    def __init__(self) -> None:
        self._moments: Moments = EMPTY_MOMENTS  # of y_true
        # Exact sums (integer counts of 2**-1074) of |y - y_pred|, (y - y_pred)^2,
        # |y - y_pred| / max(|y|, eps) and y_pred.
        self._abs_error_sum = self._sq_error_sum = self._pct_error_sum = self._pred_sum = 0
        # The exact sum of the squared errors' squares ((y - y_pred)^2 rounded, then squared exactly);
        # None: unknown (restored from a v2 snapshot).
        self._fourth_sum: int | None = 0

    @property
    def count(self) -> int:
        return self._moments[0]

    def update(self, batch: RegressionOutcomes) -> None:
        w = batch.weights()
        y = np.asarray(batch.y_true, dtype=np.float64)
        y_pred = np.asarray(batch.y_pred, dtype=np.float64)
        if not (np.all(np.abs(y) < MAX_MAGNITUDE) and np.all(np.abs(y_pred) < MAX_MAGNITUDE)):  # also NaN
            raise ValueError(f"y_true and y_pred must be finite numbers below {MAX_MAGNITUDE:g} in magnitude")
        error = np.abs(y - y_pred)
        sq_hi, sq_lo = square_parts(error)
        big = sq_hi >= _BIG_SQUARE
        small_hi, small_lo = square_parts(np.where(big, 0.0, sq_hi))
        big_hi, big_lo = square_parts(np.where(big, np.ldexp(sq_hi, -_SQUARE_SCALE), 0.0))
        y_s, y_q_hi, y_q_lo, abs_error, sq_hi_sum, sq_lo_sum, pct, pred, *fourth = exact_column_sums(
            [*moment_columns(y, w), w * error, w * sq_hi, w * sq_lo,
             w * (error / np.maximum(np.abs(y), _EPS)), w * y_pred, w * small_hi, w * small_lo, w * big_hi,
             w * big_lo])
        if self._fourth_sum is not None:
            self._fourth_sum += fourth[0] + fourth[1] + ((fourth[2] + fourth[3]) << 2 * _SQUARE_SCALE)
        self._moments = add_moments(self._moments, int(w.sum()), (y_s, y_q_hi, y_q_lo))
        self._abs_error_sum += abs_error
        self._sq_error_sum += sq_hi_sum + sq_lo_sum
        self._pct_error_sum += pct
        self._pred_sum += pred

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        check_mergeable(self, other, ())
        merged = RegressionMetrics()
        merged._moments = combine_moments(self._moments, other._moments)
        merged._abs_error_sum = self._abs_error_sum + other._abs_error_sum
        merged._sq_error_sum = self._sq_error_sum + other._sq_error_sum
        merged._pct_error_sum = self._pct_error_sum + other._pct_error_sum
        merged._pred_sum = self._pred_sum + other._pred_sum
        merged._fourth_sum = (None if self._fourth_sum is None or other._fourth_sum is None
                              else self._fourth_sum + other._fourth_sum)
        return merged

    def values(self) -> dict[str, float | None]:
        n, y_sum, y_sq_sum = self._moments
        out: dict[str, float | None] = {"count": n}
        if n <= 0:
            return out | dict.fromkeys(["mae", "rmse", "r2", "mape", "mean_prediction", "mean_label", "mae_std",
                                        "squared_error_std"])
        r2: float | None = None
        if n >= 2:
            # n * ss_total in units of 2**-2148, exactly; zero exactly when the labels are constant.
            n_ss_total = (y_sq_sum * n << SCALE_BITS) - y_sum * y_sum
            if n_ss_total > 0:
                r2 = 1.0 - (self._sq_error_sum * n << SCALE_BITS) / n_ss_total
            else:
                r2 = 1.0 if self._sq_error_sum == 0 else 0.0
        return out | {
            "mae": to_float(self._abs_error_sum, n),
            "rmse": math.sqrt(max(to_float(self._sq_error_sum, n), 0.0)),
            "r2": r2,
            "mape": to_float(self._pct_error_sum, n),
            "mean_prediction": to_float(self._pred_sum, n),
            "mean_label": to_float(y_sum, n),
            "mae_std": _std(n, self._abs_error_sum, self._sq_error_sum),
            "squared_error_std": None if self._fourth_sum is None else _std(n, self._sq_error_sum, self._fourth_sum),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": _KIND, "v": _VERSION, "moments": moments_snapshot(self._moments),
            "abs_error_sum": pack(self._abs_error_sum), "sq_error_sum": pack(self._sq_error_sum),
            "pct_error_sum": pack(self._pct_error_sum), "pred_sum": pack(self._pred_sum),
            "fourth_sum": None if self._fourth_sum is None else pack(self._fourth_sum),
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> RegressionMetrics:
        if isinstance(data, dict) and data.get("v") == 2:  # v2 lacks only the fourth powers: unknown
            data = {**data, "v": _VERSION, "fourth_sum": None}
        check_snapshot(data, _KIND, _VERSION)
        state = cls()
        state._moments = restore_moments(data["moments"])
        state._abs_error_sum, state._sq_error_sum = unpack(data["abs_error_sum"]), unpack(data["sq_error_sum"])
        state._pct_error_sum, state._pred_sum = unpack(data["pct_error_sum"]), unpack(data["pred_sum"])
        state._fourth_sum = None if data["fourth_sum"] is None else unpack(data["fourth_sum"])
        return state

    def __repr__(self) -> str:
        return f"RegressionMetrics(count={self.count})"


def _std(n: int, total: int, squares: int) -> float | None:
    """The sample standard deviation of n values from the exact sums of the values and of their
    squares, in integers to the end: the variance of squared errors near 2 * MAX_MAGNITUDE is
    beyond a double though its square root is not. None with fewer than two rows."""
    if n < 2:
        return None
    deviations = max(0, (squares * n << SCALE_BITS) - total * total)  # n (n - 1) var, in 2**-2148
    return math.isqrt(deviations // (n * (n - 1))) / (1 << SCALE_BITS)
