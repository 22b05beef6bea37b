"""Frozen dataclasses for everything that travels on a topic, with the contract's checks.

Field names are the wire names (schemas/*.avsc); the codec maps bytes to these and back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from mle_stream.errors import InvalidEvent

LabelValue = bool | int | float | str
FeatureValue = float | str


def _require_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"must be a non-empty string, got {value!r}", name)


def _require_millis(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"must be epoch milliseconds (a non-negative integer), got {value!r}", name)


def _require_finite(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidEvent(f"must be a finite number, got {value!r}", name)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction of one model version (schemas/prediction.avsc)."""

    prediction_id: str
    model: str
    version: str
    timestamp: int
    score: float | None = None
    scores: Mapping[str, float] | None = None
    value: float | None = None
    predicted_label: LabelValue | None = None
    latency_ms: float | None = None
    features: Mapping[str, FeatureValue] | None = None
    segment: Mapping[str, str] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        _require_text(self.prediction_id, "prediction_id")
        _require_text(self.model, "model")
        _require_text(self.version, "version")
        _require_millis(self.timestamp, "timestamp")
        outputs = [n for n in ("score", "scores", "value") if getattr(self, n) is not None]
        if len(outputs) > 1:
            raise InvalidEvent(f"set only one of score, scores, value; got {', '.join(outputs)}", outputs[1])
        if not outputs and self.error is None:
            raise InvalidEvent("one of score (binary), scores (multiclass) or value (regression) is required", "score")
        if self.score is not None:
            _require_finite(self.score, "score")
            if not 0.0 <= self.score <= 1.0:
                raise InvalidEvent(f"is a probability and must lie in [0, 1], got {self.score!r}", "score")
        if self.scores is not None:
            if not isinstance(self.scores, Mapping) or not self.scores:
                raise InvalidEvent("must be a non-empty map of class -> probability", "scores")
            for cls, p in self.scores.items():
                _require_finite(p, f"scores.{cls}")
        if self.value is not None:
            _require_finite(self.value, "value")
        if self.latency_ms is not None:
            _require_finite(self.latency_ms, "latency_ms")
            if self.latency_ms < 0:
                raise InvalidEvent(f"must be >= 0, got {self.latency_ms!r}", "latency_ms")
        if self.features is not None:
            if type(self.features) is not dict and not isinstance(self.features, Mapping):  # dict: the fast, usual case
                raise InvalidEvent(f"must be a map of name -> number or string, got {self.features!r}", "features")
            for name, v in self.features.items():
                if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                    raise InvalidEvent(f"must be a number or a string, got {v!r}", f"features.{name}")
        if self.segment is not None:
            if type(self.segment) is not dict and not isinstance(self.segment, Mapping):  # dict: the fast, usual case
                raise InvalidEvent(f"must be a map of dimension -> string, got {self.segment!r}", "segment")
            for name, v in self.segment.items():
                if not isinstance(v, str):
                    raise InvalidEvent(f"must be a string, got {v!r}", f"segment.{name}")


@dataclass(frozen=True, slots=True)
class Label:
    """The ground truth for one prediction (schemas/label.avsc)."""

    prediction_id: str
    model: str
    timestamp: int
    label: LabelValue

    def __post_init__(self) -> None:
        _require_text(self.prediction_id, "prediction_id")
        _require_text(self.model, "model")
        _require_millis(self.timestamp, "timestamp")
        if not isinstance(self.label, (bool, int, float, str)):
            raise InvalidEvent(f"must be a boolean, number or string, got {self.label!r}", "label")
        if isinstance(self.label, float) and not math.isfinite(self.label):
            raise InvalidEvent(f"must be finite, got {self.label!r}", "label")


class CommandKind(str, Enum):
    ROLLBACK = "ROLLBACK"
    SET_TRAFFIC = "SET_TRAFFIC"
    PROMOTE = "PROMOTE"
    RETRAIN = "RETRAIN"
    HOLD = "HOLD"
    APPROVE = "APPROVE"  # an operator lets a rollout waiting for approval take its next step


@dataclass(frozen=True, slots=True)
class Command:
    """A decision for the actuator (schemas/command.avsc). See core/commands.py for the id and the
    freshness rules, core/signing.py for the signature."""

    command_id: str
    kind: CommandKind
    model: str
    baseline_version: str
    candidate_version: str
    traffic: Mapping[str, int]
    reason: str
    rule: str
    window_start: int
    window_end: int
    evidence: str
    policy_version: str
    issued_at: int
    # Epoch ms after which the actuator refuses the command (STALE); 0: none, which it refuses too.
    # Set by the signer (core/signing.py) from issued_at and its TTL, and covered by the signature.
    expires_at: int = 0
    signature: str = ""


class RolloutStatus(str, Enum):
    APPLIED = "APPLIED"
    FAILED = "FAILED"
    SKIPPED_DUPLICATE = "SKIPPED_DUPLICATE"
    REJECTED = "REJECTED"
    DRY_RUN = "DRY_RUN"


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """What the actuator did with one command (schemas/rollout_event.avsc)."""

    event_id: str
    command_id: str
    model: str
    action: str
    status: RolloutStatus
    route_weights: Mapping[str, int]
    champion: str | None
    challenger: str | None
    reason: str
    details: str
    at: int


@dataclass(frozen=True, slots=True)
class MetricSnapshot:
    """Metrics of one model version (and segment) over one event-time window
    (schemas/metric_snapshot.avsc)."""

    model: str
    version: str
    role: str
    segment: str | None  # "dimension=value", None for the whole version
    window_start: int
    window_end: int
    predictions: int
    labeled: int
    metrics: Mapping[str, float | None]
    verdict: str | None
    status: str = "CLOSED"  # OPEN, CLOSED or REVISED
    emitted_at: int = field(default=0)


@dataclass(frozen=True, slots=True)
class DriftTable:
    """Drift of one version's window against its reference (schemas/drift_table.avsc). `features`
    maps a feature (and "__score__") to its statistics, as core.drift.decision.FeatureDrift's
    fields without the name."""

    model: str
    version: str
    role: str
    window_start: int
    window_end: int
    status: str
    reference: str
    features: Mapping[str, Mapping[str, object]]
    drifted: tuple[str, ...]
    drifted_share: float | None
    concept_drift: tuple[Mapping[str, object], ...] = ()  # alarms: detector, params, position, context
    emitted_at: int = 0


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
