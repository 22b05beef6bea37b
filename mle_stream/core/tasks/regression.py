"""Regression: a number per prediction and per label, no decision."""

from __future__ import annotations

from typing import Any

import numpy as np

from mle_stream.core.columns import PredictionColumns
from mle_stream.core.events import LabelValue
from mle_stream.core.metrics.outcomes import RegressionOutcomes
from mle_stream.core.metrics.regression import MAX_MAGNITUDE, RegressionMetrics
from mle_stream.core.record_checks import Reject, regression_value_problem
from mle_stream.core.tasks.base import Agreement, Task


class Regression(Task):
    name = "regression"
    output_field = "value"
    output_dtype = np.float64
    decision_dtype = None
    metric_names = frozenset({"mae", "rmse", "r2", "mape", "mean_prediction", "mean_label"})

    def new_metrics(self, thresholds: tuple[float, ...]) -> RegressionMetrics:
        return RegressionMetrics()

    def restore_metrics(self, data: dict[str, Any]) -> RegressionMetrics:
        return RegressionMetrics.restore(data)

    def read_outputs(self, cols: PredictionColumns, threshold: float, failed: np.ndarray, ok: np.ndarray,
                     rejects: list[Reject]) -> tuple[Any, Any]:
        model = cols.model[0]
        outputs: list[Any] = [None] * len(cols)
        for i in range(len(cols)):
            if not ok[i] or failed[i]:
                continue
            value = float(cols.value[i])
            if value != value:
                rejects.append(Reject(i, "value",
                                      f"model {model!r} is a regression model: its predictions carry 'value'"))
                ok[i] = False
                continue
            why = regression_value_problem(value)
            if why is not None:
                rejects.append(Reject(i, "value", why))
                ok[i] = False
                continue
            outputs[i] = value
        return outputs, [None] * len(cols)

    def read_truth(self, value: LabelValue) -> LabelValue:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a regression label must be a number, got {value!r}")
        if not abs(value) < MAX_MAGNITUDE:
            raise ValueError(f"a regression label must be below {MAX_MAGNITUDE:g} in magnitude "
                             f"(its square must be a double), got {value!r}")
        return float(value)

    def truths_and_scores(self, labels: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return labels.astype(np.float64, copy=False), outputs

    def outcomes(self, y: np.ndarray, score: np.ndarray, decisions: np.ndarray | None,
                 weights: np.ndarray) -> RegressionOutcomes:
        return RegressionOutcomes(y, score, weights)

    def drift_score(self, cols: PredictionColumns) -> np.ndarray | None:
        return cols.value

    def compare(self, shadow_outputs: list[Any], production_outputs: list[Any], shadow_decisions: list[Any],
                production_decisions: list[Any]) -> Agreement:
        n = len(shadow_outputs)
        diff = np.array(shadow_outputs, dtype=np.float64) - np.array(production_outputs, dtype=np.float64)
        return np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_), diff, np.abs(diff)


__all__ = ["Regression"]
