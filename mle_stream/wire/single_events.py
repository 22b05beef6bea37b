"""The single-event topics: commands, rollout events, metric snapshots and drift tables, one event
per message. Each is written as Avro single-object encoding and read from that, JSON or Confluent
Schema Registry framing; the decoders raise `InvalidEvent` naming what is malformed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TypeVar

import fastavro

from mle_stream.core.events import Command, CommandKind, DriftTable, MetricSnapshot, RolloutEvent, RolloutStatus
from mle_stream.errors import InvalidEvent
from mle_stream.wire import confluent
from mle_stream.wire.avro_schemas import WireSchema, history, schemas
from mle_stream.wire.framing import (
    AVRO_MARKER,
    SINGLE_OBJECT_HEADER_LEN,
    as_bytes,
    read_body,
    trailing_bytes,
    write_single_object,
    wrong_schema,
)
from mle_stream.wire.json_records import (
    SURROGATE_ESCAPE,
    check_long,
    load_json,
    optional_str,
    refuse_lone_surrogates,
    to_json_dict,
)
from mle_stream.wire.schema_registry import WriterSchemas

__all__ = ["decode_command", "decode_drift_table", "decode_metric_snapshot", "decode_rollout_event",
           "encode_command", "encode_drift_table", "encode_metric_snapshot", "encode_rollout_event"]

_SCHEMAS = schemas()
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _req_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(f"must be a string, got {value!r}", name)
    return value


def _req_long(value: object, name: str) -> int:
    if type(value) is not int:
        raise InvalidEvent(f"must be an integer, got {value!r}", name)
    check_long(value, name)
    return value


def _nullable_double_map(value: object, name: str) -> dict[str, float | None]:
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"must be a map of name -> number or null, got {type(value).__name__}", name)
    return {str(k): _opt_double(v, f"{name}.{k}") for k, v in value.items()}


def _opt_double(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(f"must be a number or null, got {value!r}", name)
    return float(value)


def _str_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidEvent(f"must be a list of strings, got {value!r}", name)
    return tuple(value)


def _req_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidEvent(f"must be true or false, got {value!r}", name)
    return value


_FEATURE_DRIFT_SPEC: dict[str, Callable[[object, str], object]] = {
    "kind": _req_str, "reference_count": _req_long, "current_count": _req_long,
    **{k: _opt_double for k in ("psi", "jensen_shannon", "wasserstein", "wasserstein_error_bound", "ks_statistic",
                                "ks_statistic_upper", "chi_square", "p_value", "p_value_adjusted")},
    "test": optional_str, "exceeded": _str_list, "drifted": _req_bool, "reason": _req_str,
}


def _feature_drift_map(value: object, name: str) -> dict[str, dict[str, object]]:
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"must be a map of feature -> statistics, got {type(value).__name__}", name)
    out: dict[str, dict[str, object]] = {}
    for feature, stats in value.items():
        where = f"{name}.{feature}"
        if not isinstance(stats, Mapping):
            raise InvalidEvent(f"must be an object of statistics, got {stats!r}", where)
        missing = [k for k in ("kind", "reference_count", "current_count", "drifted", "reason", "exceeded")
                   if k not in stats]
        if missing:
            raise InvalidEvent(f"is missing {', '.join(missing)}", where)
        out[str(feature)] = {k: check(stats.get(k), f"{where}.{k}") for k, check in _FEATURE_DRIFT_SPEC.items()}
    return out


def _int_map(value: object, name: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"must be an object of string -> integer, got {value!r}", name)
    for key, v in value.items():
        if not isinstance(key, str):
            raise InvalidEvent(f"keys must be strings, got {key!r}", name)
        if type(v) is not int or not _INT_MIN <= v <= _INT_MAX:
            raise InvalidEvent(f"must be a 32-bit integer, got {v!r}", f"{name}.{key}")
    return dict(value)


def _enum(cls: type[Enum]) -> Callable[[object, str], Enum]:
    def convert(value: object, name: str) -> Enum:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise InvalidEvent(f"must be one of {allowed}, got {value!r}", name) from None

    return convert


_Spec = Mapping[str, Callable[[object, str], object]]
_COMMAND_SPEC: _Spec = {
    "command_id": _req_str, "kind": _enum(CommandKind), "model": _req_str,
    "baseline_version": _req_str, "candidate_version": _req_str, "traffic": _int_map,
    "reason": _req_str, "rule": _req_str, "window_start": _req_long, "window_end": _req_long,
    "evidence": _req_str, "policy_version": _req_str, "issued_at": _req_long, "signature": _req_str,
    "expires_at": _req_long,
}
_ROLLOUT_SPEC: _Spec = {
    "event_id": _req_str, "command_id": _req_str, "model": _req_str, "action": _req_str,
    "status": _enum(RolloutStatus), "route_weights": _int_map, "champion": optional_str,
    "challenger": optional_str, "reason": _req_str, "details": _req_str, "at": _req_long,
}
_SNAPSHOT_SPEC: _Spec = {
    "model": _req_str, "version": _req_str, "role": _req_str, "segment": optional_str,
    "window_start": _req_long, "window_end": _req_long, "predictions": _req_long, "labeled": _req_long,
    "metrics": _nullable_double_map, "status": _req_str, "verdict": optional_str, "emitted_at": _req_long,
}
def _alarms(value: object, name: str) -> tuple[dict[str, object], ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidEvent(f"must be a list of alarms, got {value!r}", name)
    out = []
    for i, alarm in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(alarm, Mapping) or not {"detector", "params", "position", "context"} <= set(alarm):
            raise InvalidEvent(f"must be an object with detector, params, position and context, got {alarm!r}", where)
        for key in ("params", "context"):
            if not isinstance(alarm[key], Mapping) or not all(
                    v is None or isinstance(v, (bool, int, float, str)) for v in alarm[key].values()):
                raise InvalidEvent("must map names to plain values", f"{where}.{key}")
        out.append({"detector": _req_str(alarm["detector"], f"{where}.detector"), "params": dict(alarm["params"]),
                    "position": _req_long(alarm["position"], f"{where}.position"), "context": dict(alarm["context"])})
    return tuple(out)


_DRIFT_SPEC: _Spec = {
    "model": _req_str, "version": _req_str, "role": _req_str, "window_start": _req_long, "window_end": _req_long,
    "status": _req_str, "reference": _req_str, "features": _feature_drift_map, "drifted": _str_list,
    "drifted_share": _opt_double, "concept_drift": _alarms, "emitted_at": _req_long,
}
# Fields a JSON producer may leave out: nullable ones, and those the dataclass defaults.
_OPTIONAL_DEFAULTS: dict[type, dict[str, object]] = {
    Command: {"signature": "", "expires_at": 0},
    RolloutEvent: {"champion": None, "challenger": None},
    MetricSnapshot: {"segment": None, "status": "CLOSED", "verdict": None, "emitted_at": 0},
    DriftTable: {"drifted_share": None, "concept_drift": (), "emitted_at": 0},
}

E = TypeVar("E", Command, RolloutEvent, MetricSnapshot, DriftTable)


def _from_spec(cls: type[E], spec: _Spec, data: object) -> E:
    noun = cls.__name__
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"a {noun} must be a JSON object, got {type(data).__name__}")
    defaults = _OPTIONAL_DEFAULTS[cls]
    values: dict[str, Any] = {}
    for name, check in spec.items():
        if name in data:
            values[name] = check(data[name], name)
        elif name in defaults:
            values[name] = defaults[name]
        else:
            raise InvalidEvent(f"is required but missing from the {noun}", name)
    return cls(**values)


def _encode_single(schema: WireSchema, cls: type[E], spec: _Spec, event: E) -> bytes:
    if not isinstance(event, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(event).__name__}")
    datum = to_json_dict(event)
    _from_spec(cls, spec, datum)  # the dataclasses do not check themselves: fail naming the field
    return write_single_object(schema, datum)


def _decode_single(payload: bytes, schema: WireSchema, cls: type[E], spec: _Spec,
                   registry: WriterSchemas | None = None) -> E:
    payload = as_bytes(payload)
    if payload[:1] == confluent.MAGIC:
        resolution = confluent.framed_resolution(payload, registry, schema.name, schema)
        if isinstance(resolution, str):
            raise InvalidEvent(resolution)
        datum = confluent.read_framed(payload, resolution)
    elif payload[:2] == AVRO_MARKER:
        if len(payload) < SINGLE_OBJECT_HEADER_LEN:
            raise InvalidEvent(f"truncated Avro single-object message: {len(payload)} bytes")
        fp = payload[2:SINGLE_OBJECT_HEADER_LEN]
        readable = [schema, *history(schema.name)]
        writer = next((w for w in readable if fp in w.fingerprints), None)
        if writer is None:
            raise InvalidEvent(wrong_schema(fp, readable, cls.__name__))
        stream = io.BytesIO(payload)
        stream.seek(SINGLE_OBJECT_HEADER_LEN)
        try:
            datum = (read_body(stream, schema) if writer is schema
                     else fastavro.schemaless_reader(stream, writer.parsed, schema.parsed))
        except Exception as exc:  # noqa: BLE001 - fastavro's many corrupt-input errors, reported
            raise InvalidEvent(f"unreadable Avro {schema.name}: {type(exc).__name__}: {exc}") from exc
        problem = trailing_bytes(stream, len(payload), schema.name)
        if problem:
            raise InvalidEvent(problem)
    else:
        try:
            datum = load_json(payload)
        except ValueError as exc:
            raise InvalidEvent(str(exc)) from None
        if SURROGATE_ESCAPE.search(payload):
            refuse_lone_surrogates(datum)
    return _from_spec(cls, spec, datum)


def encode_command(cmd: Command) -> bytes:
    """A Command as an Avro single-object message; InvalidEvent names a field of the wrong type."""
    return _encode_single(_SCHEMAS["Command"], Command, _COMMAND_SPEC, cmd)


def decode_command(payload: bytes, registry: WriterSchemas | None = None) -> Command:
    """A Command from Avro single-object, JSON or Confluent framing (its writer schemas from
    `registry`); raises InvalidEvent naming what is malformed, RegistryUnavailable when the
    registry cannot be asked. So do the other single-event decoders."""
    return _decode_single(payload, _SCHEMAS["Command"], Command, _COMMAND_SPEC, registry)


def encode_rollout_event(event: RolloutEvent) -> bytes:
    """A RolloutEvent as an Avro single-object message."""
    return _encode_single(_SCHEMAS["RolloutEvent"], RolloutEvent, _ROLLOUT_SPEC, event)


def decode_rollout_event(payload: bytes, registry: WriterSchemas | None = None) -> RolloutEvent:
    """A RolloutEvent from Avro single-object, JSON or Confluent framing; raises InvalidEvent."""
    return _decode_single(payload, _SCHEMAS["RolloutEvent"], RolloutEvent, _ROLLOUT_SPEC, registry)


def encode_metric_snapshot(snapshot: MetricSnapshot) -> bytes:
    """A MetricSnapshot as an Avro single-object message."""
    return _encode_single(_SCHEMAS["MetricSnapshot"], MetricSnapshot, _SNAPSHOT_SPEC, snapshot)


def decode_metric_snapshot(payload: bytes, registry: WriterSchemas | None = None) -> MetricSnapshot:
    """A MetricSnapshot from Avro single-object, JSON or Confluent framing; raises InvalidEvent."""
    return _decode_single(payload, _SCHEMAS["MetricSnapshot"], MetricSnapshot, _SNAPSHOT_SPEC, registry)


def encode_drift_table(table: DriftTable) -> bytes:
    """A DriftTable as an Avro single-object message."""
    return _encode_single(_SCHEMAS["DriftTable"], DriftTable, _DRIFT_SPEC, table)


def decode_drift_table(payload: bytes, registry: WriterSchemas | None = None) -> DriftTable:
    """A DriftTable from Avro single-object, JSON or Confluent framing; raises InvalidEvent."""
    return _decode_single(payload, _SCHEMAS["DriftTable"], DriftTable, _DRIFT_SPEC, registry)
