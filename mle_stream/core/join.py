"""The label join: pairs each label with its prediction by prediction_id, in either arrival order.

- A prediction waits for its label until event time passes its timestamp by `max_delay_ms`, then
  expires as unlabeled (never as an error). A label that comes first waits the same way.
- A joined pair is kept for `correction_ms` more, so that a second label for the same prediction
  is a *correction*: the caller takes the old outcome out and puts the new one in. The same label
  twice, or the same prediction twice, is a duplicate and changes nothing.
- Expiry pops from the front of insertion-ordered dicts and stops at the first entry still young,
  so it costs O(expired), not O(pending). Entries that arrived out of event-time order may outlive
  their horizon by as much as they were out of order.

What is kept per prediction is whatever the caller passes (`P`): the evaluator keeps only what
scoring needs, not the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from mle_stream.core.events import LabelValue

P = TypeVar("P")


class Arrival(Enum):
    WAITING = "waiting"  # stored until its counterpart comes
    JOINED = "joined"  # paired for the first time
    CORRECTED = "corrected"  # a different label for an already joined prediction
    DUPLICATE = "duplicate"  # seen before: no effect


@dataclass(frozen=True, slots=True)
class JoinResult(Generic[P]):
    arrival: Arrival
    prediction: P | None = None
    label: LabelValue | None = None
    previous_label: LabelValue | None = None  # set for CORRECTED


class LabelJoin(Generic[P]):
    def __init__(self, max_delay_ms: int, correction_ms: int) -> None:
        if max_delay_ms <= 0 or correction_ms < 0:
            raise ValueError(f"need max_delay_ms > 0 and correction_ms >= 0, got {max_delay_ms}, {correction_ms}")
        self.max_delay_ms = max_delay_ms
        self.correction_ms = correction_ms
        self._predictions: dict[str, tuple[int, P]] = {}
        self._labels: dict[str, tuple[int, LabelValue]] = {}
        self._joined: dict[str, tuple[int, P, LabelValue]] = {}
        self.expired_predictions = 0
        self.expired_labels = 0
        self.corrections = 0
        self.duplicates = 0

    def add_prediction(self, prediction_id: str, timestamp: int, prediction: P) -> JoinResult[P]:
        if prediction_id in self._predictions or prediction_id in self._joined:
            self.duplicates += 1
            return JoinResult(Arrival.DUPLICATE)
        waiting = self._labels.pop(prediction_id, None)
        if waiting is None:
            self._predictions[prediction_id] = (timestamp, prediction)
            return JoinResult(Arrival.WAITING)
        self._joined[prediction_id] = (timestamp, prediction, waiting[1])
        return JoinResult(Arrival.JOINED, prediction, waiting[1])

    def add_label(self, prediction_id: str, timestamp: int, label: LabelValue) -> JoinResult[P]:
        pending = self._predictions.pop(prediction_id, None)
        if pending is not None:
            self._joined[prediction_id] = (pending[0], pending[1], label)
            return JoinResult(Arrival.JOINED, pending[1], label)
        joined = self._joined.get(prediction_id)
        if joined is not None:
            ts, prediction, previous = joined
            if _same(previous, label):
                self.duplicates += 1
                return JoinResult(Arrival.DUPLICATE)
            self._joined[prediction_id] = (ts, prediction, label)
            self.corrections += 1
            return JoinResult(Arrival.CORRECTED, prediction, label, previous)
        waiting = self._labels.get(prediction_id)
        if waiting is not None and _same(waiting[1], label):
            self.duplicates += 1
            return JoinResult(Arrival.DUPLICATE)
        # A newer label for a prediction not seen yet simply replaces the older one.
        self._labels.pop(prediction_id, None)
        self._labels[prediction_id] = (timestamp, label)
        return JoinResult(Arrival.WAITING)

    def expire(self, watermark: int) -> None:
        self.expired_predictions += _pop_older(self._predictions, watermark - self.max_delay_ms)
        self.expired_labels += _pop_older(self._labels, watermark - self.max_delay_ms)
        _pop_older(self._joined, watermark - self.max_delay_ms - self.correction_ms)

    @property
    def pending(self) -> tuple[int, int]:
        """(predictions waiting for a label, labels waiting for a prediction)."""
        return len(self._predictions), len(self._labels)

    @property
    def joined(self) -> int:
        return len(self._joined)


def _same(a: LabelValue, b: LabelValue) -> bool:
    return type(a) is type(b) and a == b


def _pop_older(entries: dict[str, tuple], horizon: int) -> int:  # type: ignore[type-arg]
    popped = 0
    while entries:
        key = next(iter(entries))
        if entries[key][0] >= horizon:
            break
        del entries[key]
        popped += 1
    return popped


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
