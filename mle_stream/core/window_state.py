"""The state of one model version (and segment) over one pane or window: the task's metric state
(binary, multiclass or regression), the serving state, in shadow mode the agreement with
production and, with an estimates section, the score bins of label-free estimates, merged and
snapshotted together."""

from __future__ import annotations

from typing import Any

import numpy as np

from mle_stream.core.drift.live import DriftSketches, merge_optional
from mle_stream.core.metrics.estimated import Estimate, ReferenceCounts, restore_like
from mle_stream.core.metrics.outcomes import BoolArray, FloatArray
from mle_stream.core.metrics.serving import ServingMetrics
from mle_stream.core.shadow import AgreementMetrics
from mle_stream.core.tasks import task_for
from mle_stream.core.tasks.base import Outcomes, TaskMetrics
from mle_stream.core.topology import Topology

# Labeled rows for the estimates, as the task reads them (Task.estimate_scores, estimate_codes):
# scores, decisions, labels, weights.
EstimateRows = tuple[FloatArray, np.ndarray, np.ndarray, FloatArray]


class WindowState:
    def __init__(self, task: TaskMetrics, serving: ServingMetrics, drift: DriftSketches | None = None,
                 shadow: AgreementMetrics | None = None, estimate: Estimate | None = None,
                 calibration: ReferenceCounts | None = None) -> None:
        self.task = task
        self.serving = serving
        self.drift = drift  # a tracked version's whole-version drift sketches, once it has rows
        self.shadow = shadow  # shadow mode: pairs with production (only the shadow version's fill)
        self.estimate = estimate  # estimates: score bins of served and labeled predictions
        # The model's calibration, shared by all its states and kept by the evaluator (not snapshotted
        # here): the estimates of every window read the one learned from the reference.
        self.calibration = calibration

    @classmethod
    def for_topology(cls, topology: Topology, calibration: ReferenceCounts | None = None) -> WindowState:
        task = task_for(topology.task).new_metrics(topology.thresholds)
        estimate = new_estimate(topology)
        return cls(task, ServingMetrics(), shadow=AgreementMetrics() if topology.mode == "shadow" else None,
                   estimate=estimate, calibration=calibration)

    def serve(self, latency_ms: FloatArray, serving_error: BoolArray, score: FloatArray | None = None,
              decision: np.ndarray | None = None) -> None:
        """Predictions as served: latency (NaN when not reported) and whether serving failed; with
        estimates, their scores and decisions as the task reads them for the estimates (rows
        without scores, failed predictions', are left out)."""
        self.serving.update(latency_ms, serving_error)
        if self.estimate is not None and score is not None and decision is not None:
            self.estimate.serve(score, decision, self.calibration)

    def score(self, outcomes: Outcomes, estimate_rows: EstimateRows | None = None) -> None:
        """Joined (prediction, label) rows; weight -1 rows take a corrected outcome back out.
        `estimate_rows`: the same rows for the estimates (without them, the estimates take none)."""
        self.task.update(outcomes)  # type: ignore[arg-type]
        self.serving.add_labeled(int(outcomes.weights().sum()))
        if self.estimate is not None and estimate_rows is not None:
            self.estimate.update(*estimate_rows, self.calibration)

    @property
    def predictions(self) -> int:
        return self.serving.count

    @property
    def labeled(self) -> int:
        return self.task.count

    @property
    def error_rate(self) -> float | None:
        """Misclassification rate over labeled predictions (classification only)."""
        return self.task.values().get("error_rate")

    @property
    def serving_error_rate(self) -> float | None:
        return self.serving.values().get("error_rate")

    def values(self, window_s: float) -> dict[str, float | None]:
        """Every metric of the window by name (docs/metrics.md lists them)."""
        out: dict[str, float | None] = dict(self.task.values())
        serving = self.serving.values(window_s)
        serving["serving_error_rate"] = serving.pop("error_rate")
        out.update(serving)
        if self.shadow is not None:
            out.update(self.shadow.values())
            out["paired_rate"] = self.shadow.pairs / self.predictions if self.shadow.pairs else None
        if self.estimate is not None:
            out.update(self.estimate.values(self.calibration, out))
        return out

    def merge(self, other: WindowState) -> WindowState:
        return WindowState(self.task.merge(other.task), self.serving.merge(other.serving),  # type: ignore[arg-type]
                           merge_optional(self.drift, other.drift), merge_optional(self.shadow, other.shadow),
                           merge_optional(self.estimate, other.estimate),
                           self.calibration or other.calibration)

    def snapshot(self) -> dict[str, Any]:
        data = {"task": self.task.snapshot(), "serving": self.serving.snapshot()}
        if self.drift is not None:
            data["drift"] = self.drift.snapshot()
        if self.shadow is not None:
            data["shadow"] = self.shadow.snapshot()
        if self.estimate is not None:
            data["estimate"] = self.estimate.snapshot()
        return data

    @classmethod
    def restore(cls, topology: Topology, data: dict[str, Any],
                calibration: ReferenceCounts | None = None) -> WindowState:
        """A snapshot taken without estimates, or with other bins or classes than the topology's
        estimates section, restores with empty score bins: its estimates then cover the
        predictions served since."""
        drift = DriftSketches.restore(data["drift"]) if "drift" in data else None
        shadow = AgreementMetrics.restore(data["shadow"]) if "shadow" in data else None
        estimate = new_estimate(topology)
        if estimate is not None:
            estimate = restore_like(estimate, data.get("estimate"))
        return cls(task_for(topology.task).restore_metrics(data["task"]), ServingMetrics.restore(data["serving"]),
                   drift, shadow, estimate, calibration)


def new_estimate(topology: Topology) -> Estimate | None:
    """The empty estimate state of the topology's estimates section (None without one)."""
    es = topology.estimates
    return task_for(topology.task).new_estimate(es) if es.enabled else None


def new_calibration(topology: Topology) -> ReferenceCounts | None:
    """The empty calibration of the topology's estimates section (None without one)."""
    es = topology.estimates
    return task_for(topology.task).new_calibration(es) if es.enabled else None
