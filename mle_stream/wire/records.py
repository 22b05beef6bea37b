"""The wire format of every mle-stream topic: the one module that turns events into bytes and back.

Producers may write either of two encodings; consumers accept both, told apart by the first bytes:

- **Avro single-object encoding** (the Avro spec's registry-free framing): the marker bytes
  ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
  Canonical Form, then the Avro binary body. Any Avro implementation (Java's
  ``BinaryMessageDecoder``, ``avro`` for Python, fastavro) reads it with the ``schemas/*.avsc``
  files. This is what mle-stream itself writes. Readers also accept the fingerprints that
  fastavro and goavro compute where they depart from the spec (_wire_schema); docs/producing.md
  is the producers' side of this contract.
- **JSON** (UTF-8), for producers that do not want an Avro dependency: one object per message,
  an array of objects, or ``{"records": [...]}``. Field names are the Avro field names. Unknown
  fields are ignored so that an older consumer keeps reading what a newer producer writes.

- **Confluent Schema Registry framing** (confluent.py): the byte 0x00, the 4-byte schema id, then
  the Avro binary body, read with the writer schema the registry has under that id (a
  `WriterSchemas` lookup the caller passes in) resolved against ours. mle-stream writes it only
  when asked to (output_framing.py). See docs/schema-registry.md.

Prediction and label topics carry either one record or a batch (PredictionBatch / LabelBatch) per
message; the decoders return every valid record of a batch and one `RecordError` per invalid one,
so a single bad record never costs the good ones. The worker reads them as columns
(`decode_prediction_columns` / `decode_label_columns`): a batch goes straight from its bytes into
numpy arrays and lists (avro_batch_reader.py), with the same records and errors as the dataclass
decoders. Commands, rollout events and metric snapshots travel one per message and their decoders
raise `InvalidEvent`.

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
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

import fastavro
import numpy as np
import numpy.typing as npt
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from mle_stream import confluent
from mle_stream.avro_batch_reader import (
    LABEL_BATCH_CANONICAL_FORM,
    LABEL_FIELDS,
    PREDICTION_BATCH_CANONICAL_FORM,
    PREDICTION_FIELDS,
    PredictionRead,
    read_label_batch,
    read_prediction_batch,
)
from mle_stream.core.columns import IntArray, LabelColumns, PredictionColumns
from mle_stream.core.events import (
    Command,
    CommandKind,
    DriftTable,
    Label,
    MetricSnapshot,
    Prediction,
    RolloutEvent,
    RolloutStatus,
)
from mle_stream.core.record_checks import output_reject, unjoinable_ids, unusable_predictions
from mle_stream.errors import InvalidEvent
from mle_stream.schema_registry import RegistryUnavailable, SchemaRegistryError, WriterSchemas

__all__ = [
    "AVRO_MARKER",
    "SINGLE_OBJECT_HEADER_LEN",
    "ColumnsResult",
    "DecodeResult",
    "RecordError",
    "WireSchema",
    "check_encodable",
    "check_record",
    "decode_command",
    "decode_drift_table",
    "decode_label_columns",
    "decode_labels",
    "decode_metric_snapshot",
    "decode_prediction_columns",
    "decode_predictions",
    "decode_rollout_event",
    "encode_command",
    "encode_drift_table",
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
SINGLE_OBJECT_HEADER_LEN = 10  # marker (2) + fingerprint (8)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

T = TypeVar("T")
C = TypeVar("C", PredictionColumns, LabelColumns)
R = TypeVar("R")
BoolArray = npt.NDArray[np.bool_]

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
    defined in other files inlined at first use), as the Avro spec defines it and Java's
    ``SchemaNormalization`` computes it: its fingerprint is what the codec writes. `fingerprints`
    holds every fingerprint a reader accepts for this schema (_wire_schema). `parsed` is the
    fastavro schema with logical types removed, so timestamps stay ints; the binary encoding is
    the same with or without them. `file` is where it is, relative to the schemas folder.
    """

    name: str
    fullname: str
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian, exactly as in the single-object header
    parsed: Any
    file: str
    fingerprints: frozenset[bytes]  # `fingerprint` and the others readers accept

    @property
    def fingerprint_hex(self) -> str:
        return _hex(self.fingerprint)


def _hex(fp: bytes) -> str:
    """A fingerprint as Java's parsingFingerprint64 prints it: the 64-bit value the header's 8
    little-endian bytes spell."""
    return f"0x{int.from_bytes(fp, 'little'):016x}"


# Records first: the batch schemas refer to io.mlestream.Prediction / io.mlestream.Label by name.
_SCHEMA_FILES = {
    "Prediction": "prediction.avsc",
    "Label": "label.avsc",
    "PredictionBatch": "prediction_batch.avsc",
    "LabelBatch": "label_batch.avsc",
    "Command": "command.avsc",
    "RolloutEvent": "rollout_event.avsc",
    "MetricSnapshot": "metric_snapshot.avsc",
    "DriftTable": "drift_table.avsc",
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _inline_named(node: Any, namespace: str, defined: set[str], known: Mapping[str, Any]) -> Any:
    """A copy of `node` where each reference to a schema of another file is replaced by that schema
    at its first use, as the Parsing Canonical Form requires.

    fastavro's to_parsing_canonical_form leaves such a reference as a bare name, which gives
    another fingerprint than Java's (accepted too, see _wire_schema).
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



def _read_schema(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"cannot load Avro schema {path}: {exc}") from exc


def _fingerprint(canonical_form: str) -> bytes:
    # fastavro spells the fingerprint as the hex of its little-endian bytes: the header bytes.
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


def _canonical_form(node: Any, *, logical_as_object: bool = False) -> str:
    """The Parsing Canonical Form of `node`, a schema that defines every named type it uses (an
    expanded one).

    With `logical_as_object`, a primitive with a logical type is written ``{"type":"long"}``
    instead of the spec's ``"long"``: the form goavro and the ``avro`` package for Python produce,
    and so the fingerprint they write.
    """
    def form(n: Any, ns: str) -> str:
        if isinstance(n, str):
            return json.dumps(n if n in _PRIMITIVES else _fullname(n, ns))
        if isinstance(n, list):
            return "[" + ",".join(form(branch, ns) for branch in n) + "]"
        kind = n["type"]
        if kind in _PRIMITIVES:
            return f'{{"type":"{kind}"}}' if logical_as_object and "logicalType" in n else f'"{kind}"'
        if kind == "array":
            return '{"type":"array","items":' + form(n["items"], ns) + "}"
        if kind == "map":
            return '{"type":"map","values":' + form(n["values"], ns) + "}"
        if kind not in _NAMED:  # {"type": {...}}, {"type": [...]} or {"type": "io.mlestream.Name"}
            return form(kind, ns)
        name = _fullname(n["name"], n.get("namespace", ns))
        ns = name.rpartition(".")[0]
        head = f'{{"name":{json.dumps(name)},"type":"{kind}"'
        if kind == "enum":
            return head + ',"symbols":' + json.dumps(n["symbols"], separators=(",", ":")) + "}"
        if kind == "fixed":
            return head + f',"size":{int(n["size"])}}}'
        fields = ",".join(f'{{"name":{json.dumps(f["name"])},"type":{form(f["type"], ns)}}}' for f in n["fields"])
        return head + ',"fields":[' + fields + "]}"

    return form(node, "")


def _wire_schema(name: str, file: str, schema: Any, expanded: Any, named: dict[str, Any]) -> WireSchema:
    """`schema` as the codec uses it; `expanded` is it with other files' named types inlined.

    Besides the spec's fingerprint (Java's, written by the codec), a reader accepts those that
    common implementations compute for the same schema, each of them different only where an
    implementation departs from the spec; the binary body is the same:
    - fastavro's, for a schema parsed with ``parse_schema(..., named_schemas=...)``: a named type
      of another file stays a bare name (``"items":"io.mlestream.Prediction"``), so it differs
      for the batches;
    - goavro's and the ``avro`` Python package's: a timestamp is ``{"type":"long"}``.
    """
    canonical = _canonical_form(expanded)
    fp = _fingerprint(canonical)
    parsed = fastavro.parse_schema(confluent.without_logical_types(schema), named_schemas=named)
    fastavro_fp = _fingerprint(to_parsing_canonical_form(parsed))
    goavro_fp = _fingerprint(_canonical_form(expanded, logical_as_object=True))
    fullname = _fullname(schema["name"], schema.get("namespace", ""))
    return WireSchema(name, fullname, canonical, fp, parsed, file, frozenset({fp, fastavro_fp, goavro_fp}))


def _load_schemas() -> dict[str, WireSchema]:
    folder = schema_dir()
    raw = {name: _read_schema(folder / filename) for name, filename in _SCHEMA_FILES.items()}
    by_fullname = {_fullname(s["name"], s.get("namespace", "")): s for s in raw.values()}
    named: dict[str, Any] = {}  # shared, so the batch schemas resolve io.mlestream.Prediction/Label
    return {name: _wire_schema(name, _SCHEMA_FILES[name], schema,
                               _inline_named(schema, "", set(), by_fullname), named)
            for name, schema in raw.items()}


_SCHEMAS = _load_schemas()

# Earlier versions of a schema (schemas/history/), still read: a message names its writer schema
# by fingerprint, and one written before a field was added is resolved against today's schema,
# the added field taking its default. Only schemas that gained fields with defaults are here.
_HISTORY_FILES = {"Command": ("history/command-1.avsc",)}


def _load_history() -> dict[str, list[WireSchema]]:
    out: dict[str, list[WireSchema]] = {}
    for name, files in _HISTORY_FILES.items():
        for filename in files:
            schema = _read_schema(schema_dir() / filename)
            # Its own named types: an old Command redefines io.mlestream.CommandKind.
            out.setdefault(name, []).append(_wire_schema(name, filename, schema, schema, {}))
    return out


_HISTORY = _load_history()
# Every fingerprint the codec knows, for naming the schema of a message on the wrong topic.
_BY_FINGERPRINT = {fp: s for s in [*_SCHEMAS.values(), *(w for h in _HISTORY.values() for w in h)]
                   for fp in s.fingerprints}


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


@dataclass(frozen=True, slots=True, eq=False)  # columns have no ==: compare columns.records()
class ColumnsResult(Generic[C]):
    """The valid records of one message as columns (PredictionColumns or LabelColumns), in message
    order, and one error per invalid record, as DecodeResult. Row j of `columns` is record
    `message_index[j]` of the message, the index its errors and dead letters use."""

    columns: C
    errors: list[RecordError]
    message_index: IntArray

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

    Unknown keys are ignored, as on the wire, unless `strict`.
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
        score=_as_double(get("score"), "score"),  # type: ignore[arg-type]  # Prediction validates the type
        scores=_double_map(get("scores"), "scores"),  # type: ignore[arg-type]
        value=_as_double(get("value"), "value"),  # type: ignore[arg-type]
        predicted_label=_label_value(get("predicted_label"), "predicted_label"),  # type: ignore[arg-type]
        latency_ms=_as_double(get("latency_ms"), "latency_ms"),  # type: ignore[arg-type]
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
    """Raise InvalidEvent for what the dataclass accepts but Avro cannot carry: ints beyond 64 bits
    in long fields or beyond a double's range in double fields, strings with a lone surrogate."""
    _check_long(event.timestamp, "timestamp")
    if isinstance(event, Label):
        _check_long(event.label, "label")
        _check_text(event.label, "label")
    else:
        _check_long(event.predicted_label, "predicted_label")
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


@dataclass(frozen=True)
class _Kind(Generic[T]):
    """What decode_predictions / decode_labels differ in."""

    noun: str
    single: WireSchema
    batch: WireSchema
    from_avro: Callable[[dict[str, Any]], T]
    from_json: Callable[[Mapping[str, Any]], T]
    id_field: str


def _wrong_schema(fp: bytes, expected: Sequence[WireSchema], noun: str) -> str:
    """Why a message's fingerprint is refused: which schema it is, if the codec knows it, and which
    fingerprints a `noun` message may carry."""
    def accepted(s: WireSchema) -> str:
        others = sorted(map(_hex, s.fingerprints - {s.fingerprint}))
        also = f"; also {', '.join(others)}" if others else ""
        return f"{s.name} {_hex(s.fingerprint)} (schemas/{s.file}{also})"

    found = _BY_FINGERPRINT.get(fp)
    if found is None:
        what = ("is none of mle-stream's schemas: the producer's schema differs from schemas/*.avsc "
                "(a changed name, namespace, field, type or field order changes the fingerprint) or its "
                "Avro library computes fingerprints another way")
    elif found.file.startswith("history/"):
        what = f"is an older version of the {found.name} schema (schemas/{found.file})"
        if found.name not in {s.name for s in expected}:
            what += f", not a {noun} schema"
    else:
        what = f"is the {found.name} schema (schemas/{found.file}), not a {noun} schema (a message on the wrong topic?)"
    # The header bytes too: fastavro's fingerprint() returns them in this spelling.
    return (f"Avro schema fingerprint {_hex(fp)} (header bytes {fp.hex()}) {what}. A {noun} message carries "
            f"{', '.join(map(accepted, expected))} (docs/producing.md)")


def _trailing(stream: io.BytesIO, size: int, what: str) -> str | None:
    extra = size - stream.tell()
    if not extra:
        return None
    return f"{extra} unexpected bytes after the Avro {what} body (corrupt or written with another schema)"


def _decode_avro(payload: bytes, kind: _Kind[T]) -> DecodeResult[T]:
    if len(payload) < SINGLE_OBJECT_HEADER_LEN:
        return _message_error(
            f"truncated Avro single-object message: {len(payload)} bytes, the header alone is "
            f"{SINGLE_OBJECT_HEADER_LEN}"
        )
    fp = payload[2:SINGLE_OBJECT_HEADER_LEN]
    stream = io.BytesIO(payload)
    stream.seek(SINGLE_OBJECT_HEADER_LEN)
    if fp in kind.batch.fingerprints:
        try:
            raw = _read_body(stream, kind.batch)["records"]
        # fastavro reports corrupt input with EOFError, ValueError, IndexError, UnicodeDecodeError...
        except Exception:  # noqa: BLE001 - any of them: salvage the readable prefix below
            return _salvage_batch(payload, kind)
        problem = _trailing(stream, len(payload), kind.batch.name)
        if problem:
            return _message_error(problem)
    elif fp in kind.single.fingerprints:
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
    stream.seek(SINGLE_OBJECT_HEADER_LEN)
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


# A \uD800-\uDFFF escape: JSON may spell a lone surrogate, which is no text at all (UTF-8 cannot
# carry it: every later encode of the string would raise). Only a message with such an escape pays
# for looking at its strings; a valid pair (an emoji spelled as two escapes) decodes to one character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


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


def _refuse_lone_surrogates(datum: object) -> None:
    field = _lone_surrogate_field(datum)
    if field is not None:
        raise InvalidEvent("holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair): not Unicode "
                           "text, which no Avro string or UTF-8 output can carry", field)


def _decode_json(payload: bytes, kind: _Kind[T]) -> DecodeResult[T]:
    try:
        doc = _load_json(payload)
    except ValueError as exc:
        return _message_error(str(exc))
    make = kind.from_json
    if _SURROGATE_ESCAPE.search(payload):
        def make(datum: Any, build: Callable[[Any], T] = kind.from_json) -> T:
            _refuse_lone_surrogates(datum)
            return build(datum)
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
    return _build(doc, make)


def _as_bytes(payload: bytes | bytearray | memoryview | None) -> bytes:
    # A Kafka tombstone has no value (None); a memoryview cannot be .decode()d or json.loads()ed.
    if payload is None:
        return b""
    return payload if isinstance(payload, bytes) else bytes(payload)


def _decode(payload: bytes, kind: _Kind[T], registry: WriterSchemas | None = None) -> DecodeResult[T]:
    payload = _as_bytes(payload)
    if payload[:2] == AVRO_MARKER:
        return _decode_avro(payload, kind)
    if payload[:1] == confluent.MAGIC:  # never the start of JSON text
        resolution = _confluent_resolution(payload, kind, registry)
        if isinstance(resolution, str):
            return _message_error(resolution)
        return _decode_confluent(payload, kind, resolution)
    return _decode_json(payload, kind)


# ------------------------------------------------------------------------------------------------
# Confluent Schema Registry framing (confluent.py)

# (writer schema text, prediction|label) -> how to read it, or why it cannot be read. Schema ids are
# immutable and few: each writer schema is resolved once per process.
_RESOLUTIONS: dict[tuple[str, str], confluent.Resolution | str] = {}


def _reader(schema: WireSchema) -> confluent.ReaderSchema:
    return confluent.ReaderSchema(schema.name, schema.canonical_form, schema.parsed)


def _confluent_resolution(payload: bytes, kind: _Kind[Any] | WireSchema,
                          registry: WriterSchemas | None) -> confluent.Resolution | str:
    """How to read this framed message's body as `kind` (a record or batch of predictions or labels,
    or one single-event schema), or the reason it cannot be read (a dead letter). RegistryUnavailable
    passes through: a registry that does not answer is not the message's fault."""
    if len(payload) < confluent.HEADER_LEN:
        return (f"truncated Confluent Schema Registry message: {len(payload)} bytes, the header alone "
                f"(0x00 and a 4-byte schema id) is {confluent.HEADER_LEN}")
    schema_id = confluent.schema_id(payload)
    if registry is None:
        return (f"Confluent Schema Registry framing (magic byte 0x00, schema id {schema_id}) but no schema "
                "registry is configured: set MLE_SCHEMA_REGISTRY_URL to the registry the producer uses")
    try:
        text = registry.writer_schema(schema_id)
    except RegistryUnavailable:
        raise
    except SchemaRegistryError as exc:
        return f"Confluent schema id {schema_id}: {exc}"
    key = (text, kind.name if isinstance(kind, WireSchema) else kind.noun)
    resolution = _RESOLUTIONS.get(key)
    if resolution is None:
        try:
            resolution = (confluent.resolve(text, _reader(kind)) if isinstance(kind, WireSchema)
                          else confluent.resolve(text, _reader(kind.single), _reader(kind.batch)))
        except ValueError as exc:
            resolution = str(exc)
        _RESOLUTIONS[key] = resolution
    if isinstance(resolution, str):
        subjects = ", ".join(registry.subjects(schema_id)) or "none the registry could name"
        return f"the writer schema of Confluent schema id {schema_id} (subjects: {subjects}) {resolution}"
    return resolution


def _confluent_datum(payload: bytes, resolution: confluent.Resolution) -> Any:
    """The body of a framed message read as `resolution` says; InvalidEvent when it does not read."""
    reader, writer = resolution.reader, resolution.writer
    stream = io.BytesIO(payload)
    stream.seek(confluent.HEADER_LEN)
    what = f"Avro {reader.name} (Confluent schema id {confluent.schema_id(payload)})"
    try:
        datum = fastavro.schemaless_reader(stream, writer or reader.parsed, None if writer is None else reader.parsed)
    except Exception as exc:  # noqa: BLE001 - fastavro's many corrupt-input errors, reported
        raise InvalidEvent(f"unreadable {what}: {type(exc).__name__}: {exc}") from None
    problem = _trailing(stream, len(payload), what)
    if problem:
        raise InvalidEvent(problem)
    return datum


def _decode_confluent(payload: bytes, kind: _Kind[T], resolution: confluent.Resolution) -> DecodeResult[T]:
    try:
        datum = _confluent_datum(payload, resolution)
    except InvalidEvent as exc:
        return _message_error(exc.reason)
    return _build(datum["records"] if resolution.reader.name == kind.batch.name else [datum], kind.from_avro)


def _confluent_columns(payload: bytes, kind: _Kind[Any], registry: WriterSchemas | None, fast: bool,
                       reader: Callable[[bytes, int], R], check: Callable[[R], ColumnsResult[C]],
                       to_columns: Callable[[list[Any]], C]) -> ColumnsResult[C]:
    """A framed message as columns: a body written with our own batch schema goes to the fast reader,
    exactly as a single-object one; any other through the record path."""
    resolution = _confluent_resolution(payload, kind, registry)
    if isinstance(resolution, str):
        return _as_columns(_message_error(resolution), to_columns)
    if fast and resolution.writer is None and resolution.reader.name == kind.batch.name:
        try:
            return check(reader(payload, confluent.HEADER_LEN))
        except Exception:  # noqa: BLE001 - corrupt or unusual input: fastavro reads and reports it
            pass
    return _as_columns(_decode_confluent(payload, kind, resolution), to_columns)


def _prediction_from_avro(datum: dict[str, Any]) -> Prediction:
    return Prediction(**datum)


def _label_from_avro(datum: dict[str, Any]) -> Label:
    return Label(**datum)


_PREDICTIONS: _Kind[Prediction] = _Kind(
    "prediction", _SCHEMAS["Prediction"], _SCHEMAS["PredictionBatch"],
    _prediction_from_avro, prediction_from_dict, "prediction_id",
)
_LABELS: _Kind[Label] = _Kind(
    "label", _SCHEMAS["Label"], _SCHEMAS["LabelBatch"], _label_from_avro, label_from_dict, "prediction_id",
)


# ------------------------------------------------------------------------------------------------
# The columns path: a PredictionBatch or LabelBatch straight into columns (avro_batch_reader.py)

# The readers know one schema each: they are used only while schemas/*.avsc and the dataclasses
# keep the shape they were written for. Otherwise every message takes the record path above.
_FAST_PREDICTIONS = (
    _SCHEMAS["PredictionBatch"].canonical_form == PREDICTION_BATCH_CANONICAL_FORM
    and tuple(f.name for f in dataclasses.fields(Prediction)) == PREDICTION_FIELDS
)
_FAST_LABELS = (
    _SCHEMAS["LabelBatch"].canonical_form == LABEL_BATCH_CANONICAL_FORM
    and tuple(f.name for f in dataclasses.fields(Label)) == LABEL_FIELDS
)


def _fast_read(payload: bytes, kind: _Kind[Any], enabled: bool, reader: Callable[[bytes, int], R]) -> R | None:
    """What the fast reader reads of a batch message of this kind; None for any other message, or
    when the reader refuses it (the record path then reads it with fastavro, or reports it)."""
    if not enabled or payload[:2] != AVRO_MARKER or payload[2:SINGLE_OBJECT_HEADER_LEN] not in kind.batch.fingerprints:
        return None
    try:
        return reader(payload, SINGLE_OBJECT_HEADER_LEN)
    except Exception:  # noqa: BLE001 - corrupt or unusual input: fastavro reads and reports it
        return None


def _read_prediction_batch(payload: bytes) -> list[tuple[Any, ...]]:
    """Every record of a PredictionBatch message as Prediction constructor arguments, unchecked (the
    tests cross-check the fast reader against fastavro with it)."""
    read = read_prediction_batch(payload, SINGLE_OBJECT_HEADER_LEN)
    return [read.args(i) for i in range(len(read))]


def _present(values: Sequence[object] | None, n: int) -> BoolArray:
    if values is None:
        return np.zeros(n, dtype=np.bool_)
    return np.fromiter((v is not None for v in values), dtype=np.bool_, count=n)


def _flag_empty(flagged: BoolArray, *columns: list[str]) -> None:
    for column in columns:
        if "" in column:  # a C loop; the per-row flags only when there is one
            flagged |= np.fromiter((not s for s in column), dtype=np.bool_, count=len(column))


def _explained(columns: C, flagged: BoolArray, build: Callable[[int], object]) -> ColumnsResult[C]:
    """The rows not flagged, and an error for each flagged row, explained by `build` (the
    dataclass of that row), so the reason is exactly the one the record path gives."""
    errors: list[RecordError] = []
    for i in np.flatnonzero(flagged).tolist():
        try:
            build(i)
        except InvalidEvent as exc:
            errors.append(_record_error(i, exc))
        else:  # the dataclass is the contract: a row it accepts stays
            flagged[i] = False
    keep = np.flatnonzero(~flagged).astype(np.int64, copy=False)
    return ColumnsResult(columns.select(keep) if errors else columns, errors, keep)


def _check_predictions(read: PredictionRead) -> ColumnsResult[PredictionColumns]:
    """events.Prediction's contract on whole columns: what Avro's types do not already guarantee.

    Validate fast, explain slow: these checks only flag rows; _explained builds the Prediction of a
    flagged row for its error. Feature and segment values need no check: Avro types them.
    """
    c = read.columns
    n = len(c)
    outputs = read.has_score.astype(np.int8) + read.has_value + _present(c.scores, n)
    flagged = (c.timestamp < 0) | (outputs > 1) | ((outputs == 0) & ~_present(c.error, n))
    flagged |= read.has_score & ~((c.score >= 0.0) & (c.score <= 1.0))  # NaN fails both
    flagged |= read.has_value & ~np.isfinite(c.value)
    flagged |= read.has_latency & ~(np.isfinite(c.latency_ms) & (c.latency_ms >= 0.0))
    _flag_empty(flagged, c.prediction_id, c.model, c.version)
    if c.scores is not None:
        for i, scores in enumerate(c.scores):
            if scores is not None and not (scores and all(map(math.isfinite, scores.values()))):
                flagged[i] = True
    return _explained(c, flagged, lambda i: Prediction(*read.args(i)))


def _check_labels(c: LabelColumns) -> ColumnsResult[LabelColumns]:
    """events.Label's contract on whole columns; as _check_predictions."""
    flagged = c.timestamp < 0
    _flag_empty(flagged, c.prediction_id, c.model)
    if float in set(map(type, c.label)):  # only a double can break it (NaN, infinite)
        flagged |= np.fromiter((type(v) is float and not math.isfinite(v) for v in c.label),
                               dtype=np.bool_, count=len(c))
    return _explained(c, flagged, c.record)


def _prediction_columns(payload: bytes) -> ColumnsResult[PredictionColumns] | None:
    read = _fast_read(payload, _PREDICTIONS, _FAST_PREDICTIONS, read_prediction_batch)
    return None if read is None else _check_predictions(read)


def _label_columns(payload: bytes) -> ColumnsResult[LabelColumns] | None:
    read = _fast_read(payload, _LABELS, _FAST_LABELS, read_label_batch)
    return None if read is None else _check_labels(read)


def _as_columns(result: DecodeResult[T], to_columns: Callable[[list[T]], C]) -> ColumnsResult[C]:
    # Each record the record path read is in `records` or named by an error: the records' message
    # indices are the ones no error names.
    bad = {e.index for e in result.errors if e.index is not None}
    index = [i for i in range(len(result.records) + len(bad)) if i not in bad]
    return ColumnsResult(to_columns(result.records), result.errors, np.array(index, dtype=np.int64))


def decode_predictions(payload: bytes, registry: WriterSchemas | None = None) -> DecodeResult[Prediction]:
    """The predictions in one message of the predictions topic.

    Accepts Avro single-object (Prediction or PredictionBatch, told apart by fingerprint), JSON
    (an object, an array of objects, or {"records": [...]}), and Confluent Schema Registry framing,
    whose writer schemas `registry` looks up (without one, such a message is an error saying so).
    JSON fields that the schema does not know are ignored, for forward compatibility; missing
    required fields and wrong types are errors.
    Never raises for bad input: a record that breaks the contract becomes a RecordError with its
    index, and an unreadable message a single RecordError with index None. Raises RegistryUnavailable
    when the registry cannot be asked for a writer schema (not the message's fault).
    """
    payload = _as_bytes(payload)
    fast = _prediction_columns(payload)
    if fast is not None:
        return DecodeResult(fast.columns.records(), fast.errors)
    return _decode(payload, _PREDICTIONS, registry)


def decode_prediction_columns(payload: bytes, registry: WriterSchemas | None = None
                              ) -> ColumnsResult[PredictionColumns]:
    """The predictions in one message as columns: what the worker's hot path reads.

    The same forms, records and errors as decode_predictions. A PredictionBatch is read straight
    into columns (no object per record) and the contract is checked on whole columns; the rarer
    forms go through decode_predictions' records. `message_index` maps each row back to its record
    in the message, for dead letters.
    """
    payload = _as_bytes(payload)
    fast = _prediction_columns(payload)
    if fast is not None:
        return fast
    if payload[:1] == confluent.MAGIC:
        return _confluent_columns(payload, _PREDICTIONS, registry, _FAST_PREDICTIONS, read_prediction_batch,
                                  _check_predictions, PredictionColumns.from_records)
    return _as_columns(_decode(payload, _PREDICTIONS), PredictionColumns.from_records)


def decode_labels(payload: bytes, registry: WriterSchemas | None = None) -> DecodeResult[Label]:
    """The labels in one message of the labels topic; same forms and rules as decode_predictions."""
    payload = _as_bytes(payload)
    fast = _label_columns(payload)
    if fast is not None:
        return DecodeResult(fast.columns.records(), fast.errors)
    return _decode(payload, _LABELS, registry)


def decode_label_columns(payload: bytes, registry: WriterSchemas | None = None) -> ColumnsResult[LabelColumns]:
    """The labels in one message as columns; as decode_prediction_columns."""
    payload = _as_bytes(payload)
    fast = _label_columns(payload)
    if fast is not None:
        return fast
    if payload[:1] == confluent.MAGIC:
        return _confluent_columns(payload, _LABELS, registry, _FAST_LABELS, read_label_batch, _check_labels,
                                  LabelColumns.from_records)
    return _as_columns(_decode(payload, _LABELS), LabelColumns.from_records)


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
    "test": _optional_str, "exceeded": _str_list, "drifted": _req_bool, "reason": _req_str,
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
    "status": _enum(RolloutStatus), "route_weights": _int_map, "champion": _optional_str,
    "challenger": _optional_str, "reason": _req_str, "details": _req_str, "at": _req_long,
}
_SNAPSHOT_SPEC: _Spec = {
    "model": _req_str, "version": _req_str, "role": _req_str, "segment": _optional_str,
    "window_start": _req_long, "window_end": _req_long, "predictions": _req_long, "labeled": _req_long,
    "metrics": _nullable_double_map, "status": _req_str, "verdict": _optional_str, "emitted_at": _req_long,
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
    return _write(schema, datum)


def _decode_single(payload: bytes, schema: WireSchema, cls: type[E], spec: _Spec,
                   registry: WriterSchemas | None = None) -> E:
    payload = _as_bytes(payload)
    if payload[:1] == confluent.MAGIC:
        resolution = _confluent_resolution(payload, schema, registry)
        if isinstance(resolution, str):
            raise InvalidEvent(resolution)
        datum = _confluent_datum(payload, resolution)
    elif payload[:2] == AVRO_MARKER:
        if len(payload) < SINGLE_OBJECT_HEADER_LEN:
            raise InvalidEvent(f"truncated Avro single-object message: {len(payload)} bytes")
        fp = payload[2:SINGLE_OBJECT_HEADER_LEN]
        readable = [schema, *_HISTORY.get(schema.name, ())]
        writer = next((w for w in readable if fp in w.fingerprints), None)
        if writer is None:
            raise InvalidEvent(_wrong_schema(fp, readable, cls.__name__))
        stream = io.BytesIO(payload)
        stream.seek(SINGLE_OBJECT_HEADER_LEN)
        try:
            datum = (_read_body(stream, schema) if writer is schema
                     else fastavro.schemaless_reader(stream, writer.parsed, schema.parsed))
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
        if _SURROGATE_ESCAPE.search(payload):
            _refuse_lone_surrogates(datum)
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
