"""Binary classification: a score P(positive) per prediction, a decision at the topology's
threshold (or the pod's own predicted_label), true/false labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mle_stream.core.columns import PredictionColumns
from mle_stream.core.events import LabelValue, binary_truth
from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.metrics.estimated import ESTIMATED, Calibration, ScoreBins
from mle_stream.core.metrics.outcomes import BinaryOutcomes, BoolArray, FloatArray
from mle_stream.core.record_checks import Reject
from mle_stream.core.tasks.base import Agreement, Task

if TYPE_CHECKING:
    from mle_stream.core.topology.model import EstimateSettings


class Binary(Task):
    name = "binary"
    output_field = "score"
    output_dtype = np.float64
    decision_dtype = np.bool_
    metric_names = frozenset({"accuracy", "error_rate", "precision", "recall", "f1", "roc_auc", "average_precision",
                              "log_loss", "log_loss_std", "brier_score", "expected_calibration_error",
                              "positive_rate", "label_rate", "mean_score",
                              # label-free, with an estimates section (core/metrics/estimated.py)
                              *(f"estimated_{m}" for m in ESTIMATED), "estimated_coverage"})
    threshold_metrics = ("accuracy", "precision", "recall", "f1")

    def new_metrics(self, thresholds: tuple[float, ...]) -> BinaryMetrics:
        return BinaryMetrics(thresholds=thresholds)

    def restore_metrics(self, data: dict[str, Any]) -> BinaryMetrics:
        return BinaryMetrics.restore(data)

    def read_outputs(self, cols: PredictionColumns, threshold: float, failed: np.ndarray, ok: np.ndarray,
                     rejects: list[Reject]) -> tuple[Any, Any]:
        model = cols.model[0]
        missing = np.isnan(cols.score) & ~failed & ok
        for i in np.flatnonzero(missing).tolist():
            rejects.append(Reject(i, "score", f"model {model!r} is a binary model: its predictions carry 'score'"))
            ok[i] = False
        decisions = cols.score >= threshold
        if cols.predicted_label is not None:
            decisions = decisions.tolist()
            for i, given in enumerate(cols.predicted_label):
                if given is not None and ok[i] and not failed[i]:
                    try:
                        decisions[i] = binary_truth(given)
                    except ValueError as exc:
                        rejects.append(Reject(i, "predicted_label", str(exc)))
                        ok[i] = False
        return cols.score, decisions

    def read_truth(self, value: LabelValue) -> LabelValue:
        return binary_truth(value)

    def read_truths(self, values: list[LabelValue], rejects: list[Reject]) -> list[LabelValue]:
        if set(map(type, values)) == {bool}:
            return values  # the usual case: Avro booleans
        return super().read_truths(values, rejects)

    def truths_and_scores(self, labels: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return labels.astype(np.bool_, copy=False), outputs

    def outcomes(self, y: np.ndarray, score: np.ndarray, decisions: np.ndarray | None,
                 weights: np.ndarray) -> BinaryOutcomes:
        assert decisions is not None
        return BinaryOutcomes(y, score, decisions, weights)

    def drift_score(self, cols: PredictionColumns) -> np.ndarray | None:
        return cols.score

    def compare(self, shadow_outputs: list[Any], production_outputs: list[Any], shadow_decisions: list[Any],
                production_decisions: list[Any]) -> Agreement:
        diff = np.array(shadow_outputs, dtype=np.float64) - np.array(production_outputs, dtype=np.float64)
        agree = np.array(shadow_decisions, dtype=np.bool_) == np.array(production_decisions, dtype=np.bool_)
        return agree, np.ones(len(diff), dtype=np.bool_), diff, np.abs(diff)

    def new_calibration(self, estimates: EstimateSettings) -> Calibration:
        return Calibration(estimates.bins, estimates.reference_labels)

    def new_estimate(self, estimates: EstimateSettings) -> ScoreBins:
        return ScoreBins(estimates.bins)

    def estimate_scores(self, outputs: np.ndarray, classes: tuple[str, ...]) -> FloatArray:
        return np.array(outputs, dtype=np.float64)  # the score (None: NaN)

    def estimate_codes(self, names: np.ndarray, classes: tuple[str, ...]) -> BoolArray:
        return np.asarray(names, dtype=np.bool_)  # positive or not (None: False)


__all__ = ["Binary"]
