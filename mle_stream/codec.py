"""The wire format of every mle-stream topic: the one module that turns events into bytes and back.

Producers may write either of two encodings; consumers accept both, told apart by the first bytes:

- **Avro single-object encoding** (the Avro spec's registry-free framing): the marker bytes
  ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
  Canonical Form, then the Avro binary body. Any Avro implementation (Java's
  ``BinaryMessageDecoder``, ``avro`` for Python, fastavro) reads it with the ``schemas/*.avsc``
  files. This is what mle-stream itself writes.
- **JSON** (UTF-8), for producers that do not want an Avro dependency: one object per message,
  an array of objects, or ``{"records": [...]}``. Field names are the Avro field names. Unknown
  fields are ignored so that an older consumer keeps reading what a newer producer writes.

Prediction and label topics carry either one record or a batch (PredictionBatch / LabelBatch) per
message; the decoders return every valid record of a batch and one `RecordError` per invalid one,
so a single bad record never costs the good ones. Commands, rollout events and metric snapshots
travel one per message and their decoders raise `InvalidEvent`.

Two fastavro defaults are overridden on purpose: ``timestamp-millis`` fields are read and written
as plain ``int`` epoch milliseconds (the dataclasses carry ints; fastavro would build datetimes),
and union branches are chosen explicitly (a Python ``bool`` is an ``int``, an ``int`` feature is an
Avro ``double``), so what is written does not depend on fastavro's branch-guessing.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import re
import struct
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Mapping, NoReturn, Sequence, TypeVar

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from mle_stream.core.events import (
    Command,
    CommandKind,
    Label,
    MetricSnapshot,
    Prediction,
    RolloutEvent,
    RolloutStatus,
)
from mle_stream.errors import InvalidEvent

__all__ = [
    "AVRO_MARKER",
    "DecodeResult",
    "RecordError",
    "WireSchema",
    "check_encodable",
    "decode_command",
    "decode_labels",
    "decode_metric_snapshot",
    "decode_predictions",
    "decode_rollout_event",
    "encode_command",
    "encode_label",
    "encode_labels",
    "encode_metric_snapshot",
    "encode_prediction",
    "encode_predictions",
    "encode_rollout_event",
    "label_from_dict",
    "prediction_from_dict",
    "schema_dir",
    "schemas",
    "to_json_dict",
]

AVRO_MARKER = b"\xc3\x01"
_HEADER_LEN = 10  # marker (2) + fingerprint (8)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------
# Schemas


def schema_dir() -> Path:
    """Where the .avsc files are: inside the package for a wheel install, at the repo top otherwise.

    This file's folder is `Path(mle_stream.__file__).parent`; taking it from here keeps the codec
    importable however the package is laid out.
    """
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "schemas", package_dir.parent / "schemas"):
        if (candidate / "prediction.avsc").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Avro schemas found in {package_dir / 'schemas'} or {package_dir.parent / 'schemas'}: "
        "reinstall mle-stream (the wheel ships them as mle_stream/schemas)"
    )


@dataclass(frozen=True)
class WireSchema:
    """One Avro schema as the codec uses it.

    `canonical_form` is the Parsing Canonical Form of the fully expanded schema (named types
    defined in other files inlined at first use), which is what any other Avro implementation
    fingerprints. `parsed` is the fastavro schema with logical types removed, so timestamps stay
    ints; the binary encoding is the same with or without them.
    """

    name: str
    fullname: str
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian, exactly as in the single-object header
    parsed: Any

    @property
    def fingerprint_hex(self) -> str:
        return f"0x{int.from_bytes(self.fingerprint, 'little'):016x}"


# Records first: the batch schemas refer to io.mlestream.Prediction / io.mlestream.Label by name.
_SCHEMA_FILES = {
    "Prediction": "prediction.avsc",
    "Label": "label.avsc",
    "PredictionBatch": "prediction_batch.avsc",
    "LabelBatch": "label_batch.avsc",
    "Command": "command.avsc",
    "RolloutEvent": "rollout_event.avsc",
    "MetricSnapshot": "metric_snapshot.avsc",
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _inline_named(node: Any, namespace: str, defined: set[str], known: Mapping[str, Any]) -> Any:
    """A copy of `node` where each reference to a schema of another file is replaced by that schema
    at its first use, as the Parsing Canonical Form requires.

    fastavro's to_parsing_canonical_form leaves such a reference as a bare name, which gives a
    fingerprint no other Avro implementation computes.
    """
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _fullname(node, namespace)
        if full in defined or full not in known:
            return node
        return _inline_named(copy.deepcopy(known[full]), namespace, defined, known)
    if isinstance(node, list):
        return [_inline_named(branch, namespace, defined, known) for branch in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    kind = node.get("type")
    if kind in _NAMED:
        namespace = node.get("namespace", namespace) if "." not in node["name"] else node["name"].rpartition(".")[0]
        defined.add(_fullname(node["name"], namespace))
        if kind in ("record", "error"):
            out["fields"] = [
                {**f, "type": _inline_named(f["type"], namespace, defined, known)} for f in node["fields"]
            ]
    elif kind == "array":
        out["items"] = _inline_named(node["items"], namespace, defined, known)
    elif kind == "map":
        out["values"] = _inline_named(node["values"], namespace, defined, known)
    elif isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in _PRIMITIVES):
        out["type"] = _inline_named(kind, namespace, defined, known)
    return out


def _without_logical_types(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_logical_types(n) for n in node]
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    return node


def _load_schemas() -> dict[str, WireSchema]:
    folder = schema_dir()
    raw: dict[str, Any] = {}
    for name, filename in _SCHEMA_FILES.items():
        path = folder / filename
        try:
            raw[name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RuntimeError(f"cannot load Avro schema {path}: {exc}") from exc
    by_fullname = {_fullname(s["name"], s.get("namespace", "")): s for s in raw.values()}
    named: dict[str, Any] = {}  # shared, so the batch schemas resolve io.mlestream.Prediction/Label
    out: dict[str, WireSchema] = {}
    for name, schema in raw.items():
        fullname = _fullname(schema["name"], schema.get("namespace", ""))
        expanded = _inline_named(schema, "", set(), by_fullname)
        canonical = to_parsing_canonical_form(expanded)
        # fastavro spells the fingerprint as the hex of its little-endian bytes: the header bytes.
        fp = bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))
        parsed = fastavro.parse_schema(_without_logical_types(schema), named_schemas=named)
        out[name] = WireSchema(name, fullname, canonical, fp, parsed)
    return out


_SCHEMAS = _load_schemas()
_BY_FINGERPRINT = {s.fingerprint: s for s in _SCHEMAS.values()}


def schemas() -> Mapping[str, WireSchema]:
    """Every schema the codec knows, by short name (Prediction, PredictionBatch, Label, ...)."""
    return dict(_SCHEMAS)


# ------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class RecordError:
    """Why one record (or, with index None, the whole message) could not be decoded.

    `reason` is a complete sentence for logs and dead-letter headers; `field` is the dotted field
    name for programs ('' when no single field is to blame).
    """

    index: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class DecodeResult(Generic[T]):
    """The valid records of one message, in message order, and one error per invalid record."""

    records: list[T]
    errors: list[RecordError]

    @property
    def ok(self) -> bool:
        return not self.errors


def _record_error(index: int, exc: InvalidEvent) -> RecordError:
    where = f"record {index}: field '{exc.field}'" if exc.field else f"record {index}"
    return RecordError(index, exc.field, f"{where}: {exc.reason}")


def _message_error(reason: str) -> DecodeResult[Any]:
    return DecodeResult([], [RecordError(None, "", reason)])


# ------------------------------------------------------------------------------------------------
# Mappings (JSON objects, client input) -> dataclasses


def _check_long(value: object, name: str) -> None:
    if type(value) is int and not _LONG_MIN <= value <= _LONG_MAX:
        raise InvalidEvent(f"does not fit in a 64-bit signed integer (Avro long), got {value!r}", name)


def _as_double(value: object) -> object:
    """JSON and Python ints in a double field become floats, so JSON and Avro decode alike."""
    return float(value) if type(value) is int else value


def _double_map(value: object, name: str) -> dict[str, object] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"must be an object (map), got {value!r}", name)
    out: dict[str, object] = {}
    for key, v in value.items():
        if not isinstance(key, str):
            raise InvalidEvent(f"keys must be strings, got {key!r}", name)
        out[key] = float(v) if type(v) is int else v
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


def _optional_str(value: object, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidEvent(f"must be a string or null, got {value!r}", name)
    return value


def _label_value(value: object, name: str) -> object:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise InvalidEvent(f"must be a boolean, number or string, got {value!r}", name)
    _check_long(value, name)
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

    Unknown keys are ignored unless `strict` (the client sets it: there a stray key is a typo).
    """
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"a prediction must be an object (mapping), got {type(data).__name__}")
    _check_keys(data, _PREDICTION_FIELDS, _PREDICTION_REQUIRED, strict)
    get = data.get
    timestamp = data["timestamp"]
    _check_long(timestamp, "timestamp")
    return Prediction(
        prediction_id=data["prediction_id"],
        model=data["model"],
        version=data["version"],
        timestamp=timestamp,
        score=_as_double(get("score")),  # type: ignore[arg-type]  # Prediction validates the type
        scores=_double_map(get("scores"), "scores"),  # type: ignore[arg-type]
        value=_as_double(get("value")),  # type: ignore[arg-type]
        predicted_label=_label_value(get("predicted_label"), "predicted_label"),  # type: ignore[arg-type]
        latency_ms=_as_double(get("latency_ms")),  # type: ignore[arg-type]
        features=_double_map(get("features"), "features"),  # type: ignore[arg-type]
        segment=_string_map(get("segment"), "segment"),
        error=_optional_str(get("error"), "error"),
    )


def label_from_dict(data: Mapping[str, Any], *, strict: bool = False) -> Label:
    """A Label from a JSON object or a caller's mapping; the label keeps its JSON type."""
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"a label must be an object (mapping), got {type(data).__name__}")
    _check_keys(data, _LABEL_FIELDS, ("prediction_id", "model", "timestamp", "label"), strict)
    timestamp = data["timestamp"]
    _check_long(timestamp, "timestamp")
    label = data["label"]
    _check_long(label, "label")
    return Label(data["prediction_id"], data["model"], timestamp, label)


def check_encodable(event: Prediction | Label) -> None:
    """Raise InvalidEvent for what the dataclass accepts but Avro cannot carry (ints beyond 64 bits).

    The client calls it in the caller's thread, so such a record fails there instead of silently
    costing its whole batch in the background thread.
    """
    _check_long(event.timestamp, "timestamp")
    if isinstance(event, Label):
        _check_long(event.label, "label")
    else:
        _check_long(event.predicted_label, "predicted_label")


# ------------------------------------------------------------------------------------------------
# Dataclasses -> Avro datums


def _label_branch(value: object) -> object:
    """Tuple notation names the union branch; checked in this order because bool is an int."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int):
        return ("long", value)
    if isinstance(value, float):
        return ("double", value)
    return ("string", value)


def _feature_values(features: Mapping[str, object] | None) -> dict[str, object] | None:
    if features is None:
        return None
    return {k: v if isinstance(v, str) else float(v) for k, v in features.items()}  # type: ignore[arg-type]


def _prediction_datum(p: Prediction) -> dict[str, object]:
    return {
        "prediction_id": p.prediction_id,
        "model": p.model,
        "version": p.version,
        "timestamp": p.timestamp,
        "score": p.score,
        "scores": p.scores,
        "value": p.value,
        "predicted_label": _label_branch(p.predicted_label),
        "latency_ms": p.latency_ms,
        "features": _feature_values(p.features),
        "segment": p.segment,
        "error": p.error,
    }


def _label_datum(label: Label) -> dict[str, object]:
    return {
        "prediction_id": label.prediction_id,
        "model": label.model,
        "timestamp": label.timestamp,
        "label": _label_branch(label.label),
    }


def _write(schema: WireSchema, datum: Mapping[str, object]) -> bytes:
    out = io.BytesIO()
    out.write(AVRO_MARKER)
    out.write(schema.fingerprint)
    fastavro.schemaless_writer(out, schema.parsed, datum)
    return out.getvalue()


def encode_prediction(p: Prediction) -> bytes:
    """One Prediction as an Avro single-object message."""
    return _write(_SCHEMAS["Prediction"], _prediction_datum(p))


def encode_predictions(records: Sequence[Prediction]) -> bytes:
    """Many predictions as one PredictionBatch message (what the client publishes)."""
    return _write(_SCHEMAS["PredictionBatch"], {"records": [_prediction_datum(p) for p in records]})


def encode_label(label: Label) -> bytes:
    """One Label as an Avro single-object message."""
    return _write(_SCHEMAS["Label"], _label_datum(label))


def encode_labels(records: Sequence[Label]) -> bytes:
    """Many labels as one LabelBatch message."""
    return _write(_SCHEMAS["LabelBatch"], {"records": [_label_datum(x) for x in records]})


# ------------------------------------------------------------------------------------------------
# Reading


def _read_body(stream: io.BytesIO, schema: WireSchema) -> Any:
    """One Avro body with fastavro, timestamps as ints (the parsed schema has no logical types)."""
    return fastavro.schemaless_reader(stream, schema.parsed, None)


def _stream_long(stream: io.BytesIO) -> int:
    """One zig-zag varint, as Avro encodes array block counts."""
    shift = result = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise EOFError("message ends inside a varint")
        b = byte[0]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1)
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


# ------------------------------------------------------------------------------------------------
# Fast path: a reader written for the Prediction schema
#
# fastavro needs ~14 us for a Prediction with ten numeric features on the 2-core machines here
# (its per-datum dispatch costs ~0.5 us per map entry); with the dataclass checks on top that caps
# the stream near 50k records/s. This reader knows the one schema it reads and, in the usual batch
# whose records share their feature names, checks the whole features map with one regex match and
# reads its values with one struct call. It is used only while prediction.avsc and the Prediction
# dataclass keep the shape it was written for (checked below, at import), and it has no error
# reporting of its own: any exception sends the message to fastavro, which reads or reports it. At
# worst it is slower, never lossier; tests cross-check it against fastavro on generated records.

_PREDICTION_CANONICAL_FORM = (
    '{"name":"io.mlestream.Prediction","type":"record","fields":[{"name":"prediction_id","type":"string"},'
    '{"name":"model","type":"string"},{"name":"version","type":"string"},{"name":"timestamp","type":"long"},'
    '{"name":"score","type":["null","double"]},{"name":"scores","type":["null",{"type":"map","values":"double"}]},'
    '{"name":"value","type":["null","double"]},'
    '{"name":"predicted_label","type":["null","boolean","long","double","string"]},'
    '{"name":"latency_ms","type":["null","double"]},'
    '{"name":"features","type":["null",{"type":"map","values":["double","string"]}]},'
    '{"name":"segment","type":["null",{"type":"map","values":"string"}]},{"name":"error","type":["null","string"]}]}'
)
_PREDICTION_ORDER = ("prediction_id", "model", "version", "timestamp", "score", "scores", "value",
                     "predicted_label", "latency_ms", "features", "segment", "error")
_FAST_PREDICTIONS = (
    _SCHEMAS["Prediction"].canonical_form == _PREDICTION_CANONICAL_FORM
    and tuple(f.name for f in dataclasses.fields(Prediction)) == _PREDICTION_ORDER
)

_unpack_double = struct.Struct("<d").unpack_from


def _long_at(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _str_at(buf: bytes, pos: int) -> tuple[str, int]:
    b = buf[pos]
    if not b & 0x81:  # a one-byte, non-negative length: the usual case
        end = pos + 1 + (b >> 1)
    else:
        n, pos = _long_at(buf, pos)
        if n < 0:
            raise ValueError(f"negative string length {n}")
        end = pos + n
        pos -= 1
    return buf[pos + 1 : end].decode(), end  # a short slice at the end is caught by the length check


def _double_at(buf: bytes, pos: int) -> tuple[float, int]:
    return _unpack_double(buf, pos)[0], pos + 8


def _feature_at(buf: bytes, pos: int) -> tuple[float | str, int]:
    branch = buf[pos]
    if branch == 0:
        return _unpack_double(buf, pos + 1)[0], pos + 9
    if branch == 2:
        return _str_at(buf, pos + 1)
    raise ValueError(f"bad union branch {branch}")


def _map_at(buf: bytes, pos: int, value_at: Callable[[bytes, int], tuple[Any, int]]) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while True:
        count, pos = _long_at(buf, pos)
        if count == 0:
            return out, pos
        if count < 0:  # a block that also carries its size in bytes
            count = -count
            _, pos = _long_at(buf, pos)
        for _ in range(count):
            key, pos = _str_at(buf, pos)
            out[key], pos = value_at(buf, pos)


def _string_map_at(buf: bytes, pos: int) -> tuple[dict[str, str], int]:
    """_map_at(buf, pos, _str_at) with the short-string case inlined: segments are small maps of
    short strings, and the general version spends most of its time in calls."""
    out: dict[str, str] = {}
    while True:
        b = buf[pos]
        if b & 0x81:
            count, pos = _long_at(buf, pos)
            if count < 0:
                count = -count
                _, pos = _long_at(buf, pos)
        else:
            count = b >> 1
            pos += 1
        if count == 0:
            return out, pos
        for _ in range(count):
            b = buf[pos]
            if b & 0x81:
                key, pos = _str_at(buf, pos)
            else:
                end = pos + 1 + (b >> 1)
                key = buf[pos + 1 : end].decode()
                pos = end
            b = buf[pos]
            if b & 0x81:
                out[key], pos = _str_at(buf, pos)
            else:
                end = pos + 1 + (b >> 1)
                out[key] = buf[pos + 1 : end].decode()
                pos = end


class _FeatureLayout:
    """The bytes of a features map of given names, in one block, every value a double.

    Only the eight bytes of each value differ between two records with the same names, so a
    regex over the fixed bytes recognises the layout and a struct reads all the values at once.
    """

    __slots__ = ("match", "unpack", "names", "size")

    def __init__(self, names: Sequence[str]) -> None:
        pattern: list[bytes] = []
        fmt = ["<"]
        fixed = bytes([2 * len(names)])  # zig-zag block count; the caller keeps it under 64
        for name in names:
            raw = name.encode()
            fixed += bytes([2 * len(raw)]) + raw + b"\x00"  # key length, key, union branch "double"
            pattern += [re.escape(fixed), b".{8}"]
            fmt.append(f"{len(fixed)}xd")
            fixed = b""
        pattern.append(b"\x00")  # end of the map's blocks
        fmt.append("x")
        self.match = re.compile(b"".join(pattern), re.DOTALL).match
        packer = struct.Struct("".join(fmt))
        self.unpack = packer.unpack_from
        self.size = packer.size
        self.names = tuple(names)


class _FeatureLayouts:
    """The layouts seen so far, and the one that matched last (a batch usually repeats one)."""

    _MAX = 256  # feature-name sets to remember; beyond that, new sets take the general path

    def __init__(self) -> None:
        self.last: _FeatureLayout | None = None
        self._known: dict[tuple[str, ...], _FeatureLayout] = {}

    def read(self, buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        layout = self.last
        if layout is not None and layout.match(buf, pos):
            return dict(zip(layout.names, layout.unpack(buf, pos))), pos + layout.size
        features, end = _map_at(buf, pos, _feature_at)
        self._learn(features, buf, pos)
        return features, end

    def _learn(self, features: dict[str, Any], buf: bytes, pos: int) -> None:
        if not 0 < len(features) < 64 or any(type(v) is not float for v in features.values()):
            return
        names = tuple(features)
        layout = self._known.get(names)
        if layout is None:
            if len(self._known) >= self._MAX or any(len(n.encode()) >= 64 for n in names):
                return
            layout = _FeatureLayout(names)
        if layout.match(buf, pos):  # the regex, not this code, decides whether the layout applies
            self._known[names] = layout
            self.last = layout


_feature_layouts = _FeatureLayouts()


def _read_prediction_batch(payload: bytes) -> list[tuple[Any, ...]]:
    """The records of a PredictionBatch message as Prediction argument tuples, in schema order.

    Written out long-hand on purpose: the common cases (short strings, one-byte union indexes)
    are inlined because a function call costs as much as the read itself.
    """
    buf = payload
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    double, str_at, long_at, map_at = _unpack_double, _str_at, _long_at, _map_at
    features_at = _feature_layouts.read
    pos = _HEADER_LEN
    while True:
        count, pos = long_at(buf, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = long_at(buf, pos)
        for _ in range(count):
            # prediction_id, model, version: strings, nearly always shorter than 64 bytes
            b = buf[pos]
            if b & 0x81:
                prediction_id, pos = str_at(buf, pos)
            else:
                end = pos + 1 + (b >> 1)
                prediction_id = buf[pos + 1 : end].decode()
                pos = end
            b = buf[pos]
            if b & 0x81:
                model, pos = str_at(buf, pos)
            else:
                end = pos + 1 + (b >> 1)
                model = buf[pos + 1 : end].decode()
                pos = end
            b = buf[pos]
            if b & 0x81:
                version, pos = str_at(buf, pos)
            else:
                end = pos + 1 + (b >> 1)
                version = buf[pos + 1 : end].decode()
                pos = end
            timestamp, pos = long_at(buf, pos)
            # The unions: the branch index is one zig-zag byte, branch i is written as 2 * i.
            b = buf[pos]
            if b == 2:
                score = double(buf, pos + 1)[0]
                pos += 9
            elif b == 0:
                score = None
                pos += 1
            else:
                _bad(b)
            b = buf[pos]
            pos += 1
            if b == 0:
                scores = None
            elif b == 2:
                scores, pos = map_at(buf, pos, _double_at)
            else:
                _bad(b)
            b = buf[pos]
            if b == 0:
                value = None
                pos += 1
            elif b == 2:
                value = double(buf, pos + 1)[0]
                pos += 9
            else:
                _bad(b)
            b = buf[pos]
            pos += 1
            if b == 0:
                predicted_label: Any = None
            elif b == 2:
                flag = buf[pos]
                if flag > 1:
                    _bad(flag)
                predicted_label = flag == 1
                pos += 1
            elif b == 4:
                predicted_label, pos = long_at(buf, pos)
            elif b == 6:
                predicted_label = double(buf, pos)[0]
                pos += 8
            elif b == 8:
                predicted_label, pos = str_at(buf, pos)
            else:
                _bad(b)
            b = buf[pos]
            if b == 2:
                latency_ms = double(buf, pos + 1)[0]
                pos += 9
            elif b == 0:
                latency_ms = None
                pos += 1
            else:
                _bad(b)
            b = buf[pos]
            pos += 1
            if b == 2:
                features, pos = features_at(buf, pos)
            elif b == 0:
                features = None
            else:
                _bad(b)
            b = buf[pos]
            pos += 1
            if b == 0:
                segment = None
            elif b == 2:
                segment, pos = _string_map_at(buf, pos)
            else:
                _bad(b)
            b = buf[pos]
            pos += 1
            if b == 0:
                error = None
            elif b == 2:
                error, pos = str_at(buf, pos)
            else:
                _bad(b)
            append((prediction_id, model, version, timestamp, score, scores, value, predicted_label,
                    latency_ms, features, segment, error))
    if pos != len(buf):
        raise ValueError(f"batch ends at byte {pos} of {len(buf)}")
    return rows


def _bad(byte: int) -> NoReturn:
    raise ValueError(f"unexpected byte {byte} for a union branch or boolean")


@dataclass(frozen=True)
class _Kind(Generic[T]):
    """What decode_predictions / decode_labels differ in."""

    noun: str
    single: WireSchema
    batch: WireSchema
    from_avro: Callable[[dict[str, Any]], T]
    from_json: Callable[[Mapping[str, Any]], T]
    id_field: str
    # A faster reader of the batch body into constructor argument tuples, None to use fastavro.
    fast_batch: Callable[[bytes], list[tuple[Any, ...]]] | None = None
    from_row: Callable[..., T] | None = None


def _wrong_schema(fp: bytes, expected: Sequence[WireSchema], noun: str) -> str:
    hex_fp = f"0x{int.from_bytes(fp, 'little'):016x}"
    known = ", ".join(s.name for s in expected)
    found = _BY_FINGERPRINT.get(fp)
    if found is not None:
        return f"Avro schema fingerprint {hex_fp} is the {found.name} schema, not a {noun} schema (known: {known})"
    return (
        f"Avro schema fingerprint {hex_fp} is not a {noun} schema (known: {known}); "
        "was it written with another version of schemas/*.avsc?"
    )


def _trailing(stream: io.BytesIO, size: int, what: str) -> str | None:
    extra = size - stream.tell()
    return f"{extra} unexpected bytes after the Avro {what} body (corrupt or written with another schema)" if extra else None


def _decode_avro(payload: bytes, kind: _Kind[T]) -> DecodeResult[T]:
    if len(payload) < _HEADER_LEN:
        return _message_error(
            f"truncated Avro single-object message: {len(payload)} bytes, the header alone is {_HEADER_LEN}"
        )
    fp = payload[2:_HEADER_LEN]
    stream = io.BytesIO(payload)
    stream.seek(_HEADER_LEN)
    if fp == kind.batch.fingerprint:
        if kind.fast_batch is not None and kind.from_row is not None:
            try:
                rows = kind.fast_batch(payload)
            except Exception:  # noqa: BLE001 - corrupt or unusual input: fastavro reads and reports it
                rows = None
            if rows is not None:
                return _build_rows(rows, kind.from_row)
        try:
            raw = _read_body(stream, kind.batch)["records"]
        # fastavro reports corrupt input with EOFError, ValueError, IndexError, UnicodeDecodeError...
        except Exception:  # noqa: BLE001 - any of them: salvage the readable prefix below
            return _salvage_batch(payload, kind)
        problem = _trailing(stream, len(payload), kind.batch.name)
        if problem:
            return _message_error(problem)
    elif fp == kind.single.fingerprint:
        try:
            raw = [_read_body(stream, kind.single)]
        except Exception as exc:  # noqa: BLE001 - see above
            return _message_error(f"unreadable Avro {kind.single.name}: {type(exc).__name__}: {exc}")
        problem = _trailing(stream, len(payload), kind.single.name)
        if problem:
            return _message_error(problem)
    else:
        return _message_error(_wrong_schema(fp, (kind.single, kind.batch), kind.noun))
    return _build(raw, kind.from_avro)


def _salvage_batch(payload: bytes, kind: _Kind[T]) -> DecodeResult[T]:
    """Read a corrupt batch record by record, keeping the records before the damage.

    Avro has no per-record framing, so nothing after the first unreadable record can be trusted.
    """
    stream = io.BytesIO(payload)
    stream.seek(_HEADER_LEN)
    raw: list[dict[str, Any]] = []
    failure: str | None = None
    try:
        while True:
            count = _stream_long(stream)
            if count == 0:
                break
            if count < 0:  # a block with its byte size, which we do not need
                count = -count
                _stream_long(stream)
            for _ in range(count):
                raw.append(_read_body(stream, kind.single))
    except Exception as exc:  # noqa: BLE001 - corrupt input, reported below
        failure = f"{type(exc).__name__}: {exc}"
    result = _build(raw, kind.from_avro)
    where = len(raw)
    reason = (
        f"record {where}: unreadable Avro {kind.single.name} ({failure}); "
        f"the rest of the {kind.batch.name} is lost, {where} records before it were read"
        if failure
        else f"Avro {kind.batch.name} could not be read as a whole but every record could; corrupt trailer"
    )
    result.errors.append(RecordError(where if failure else None, "", reason))
    return result


def _build(raw: Iterable[Any], make: Callable[[Any], T]) -> DecodeResult[T]:
    """The dataclasses of a batch; a record that breaks the contract is reported, not fatal."""
    records: list[T] = []
    errors: list[RecordError] = []
    append = records.append
    for index, datum in enumerate(raw):
        try:
            append(make(datum))
        except InvalidEvent as exc:
            errors.append(_record_error(index, exc))
    return DecodeResult(records, errors)


def _build_rows(rows: Iterable[tuple[Any, ...]], cls: Callable[..., T]) -> DecodeResult[T]:
    """_build for the fast reader's argument tuples (a wrapper call per record would cost 5%)."""
    records: list[T] = []
    errors: list[RecordError] = []
    append = records.append
    for index, row in enumerate(rows):
        try:
            append(cls(*row))
        except InvalidEvent as exc:
            errors.append(_record_error(index, exc))
    return DecodeResult(records, errors)


def _load_json(payload: bytes) -> Any:
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


def _decode_json(payload: bytes, kind: _Kind[T]) -> DecodeResult[T]:
    try:
        doc = _load_json(payload)
    except ValueError as exc:
        return _message_error(str(exc))
    if isinstance(doc, dict) and kind.id_field not in doc and "records" in doc:
        doc = doc["records"]
        if not isinstance(doc, list):
            return _message_error(f"JSON field 'records' must be an array of {kind.noun} objects")
    elif isinstance(doc, dict):
        doc = [doc]
    elif not isinstance(doc, list):
        return _message_error(
            f"JSON message must be a {kind.noun} object, an array of them or {{\"records\": [...]}}, "
            f"got {type(doc).__name__}"
        )
    return _build(doc, kind.from_json)


def _as_bytes(payload: bytes | bytearray | memoryview | None) -> bytes:
    # A Kafka tombstone has no value (None); a memoryview cannot be .decode()d or json.loads()ed.
    if payload is None:
        return b""
    return payload if isinstance(payload, bytes) else bytes(payload)


def _decode(payload: bytes, kind: _Kind[T]) -> DecodeResult[T]:
    payload = _as_bytes(payload)
    if payload[:2] == AVRO_MARKER:
        return _decode_avro(payload, kind)
    return _decode_json(payload, kind)


def _prediction_from_avro(datum: dict[str, Any]) -> Prediction:
    return Prediction(**datum)


def _label_from_avro(datum: dict[str, Any]) -> Label:
    return Label(**datum)


_PREDICTIONS: _Kind[Prediction] = _Kind(
    "prediction", _SCHEMAS["Prediction"], _SCHEMAS["PredictionBatch"],
    _prediction_from_avro, prediction_from_dict, "prediction_id",
    fast_batch=_read_prediction_batch if _FAST_PREDICTIONS else None, from_row=Prediction,
)
_LABELS: _Kind[Label] = _Kind(
    "label", _SCHEMAS["Label"], _SCHEMAS["LabelBatch"], _label_from_avro, label_from_dict, "prediction_id",
)


def decode_predictions(payload: bytes) -> DecodeResult[Prediction]:
    """The predictions in one message of the predictions topic.

    Accepts Avro single-object (Prediction or PredictionBatch, told apart by fingerprint) and JSON
    (an object, an array of objects, or {"records": [...]}). JSON fields that the schema does not
    know are ignored, for forward compatibility; missing required fields and wrong types are errors.
    Never raises for bad input: a record that breaks the contract becomes a RecordError with its
    index, and an unreadable message a single RecordError with index None.
    """
    return _decode(payload, _PREDICTIONS)


def decode_labels(payload: bytes) -> DecodeResult[Label]:
    """The labels in one message of the labels topic; same forms and rules as decode_predictions."""
    return _decode(payload, _LABELS)


# ------------------------------------------------------------------------------------------------
# Single-event types: commands, rollout events, metric snapshots


def _req_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(f"must be a string, got {value!r}", name)
    return value


def _req_long(value: object, name: str) -> int:
    if type(value) is not int:
        raise InvalidEvent(f"must be an integer, got {value!r}", name)
    _check_long(value, name)
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
}
_ROLLOUT_SPEC: _Spec = {
    "event_id": _req_str, "command_id": _req_str, "model": _req_str, "action": _req_str,
    "status": _enum(RolloutStatus), "route_weights": _int_map, "champion": _optional_str,
    "challenger": _optional_str, "reason": _req_str, "details": _req_str, "at": _req_long,
}
_SNAPSHOT_SPEC: _Spec = {
    "model": _req_str, "version": _req_str, "role": _req_str, "segment": _optional_str,
    "window_start": _req_long, "window_end": _req_long, "predictions": _req_long, "labeled": _req_long,
    "metrics": _nullable_double_map, "status": _req_str, "verdict": _optional_str, "emitted_at": _req_long,
}
# Fields a JSON producer may leave out: nullable ones, and those the dataclass defaults.
_OPTIONAL_DEFAULTS: dict[type, dict[str, object]] = {
    Command: {"signature": ""},
    RolloutEvent: {"champion": None, "challenger": None},
    MetricSnapshot: {"segment": None, "status": "CLOSED", "verdict": None, "emitted_at": 0},
}

E = TypeVar("E", Command, RolloutEvent, MetricSnapshot)


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
    return _write(schema, datum)


def _decode_single(payload: bytes, schema: WireSchema, cls: type[E], spec: _Spec) -> E:
    payload = _as_bytes(payload)
    if payload[:2] == AVRO_MARKER:
        if len(payload) < _HEADER_LEN:
            raise InvalidEvent(f"truncated Avro single-object message: {len(payload)} bytes")
        fp = payload[2:_HEADER_LEN]
        if fp != schema.fingerprint:
            raise InvalidEvent(_wrong_schema(fp, (schema,), cls.__name__))
        stream = io.BytesIO(payload)
        stream.seek(_HEADER_LEN)
        try:
            datum = _read_body(stream, schema)
        except Exception as exc:  # noqa: BLE001 - fastavro's many corrupt-input errors, reported
            raise InvalidEvent(f"unreadable Avro {schema.name}: {type(exc).__name__}: {exc}") from exc
        problem = _trailing(stream, len(payload), schema.name)
        if problem:
            raise InvalidEvent(problem)
    else:
        try:
            datum = _load_json(payload)
        except ValueError as exc:
            raise InvalidEvent(str(exc)) from None
    return _from_spec(cls, spec, datum)


def encode_command(cmd: Command) -> bytes:
    """A Command as an Avro single-object message; InvalidEvent names a field of the wrong type."""
    return _encode_single(_SCHEMAS["Command"], Command, _COMMAND_SPEC, cmd)


def decode_command(payload: bytes) -> Command:
    """A Command from Avro single-object or JSON; raises InvalidEvent naming what is malformed."""
    return _decode_single(payload, _SCHEMAS["Command"], Command, _COMMAND_SPEC)


def encode_rollout_event(event: RolloutEvent) -> bytes:
    """A RolloutEvent as an Avro single-object message."""
    return _encode_single(_SCHEMAS["RolloutEvent"], RolloutEvent, _ROLLOUT_SPEC, event)


def decode_rollout_event(payload: bytes) -> RolloutEvent:
    """A RolloutEvent from Avro single-object or JSON; raises InvalidEvent."""
    return _decode_single(payload, _SCHEMAS["RolloutEvent"], RolloutEvent, _ROLLOUT_SPEC)


def encode_metric_snapshot(snapshot: MetricSnapshot) -> bytes:
    """A MetricSnapshot as an Avro single-object message."""
    return _encode_single(_SCHEMAS["MetricSnapshot"], MetricSnapshot, _SNAPSHOT_SPEC, snapshot)


def decode_metric_snapshot(payload: bytes) -> MetricSnapshot:
    """A MetricSnapshot from Avro single-object or JSON; raises InvalidEvent."""
    return _decode_single(payload, _SCHEMAS["MetricSnapshot"], MetricSnapshot, _SNAPSHOT_SPEC)


# ------------------------------------------------------------------------------------------------
# JSON view


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
