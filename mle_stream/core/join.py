"""The label join: pairs each label with its prediction by prediction_id, in either arrival order.

A prediction waits for its label until the watermark passes its timestamp by `max_delay_ms`, then
expires as unlabeled (never as an error). A label that arrives first waits the same way for its
prediction. Once joined, both are forgotten, so a repeated label finds nothing to pair with and
cannot count twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from mle_stream.core.events import Label, LabelValue, Prediction


@dataclass(frozen=True, slots=True)
class Joined:
    prediction: Prediction
    label: Label


class LabelJoin:
    def __init__(self, max_delay_ms: int) -> None:
        if max_delay_ms <= 0:
            raise ValueError(f"max_delay_ms must be > 0, got {max_delay_ms}")
        self.max_delay_ms = max_delay_ms
        self._predictions: dict[str, Prediction] = {}
        self._labels: dict[str, Label] = {}
        self.expired_predictions = 0
        self.expired_labels = 0

    def add_prediction(self, prediction: Prediction) -> Joined | None:
        label = self._labels.pop(prediction.prediction_id, None)
        if label is not None:
            return Joined(prediction, label)
        self._predictions[prediction.prediction_id] = prediction
        return None

    def add_label(self, label: Label) -> Joined | None:
        prediction = self._predictions.pop(label.prediction_id, None)
        if prediction is not None:
            return Joined(prediction, label)
        self._labels[label.prediction_id] = label
        return None

    def expire(self, watermark: int) -> None:
        horizon = watermark - self.max_delay_ms
        old_p = [k for k, p in self._predictions.items() if p.timestamp < horizon]
        for key in old_p:
            del self._predictions[key]
        old_l = [k for k, lab in self._labels.items() if lab.timestamp < horizon]
        for key in old_l:
            del self._labels[key]
        self.expired_predictions += len(old_p)
        self.expired_labels += len(old_l)

    @property
    def pending(self) -> tuple[int, int]:
        """(predictions waiting for a label, labels waiting for a prediction)."""
        return len(self._predictions), len(self._labels)


_TRUE = {"1", "true", "yes", "positive"}
_FALSE = {"0", "false", "no", "negative"}


def binary_truth(value: LabelValue) -> bool:
    """Read a binary label: true/false, 1/0 or their usual spellings; anything else is a bad label."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"a binary label must be true/false or 1/0, got {value!r}")
