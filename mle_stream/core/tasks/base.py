"""What differs between the tasks a model can have (binary, multiclass, regression): one `Task`
object per task (a module each, registered in core/tasks/__init__.py), asked by the evaluator,
the window state, the shadow comparison, the checks and the KServe mapping wherever the task
decides what happens. Tasks hold no state: one instance serves every model of its task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mle_stream.core.columns import PredictionColumns
from mle_stream.core.events import LabelValue
from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.metrics.estimated import Estimate, ReferenceCounts
from mle_stream.core.metrics.multiclass import MulticlassMetrics
from mle_stream.core.metrics.outcomes import BinaryOutcomes, FloatArray, MulticlassOutcomes, RegressionOutcomes
from mle_stream.core.metrics.regression import RegressionMetrics
from mle_stream.core.record_checks import Reject

if TYPE_CHECKING:  # the topology module imports the tasks
    from mle_stream.core.topology.model import EstimateSettings

TaskMetrics = BinaryMetrics | MulticlassMetrics | RegressionMetrics
Outcomes = BinaryOutcomes | MulticlassOutcomes | RegressionOutcomes
# Per (shadow, production) pair: agree, decided, diff, abs_diff (see core/shadow.compare).
Agreement = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class Task(ABC):
    """One task: how its predictions and labels are read, scored and compared."""

    name: ClassVar[str]  # as topologies and the wire name it
    output_field: ClassVar[str]  # the Prediction field that carries the model's output
    # The label join's payload columns: the output's dtype, the decision's (None: no decisions).
    output_dtype: ClassVar[Any]
    decision_dtype: ClassVar[Any | None]
    metric_names: ClassVar[frozenset[str]]  # window metrics (docs/metrics.md), without suffixes
    threshold_metrics: ClassVar[tuple[str, ...]] = ()  # those that take @threshold
    per_class_metrics: ClassVar[tuple[str, ...]] = ()  # those that are per class only: recall[<class>]

    @property
    def has_decisions(self) -> bool:
        """Whether a prediction decides something (a class) that can be right or wrong: concept
        drift then follows the misclassifications, else the absolute errors."""
        return self.decision_dtype is not None

    @abstractmethod
    def new_metrics(self, thresholds: tuple[float, ...]) -> TaskMetrics:
        """An empty metric state; `thresholds`: the topology's metrics.thresholds."""

    @abstractmethod
    def restore_metrics(self, data: dict[str, Any]) -> TaskMetrics: ...

    @abstractmethod
    def read_outputs(self, cols: PredictionColumns, threshold: float, failed: np.ndarray, ok: np.ndarray,
                     rejects: list[Reject]) -> tuple[Any, Any]:
        """The model output and the decision per row (arrays where the task allows, else lists);
        rows that do not fail but that this task cannot use are rejected and cleared in `ok`."""

    @abstractmethod
    def read_truth(self, value: LabelValue) -> LabelValue:
        """A label as this task scores it; ValueError says why it cannot be."""

    def read_truths(self, values: list[LabelValue], rejects: list[Reject]) -> list[LabelValue]:
        """read_truth per label; a label it refuses is rejected and kept as it was (the caller
        drops it)."""
        out: list[LabelValue] = []
        for i, value in enumerate(values):
            try:
                out.append(self.read_truth(value))
            except ValueError as exc:
                rejects.append(Reject(i, "label", f"cannot score a {self.name} model with it: {exc}"))
                out.append(value)
        return out

    @abstractmethod
    def truths_and_scores(self, labels: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joined rows' labels as an array of truths, and the per-row score the outcomes use."""

    @abstractmethod
    def outcomes(self, y: np.ndarray, score: np.ndarray, decisions: np.ndarray | None,
                 weights: np.ndarray) -> Outcomes:
        """Some joined rows as the outcomes the metric state updates from."""

    def drift_score(self, cols: PredictionColumns) -> np.ndarray | None:
        """The per-row score drift sketches track next to the features, if the output is one number."""
        return None

    @abstractmethod
    def compare(self, shadow_outputs: list[Any], production_outputs: list[Any], shadow_decisions: list[Any],
                production_decisions: list[Any]) -> Agreement:
        """Shadow mode: agree, decided, diff, abs_diff per (shadow, production) pair (core/shadow.compare)."""

    # Label-free estimates (docs/estimates.md): only the tasks that decide a class have them (the
    # topology refuses an estimates section elsewhere), so these are not abstract.

    def new_calibration(self, estimates: EstimateSettings) -> ReferenceCounts:
        """The model's empty calibration under the topology's estimates section."""
        raise ValueError(f"a {self.name} model has no estimates")

    def new_estimate(self, estimates: EstimateSettings) -> Estimate:
        """A pane's empty estimate state under the topology's estimates section."""
        raise ValueError(f"a {self.name} model has no estimates")

    def estimate_scores(self, outputs: np.ndarray, classes: tuple[str, ...]) -> FloatArray:
        """Model outputs (None: none) as the estimate states take them (Estimate.serve, update): a new
        array, which the evaluator may change (it blanks failed predictions' rows)."""
        raise ValueError(f"a {self.name} model has no estimates")

    def estimate_codes(self, names: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
        """Decisions or labels (None: none) as the estimate states take them (Estimate.serve, update)."""
        raise ValueError(f"a {self.name} model has no estimates")


__all__ = ["Agreement", "Outcomes", "Task", "TaskMetrics"]
