"""Multiclass classification: a map of class scores per prediction, the decision its argmax (or
the pod's own predicted_label), class names as labels."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mle_stream.core.columns import PredictionColumns
from mle_stream.core.events import LabelValue
from mle_stream.core.metrics.estimated import ESTIMATED, IntArray
from mle_stream.core.metrics.estimated_multiclass import ClassCalibration, ClassScoreBins, class_codes, class_scores
from mle_stream.core.metrics.multiclass import MulticlassMetrics
from mle_stream.core.metrics.outcomes import FloatArray, MulticlassOutcomes
from mle_stream.core.record_checks import Reject, class_probabilities_problem
from mle_stream.core.tasks.base import Agreement, Task

if TYPE_CHECKING:
    from mle_stream.core.topology.model import EstimateSettings


class Multiclass(Task):
    name = "multiclass"
    output_field = "scores"
    output_dtype = object
    decision_dtype = object
    metric_names = frozenset({"accuracy", "error_rate", "micro_f1", "macro_f1", "log_loss", "recall",
                              # label-free, with an estimates section (core/metrics/estimated_multiclass.py):
                              # one-vs-rest per listed class, macro-averaged
                              *(f"estimated_{m}" for m in ESTIMATED), "estimated_coverage"})
    per_class_metrics = ("recall",)

    def new_metrics(self, thresholds: tuple[float, ...]) -> MulticlassMetrics:
        return MulticlassMetrics()

    def restore_metrics(self, data: dict[str, Any]) -> MulticlassMetrics:
        return MulticlassMetrics.restore(data)

    def read_outputs(self, cols: PredictionColumns, threshold: float, failed: np.ndarray, ok: np.ndarray,
                     rejects: list[Reject]) -> tuple[Any, Any]:
        model = cols.model[0]
        outputs: list[Any] = [None] * len(cols)
        decisions: list[Any] = [None] * len(cols)
        for i in range(len(cols)):
            if not ok[i] or failed[i]:
                continue
            scores = None if cols.scores is None else cols.scores[i]
            if scores is None:
                rejects.append(Reject(i, "scores",
                                      f"model {model!r} is a multiclass model: its predictions carry 'scores'"))
                ok[i] = False
                continue
            why = class_probabilities_problem(scores)
            if why is not None:
                rejects.append(Reject(i, "scores", why))
                ok[i] = False
                continue
            given = None if cols.predicted_label is None else cols.predicted_label[i]
            outputs[i] = scores
            decisions[i] = str(given if given is not None else max(scores, key=scores.__getitem__))
        return outputs, decisions

    def read_truth(self, value: LabelValue) -> LabelValue:
        return str(value)

    def truths_and_scores(self, labels: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The score is the probability given to the true class, after normalising (log loss needs it).
        y = labels.astype(object, copy=False)
        score = np.array([o.get(truth, 0.0) / sum(o.values()) for o, truth in zip(outputs.tolist(), y.tolist())],
                         dtype=np.float64)
        return y, score

    def outcomes(self, y: np.ndarray, score: np.ndarray, decisions: np.ndarray | None,
                 weights: np.ndarray) -> MulticlassOutcomes:
        assert decisions is not None
        return MulticlassOutcomes(y, decisions, score, weights)

    def compare(self, shadow_outputs: list[Any], production_outputs: list[Any], shadow_decisions: list[Any],
                production_decisions: list[Any]) -> Agreement:
        # No single score to subtract: the distance is the total variation between the two
        # normalised class distributions (half the L1 distance, in [0, 1]).
        n = len(shadow_outputs)
        agree = np.fromiter((s == p for s, p in zip(shadow_decisions, production_decisions)), dtype=np.bool_, count=n)
        tv = np.fromiter((_total_variation(a, b) for a, b in zip(shadow_outputs, production_outputs)),
                         dtype=np.float64, count=n)
        return agree, np.ones(n, dtype=np.bool_), np.full(n, np.nan), tv

    # The estimates count a prediction by its share of each listed class and the position of its
    # decided (or true) class among them (core/metrics/estimated_multiclass.py).

    def new_calibration(self, estimates: EstimateSettings) -> ClassCalibration:
        return ClassCalibration(estimates.classes, estimates.bins, estimates.reference_labels)

    def new_estimate(self, estimates: EstimateSettings) -> ClassScoreBins:
        return ClassScoreBins(estimates.classes, estimates.bins)

    def estimate_scores(self, outputs: np.ndarray, classes: tuple[str, ...]) -> FloatArray:
        return class_scores(outputs.tolist(), classes)  # a row per prediction (None: a row of NaN)

    def estimate_codes(self, names: np.ndarray, classes: tuple[str, ...]) -> IntArray:
        return class_codes(names.tolist(), classes)  # -1: None, or a class not listed


def _total_variation(a: dict[str, float], b: dict[str, float]) -> float:
    sa, sb = math.fsum(a.values()), math.fsum(b.values())
    return 0.5 * math.fsum(abs(a.get(k, 0.0) / sa - b.get(k, 0.0) / sb) for k in a.keys() | b.keys())


__all__ = ["Multiclass"]
