"""Serving health of one window: predictions, serving errors, latency quantiles, label coverage.

These count predictions, not joined outcomes: a prediction is served (and can fail or be slow)
long before its label arrives, and most never get one. So `update` takes the prediction columns,
and labels are counted apart with `add_labeled` when the join emits them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mle_stream.core.latency_sketch import LatencySketch
from mle_stream.core.metrics.base import (
    EMPTY_MOMENTS,
    Moments,
    check_mergeable,
    check_snapshot,
    combine_moments,
    moments_mean_std,
    moments_snapshot,
    ratio,
    restore_moments,
    signed_moments,
)
from mle_stream.core.metrics.outcomes import BoolArray, FloatArray

_KIND, _VERSION = "serving", 2  # v2: exact latency moments
# The latency moments hold squares, which must stay finite doubles; no real latency comes near.
MAX_LATENCY_MS = 1e150


class ServingMetrics:
    """Serving errors, latency and label coverage of the predictions of one window.

    values(window_s=None): predictions, serving_errors, error_rate (serving errors / predictions),
    latency_p50_ms, latency_p95_ms, latency_p99_ms (None until a latency is reported),
    latency_samples (how many predictions reported a latency), labeled, label_coverage (labeled /
    predictions), throughput_per_s (predictions / window_s). Ratios are None with no predictions.

    throughput_per_s needs the window length and takes it as `values(window_s=...)` (None when not
    given) rather than a constructor argument: a merged state of two neighbouring windows covers
    twice the time, and only the caller who merged them knows the span.

    Latency quantiles come from a LatencySketch: within `relative_accuracy` (relative) of the
    latency at rank floor(q * (n - 1)). A latency is optional (NaN = not reported); a failed
    prediction's latency counts like any other, since a slow failure is still slow. label_coverage
    can read above 1 in a state that received labels whose predictions another partition counted;
    merging the partitions puts it right.
    """

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        self._latency = LatencySketch(relative_accuracy)  # validates relative_accuracy
        self.relative_accuracy = relative_accuracy
        self._predictions = 0
        self._errors = 0
        self._labeled = 0
        self._latency_moments: Moments = EMPTY_MOMENTS  # of the reported latencies, for a sequential test

    @property
    def count(self) -> int:
        return self._predictions

    @property
    def latency_sketch(self) -> LatencySketch:
        """The reported latencies' sketch (read it, do not update it: the moments would disagree)."""
        return self._latency

    def update(self, latency_ms: FloatArray, serving_error: BoolArray, weight: FloatArray | None = None) -> None:
        """One batch of predictions; latency_ms NaN where not reported, weight +1 / -1 per row."""
        latency = np.asarray(latency_ms, dtype=np.float64)
        error = np.asarray(serving_error, dtype=bool)
        n = len(latency)
        if latency.shape != (n,) or error.shape != (n,):
            raise ValueError("latency_ms and serving_error must be one-dimensional and of the same length")
        w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
        if w.shape != (n,) or not np.all((w == 1.0) | (w == -1.0)):
            raise ValueError("weight must be +1 or -1 for every row")
        reported = ~np.isnan(latency)
        if not np.all((latency[reported] >= 0.0) & (latency[reported] < MAX_LATENCY_MS)):
            raise ValueError(f"latency_ms must be a number >= 0 and below {MAX_LATENCY_MS:g}, or NaN when not reported")
        self._latency.add_many(latency[reported], w[reported])
        self._latency_moments = signed_moments(self._latency_moments, latency[reported], w[reported])
        self._predictions += int(w.sum())
        self._errors += int(w @ error)

    def add_labeled(self, n: int) -> None:
        """Count n predictions of this window as labeled (negative n takes labels back out)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"n must be an integer, got {n!r}")
        self._labeled += int(n)

    def merge(self, other: ServingMetrics) -> ServingMetrics:
        check_mergeable(self, other, ("relative_accuracy",))
        merged = ServingMetrics(self.relative_accuracy)
        merged._latency = self._latency.merge(other._latency)
        merged._predictions = self._predictions + other._predictions
        merged._errors = self._errors + other._errors
        merged._labeled = self._labeled + other._labeled
        merged._latency_moments = combine_moments(self._latency_moments, other._latency_moments)
        return merged

    def values(self, window_s: float | None = None) -> dict[str, float | None]:
        if window_s is not None and not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
        n = self._predictions
        return {
            "predictions": n,
            "serving_errors": self._errors,
            "error_rate": ratio(self._errors, n),
            "latency_p50_ms": self._latency.quantile(0.50),
            "latency_p95_ms": self._latency.quantile(0.95),
            "latency_p99_ms": self._latency.quantile(0.99),
            "latency_samples": self._latency.count,
            "latency_mean_ms": moments_mean_std(self._latency_moments)[0],
            "latency_std_ms": moments_mean_std(self._latency_moments)[1],
            "labeled": self._labeled,
            "label_coverage": ratio(self._labeled, n),
            "throughput_per_s": n / window_s if window_s is not None and n >= 0 else None,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": _KIND, "v": _VERSION, "relative_accuracy": self.relative_accuracy,
            "predictions": self._predictions, "serving_errors": self._errors, "labeled": self._labeled,
            "latency": self._latency.snapshot(), "latency_moments": moments_snapshot(self._latency_moments),
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ServingMetrics:
        check_snapshot(data, _KIND, _VERSION)
        state = cls(float(data["relative_accuracy"]))
        state._predictions, state._errors = int(data["predictions"]), int(data["serving_errors"])
        state._labeled = int(data["labeled"])
        state._latency = LatencySketch.restore(data["latency"])
        state._latency_moments = restore_moments(data["latency_moments"])
        if state._latency.relative_accuracy != state.relative_accuracy:
            raise ValueError("serving snapshot: latency sketch accuracy differs from relative_accuracy")
        return state

    def __repr__(self) -> str:
        return f"ServingMetrics(relative_accuracy={self.relative_accuracy}, count={self._predictions})"
