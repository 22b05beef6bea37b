"""Predictions and labels as JSON: from a JSON object or a caller's mapping (the client's input, a
JSON producer's message) to the dataclasses, checking what the Avro schemas could not carry; and
any event dataclass back to a JSON-ready dict.

JSON messages are UTF-8: one object, an array of objects, or ``{"records": [...]}``. Field names
are the Avro field names. Unknown fields are ignored so that an older consumer keeps reading what a
newer producer writes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, TypeVar

import numpy as np

from mle_stream.core.events import Label, Prediction
from mle_stream.core.record_checks import output_reject, unjoinable_ids, unusable_predictions
from mle_stream.errors import InvalidEvent
from mle_stream.wire.results import DecodeResult, RecordKind, build_records, message_error

__all__ = ["SURROGATE_ESCAPE", "check_encodable", "check_long", "check_record", "decode_json", "label_from_dict",
           "load_json", "optional_str", "prediction_from_dict", "refuse_lone_surrogates", "to_json_dict"]

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

T = TypeVar("T")


def check_long(value: object, name: str) -> None:
    """Raise InvalidEvent (naming field `name`) for an int that no Avro long can carry."""
    if type(value) is int and not _LONG_MIN <= value <= _LONG_MAX:
        raise InvalidEvent(f"does not fit in a 64-bit signed integer (Avro long), got {value!r}", name)


def _int_as_double(value: int, name: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise InvalidEvent(f"is an integer of {value.bit_length()} bits, too large for a double (Avro double)",
                           name) from None


def _as_double(value: object, name: str) -> object:
    """JSON and Python ints in a double field become floats, so JSON and Avro decode alike."""
    return _int_as_double(value, name) if type(value) is int else value


def _double_map(value: object, name: str) -> dict[str, object] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"must be an object (map), got {value!r}", name)
    out: dict[str, object] = {}
    for key, v in value.items():
        if not isinstance(key, str):
            raise InvalidEvent(f"keys must be strings, got {key!r}", name)
        out[key] = _int_as_double(v, f"{name}.{key}") if type(v) is int else v
    return out


def _string_map(value: object, name: str) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"must be an object (map), got {value!r}", name)
    for key in value:
        if not isinstance(key, str):
            raise InvalidEvent(f"keys must be strings, got {key!r}", name)
    return value


def optional_str(value: object, name: str) -> str | None:
    """`value` if it is a string or None; else InvalidEvent naming field `name`."""
    if value is not None and not isinstance(value, str):
        raise InvalidEvent(f"must be a string or null, got {value!r}", name)
    return value


def _label_value(value: object, name: str) -> object:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise InvalidEvent(f"must be a boolean, number or string, got {value!r}", name)
    check_long(value, name)
    return value


def _check_keys(data: Mapping[str, Any], known: frozenset[str], required: Iterable[str], strict: bool) -> None:
    for name in required:
        if name not in data:
            raise InvalidEvent("is required but missing", name)
    if strict:
        for name in data:
            if name not in known:
                raise InvalidEvent(f"is not a field; known fields: {', '.join(sorted(known))}", str(name))


_PREDICTION_FIELDS = frozenset(f.name for f in dataclasses.fields(Prediction))
_PREDICTION_REQUIRED = ("prediction_id", "model", "version", "timestamp")
_LABEL_FIELDS = frozenset(f.name for f in dataclasses.fields(Label))


def prediction_from_dict(data: Mapping[str, Any], *, strict: bool = False) -> Prediction:
    """A Prediction from a JSON object or a caller's mapping; raises InvalidEvent naming the field.

    Unknown keys are ignored, as on the wire, unless `strict`.
    """
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"a prediction must be an object (mapping), got {type(data).__name__}")
    _check_keys(data, _PREDICTION_FIELDS, _PREDICTION_REQUIRED, strict)
    get = data.get
    timestamp = data["timestamp"]
    check_long(timestamp, "timestamp")
    return Prediction(
        prediction_id=data["prediction_id"],
        model=data["model"],
        version=data["version"],
        timestamp=timestamp,
        score=_as_double(get("score"), "score"),  # type: ignore[arg-type]  # Prediction validates the type
        scores=_double_map(get("scores"), "scores"),  # type: ignore[arg-type]
        value=_as_double(get("value"), "value"),  # type: ignore[arg-type]
        predicted_label=_label_value(get("predicted_label"), "predicted_label"),  # type: ignore[arg-type]
        latency_ms=_as_double(get("latency_ms"), "latency_ms"),  # type: ignore[arg-type]
        features=_double_map(get("features"), "features"),  # type: ignore[arg-type]
        segment=_string_map(get("segment"), "segment"),
        error=optional_str(get("error"), "error"),
    )


def label_from_dict(data: Mapping[str, Any], *, strict: bool = False) -> Label:
    """A Label from a JSON object or a caller's mapping; the label keeps its JSON type."""
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"a label must be an object (mapping), got {type(data).__name__}")
    _check_keys(data, _LABEL_FIELDS, ("prediction_id", "model", "timestamp", "label"), strict)
    timestamp = data["timestamp"]
    check_long(timestamp, "timestamp")
    label = data["label"]
    check_long(label, "label")
    return Label(data["prediction_id"], data["model"], timestamp, label)


def check_encodable(event: Prediction | Label) -> None:
    """Raise InvalidEvent for what the dataclass accepts but Avro cannot carry: ints beyond 64 bits
    in long fields or beyond a double's range in double fields, strings with a lone surrogate."""
    check_long(event.timestamp, "timestamp")
    if isinstance(event, Label):
        check_long(event.label, "label")
        _check_text(event.label, "label")
    else:
        check_long(event.predicted_label, "predicted_label")
        for name in ("score", "value", "latency_ms"):
            _as_double(getattr(event, name), name)
        for name in ("scores", "features"):
            _double_map(getattr(event, name), name)
        _check_text(event.version, "version")
        _check_text(event.error, "error")
        _check_text(event.predicted_label, "predicted_label")
        for name in ("scores", "features", "segment"):
            values = getattr(event, name)
            if values is not None:
                for key, v in values.items():
                    _check_text(key, name)
                    _check_text(v, f"{name}.{key}")
    _check_text(event.prediction_id, "prediction_id")
    _check_text(event.model, "model")


def _check_text(value: object, name: str) -> None:
    # isascii is a C scan; only other text pays for the encode, which fails on a lone surrogate.
    if type(value) is str and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent("holds a lone surrogate (\\uD800-\\uDFFF without its pair): not Unicode text, "
                               "which no Avro string can carry", name) from None


def check_record(event: Prediction | Label) -> None:
    """Raise InvalidEvent for a record the worker would dead-letter whatever the model's topology:
    what Avro cannot carry (check_encodable), what no topology takes and what the one task that can
    take the prediction's output refuses (core/record_checks.py).

    The serving client calls it in the caller's thread, so what it accepts is what the worker reads.
    """
    check_encodable(event)
    if isinstance(event, Prediction):
        latency = np.array([np.nan if event.latency_ms is None else event.latency_ms], dtype=np.float64)
        rejects = unusable_predictions([event.prediction_id], latency)
        output = output_reject(event)
        if output is not None:
            rejects.append(output)
    else:
        rejects = unjoinable_ids([event.prediction_id])
    if rejects:
        raise InvalidEvent(rejects[0].reason, rejects[0].field)


def load_json(payload: bytes) -> Any:
    """The parsed JSON document; raises ValueError with a readable reason."""
    if not payload:
        raise ValueError("empty message (0 bytes): neither Avro single-object nor JSON")
    try:
        text = payload.decode("utf-8")  # json.loads(bytes) would also guess UTF-16 and UTF-32
    except UnicodeDecodeError as exc:
        raise ValueError(f"not JSON: not UTF-8 (and no Avro C3 01 marker): {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON that can be read: nested too deeply") from None


# A \uD800-\uDFFF escape: JSON may spell a lone surrogate, which is no text at all (UTF-8 cannot
# carry it: every later encode of the string would raise). Only a message with such an escape pays
# for looking at its strings; a valid pair (an emoji spelled as two escapes) decodes to one character.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate_field(datum: object) -> str | None:
    """The top-level field of a JSON object that holds a lone surrogate ('' for the object as a
    whole, e.g. in a key), or None when it holds none."""
    def holds(value: object) -> bool:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if not holds(datum):
        return None
    if isinstance(datum, Mapping):
        return next((str(k) for k, v in datum.items() if holds(v)), "")
    return ""


def refuse_lone_surrogates(datum: object) -> None:
    """Raise InvalidEvent naming the field of a parsed JSON object that holds a lone surrogate."""
    field = _lone_surrogate_field(datum)
    if field is not None:
        raise InvalidEvent("holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair): not Unicode "
                           "text, which no Avro string or UTF-8 output can carry", field)


def decode_json(payload: bytes, kind: RecordKind[T]) -> DecodeResult[T]:
    """A JSON message of `kind`: one object, an array of them, or {"records": [...]}."""
    try:
        doc = load_json(payload)
    except ValueError as exc:
        return message_error(str(exc))
    make = kind.from_json
    if SURROGATE_ESCAPE.search(payload):
        def make(datum: Any, build: Callable[[Any], T] = kind.from_json) -> T:
            refuse_lone_surrogates(datum)
            return build(datum)
    if isinstance(doc, dict) and kind.id_field not in doc and "records" in doc:
        doc = doc["records"]
        if not isinstance(doc, list):
            return message_error(f"JSON field 'records' must be an array of {kind.noun} objects")
    elif isinstance(doc, dict):
        doc = [doc]
    elif not isinstance(doc, list):
        return message_error(
            f"JSON message must be a {kind.noun} object, an array of them or {{\"records\": [...]}}, "
            f"got {type(doc).__name__}"
        )
    return build_records(doc, make)


def to_json_dict(obj: object) -> dict[str, Any]:
    """Any event dataclass as a JSON-ready dict with the wire field names (enums as their values).

    json.dumps of the result is a valid JSON message for the matching decoder.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected an mle-stream event dataclass, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out
