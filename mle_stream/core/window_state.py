"""The state of one model version (and segment) over one pane or window: the task's metric state
(binary, multiclass or regression), the serving state and, in shadow mode, the agreement with
production, merged and snapshotted together."""

from __future__ import annotations

from typing import Any

from mle_stream.core.drift.live import DriftSketches, merge_optional
from mle_stream.core.metrics.outcomes import BoolArray, FloatArray
from mle_stream.core.metrics.serving import ServingMetrics
from mle_stream.core.shadow import AgreementMetrics
from mle_stream.core.tasks import task_for
from mle_stream.core.tasks.base import Outcomes, TaskMetrics
from mle_stream.core.topology import Topology


class WindowState:
    def __init__(self, task: TaskMetrics, serving: ServingMetrics, drift: DriftSketches | None = None,
                 shadow: AgreementMetrics | None = None) -> None:
        self.task = task
        self.serving = serving
        self.drift = drift  # a tracked version's whole-version drift sketches, once it has rows
        self.shadow = shadow  # shadow mode: pairs with production (only the shadow version's fill)

    @classmethod
    def for_topology(cls, topology: Topology) -> WindowState:
        task = task_for(topology.task).new_metrics(topology.thresholds)
        return cls(task, ServingMetrics(), shadow=AgreementMetrics() if topology.mode == "shadow" else None)

    def serve(self, latency_ms: FloatArray, serving_error: BoolArray) -> None:
        """Predictions as served: latency (NaN when not reported) and whether serving failed."""
        self.serving.update(latency_ms, serving_error)

    def score(self, outcomes: Outcomes) -> None:
        """Joined (prediction, label) rows; weight -1 rows take a corrected outcome back out."""
        self.task.update(outcomes)  # type: ignore[arg-type]
        self.serving.add_labeled(int(outcomes.weights().sum()))

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
        return out

    def merge(self, other: WindowState) -> WindowState:
        return WindowState(self.task.merge(other.task), self.serving.merge(other.serving),  # type: ignore[arg-type]
                           merge_optional(self.drift, other.drift), merge_optional(self.shadow, other.shadow))

    def snapshot(self) -> dict[str, Any]:
        data = {"task": self.task.snapshot(), "serving": self.serving.snapshot()}
        if self.drift is not None:
            data["drift"] = self.drift.snapshot()
        if self.shadow is not None:
            data["shadow"] = self.shadow.snapshot()
        return data

    @classmethod
    def restore(cls, task: str, data: dict[str, Any]) -> WindowState:
        drift = DriftSketches.restore(data["drift"]) if "drift" in data else None
        shadow = AgreementMetrics.restore(data["shadow"]) if "shadow" in data else None
        return cls(task_for(task).restore_metrics(data["task"]), ServingMetrics.restore(data["serving"]), drift, shadow)
