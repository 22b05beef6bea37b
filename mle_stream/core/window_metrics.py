"""The metric state of one model version over one event-time window.

Counts, not ratios, are stored, so two states merge exactly (partitions, neighbouring windows) and
every ratio is computed from the merged counts, never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mle_stream.core.latency_sketch import LatencySketch


@dataclass
class WindowMetrics:
    predictions: int = 0
    serving_errors: int = 0
    labeled: int = 0
    correct: int = 0
    abs_error_sum: float = 0.0  # regression: sum of |value - label|
    latency: LatencySketch = field(default_factory=LatencySketch)

    def add_prediction(self, latency_ms: float | None, serving_error: bool) -> None:
        self.predictions += 1
        if serving_error:
            self.serving_errors += 1
        if latency_ms is not None:
            self.latency.add(latency_ms)

    def add_outcome(self, correct: bool | None, abs_error: float | None = None) -> None:
        """One joined (prediction, label): `correct` for classification, `abs_error` for regression."""
        self.labeled += 1
        if correct:
            self.correct += 1
        if abs_error is not None:
            self.abs_error_sum += abs_error

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labeled if self.labeled else None

    @property
    def error_rate(self) -> float | None:
        """Misclassification rate over the labeled predictions."""
        return (self.labeled - self.correct) / self.labeled if self.labeled else None

    @property
    def serving_error_rate(self) -> float | None:
        return self.serving_errors / self.predictions if self.predictions else None

    @property
    def label_coverage(self) -> float | None:
        return self.labeled / self.predictions if self.predictions else None

    @property
    def mae(self) -> float | None:
        return self.abs_error_sum / self.labeled if self.labeled else None

    def merge(self, other: "WindowMetrics") -> "WindowMetrics":
        return WindowMetrics(
            predictions=self.predictions + other.predictions,
            serving_errors=self.serving_errors + other.serving_errors,
            labeled=self.labeled + other.labeled,
            correct=self.correct + other.correct,
            abs_error_sum=self.abs_error_sum + other.abs_error_sum,
            latency=self.latency.merge(other.latency),
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions,
            "serving_errors": self.serving_errors,
            "labeled": self.labeled,
            "correct": self.correct,
            "abs_error_sum": self.abs_error_sum,
            "latency": self.latency.snapshot(),
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> "WindowMetrics":
        return cls(
            predictions=int(data["predictions"]),
            serving_errors=int(data["serving_errors"]),
            labeled=int(data["labeled"]),
            correct=int(data["correct"]),
            abs_error_sum=float(data["abs_error_sum"]),
            latency=LatencySketch.restore(data["latency"]),
        )
