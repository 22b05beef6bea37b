"""Predictions and labels in Avro single-object encoding, read and written with fastavro: the
dataclasses as Avro datums, the messages mle-stream writes, and the record path of a message
(every record as a dataclass; the worker's hot path reads batches into columns, records.py).

Two fastavro defaults are overridden on purpose: ``timestamp-millis`` fields are read and written
as plain ``int`` epoch milliseconds (the dataclasses carry ints; fastavro would build datetimes),
and union branches are chosen explicitly (a Python ``bool`` is an ``int``, an ``int`` feature is an
Avro ``double``), so what is written does not depend on fastavro's branch-guessing.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from mle_stream.core.events import Label, Prediction
from mle_stream.wire.avro_schemas import schemas
from mle_stream.wire.framing import (
    SINGLE_OBJECT_HEADER_LEN,
    read_body,
    trailing_bytes,
    write_single_object,
    wrong_schema,
)
from mle_stream.wire.results import DecodeResult, RecordError, RecordKind, build_records, message_error

__all__ = ["decode_avro", "encode_label", "encode_labels", "encode_prediction", "encode_predictions", "label_datum",
           "prediction_datum"]

_SCHEMAS = schemas()

T = TypeVar("T")


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


def prediction_datum(p: Prediction) -> dict[str, object]:
    """`p` as the Avro datum fastavro writes with the Prediction schema."""
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


def label_datum(label: Label) -> dict[str, object]:
    """`label` as the Avro datum fastavro writes with the Label schema."""
    return {
        "prediction_id": label.prediction_id,
        "model": label.model,
        "timestamp": label.timestamp,
        "label": _label_branch(label.label),
    }


def encode_prediction(p: Prediction) -> bytes:
    """One Prediction as an Avro single-object message."""
    return write_single_object(_SCHEMAS["Prediction"], prediction_datum(p))


def encode_predictions(records: Sequence[Prediction]) -> bytes:
    """Many predictions as one PredictionBatch message (what the client publishes)."""
    return write_single_object(_SCHEMAS["PredictionBatch"], {"records": [prediction_datum(p) for p in records]})


def encode_label(label: Label) -> bytes:
    """One Label as an Avro single-object message."""
    return write_single_object(_SCHEMAS["Label"], label_datum(label))


def encode_labels(records: Sequence[Label]) -> bytes:
    """Many labels as one LabelBatch message."""
    return write_single_object(_SCHEMAS["LabelBatch"], {"records": [label_datum(x) for x in records]})


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


def decode_avro(payload: bytes, kind: RecordKind[T]) -> DecodeResult[T]:
    """A single-object message of `kind` (one record or a batch, told apart by fingerprint), with fastavro."""
    if len(payload) < SINGLE_OBJECT_HEADER_LEN:
        return message_error(
            f"truncated Avro single-object message: {len(payload)} bytes, the header alone is "
            f"{SINGLE_OBJECT_HEADER_LEN}"
        )
    fp = payload[2:SINGLE_OBJECT_HEADER_LEN]
    stream = io.BytesIO(payload)
    stream.seek(SINGLE_OBJECT_HEADER_LEN)
    if fp in kind.batch.fingerprints:
        try:
            raw = read_body(stream, kind.batch)["records"]
        # fastavro reports corrupt input with EOFError, ValueError, IndexError, UnicodeDecodeError...
        except Exception:  # noqa: BLE001 - any of them: salvage the readable prefix below
            return _salvage_batch(payload, kind)
        problem = trailing_bytes(stream, len(payload), kind.batch.name)
        if problem:
            return message_error(problem)
    elif fp in kind.single.fingerprints:
        try:
            raw = [read_body(stream, kind.single)]
        except Exception as exc:  # noqa: BLE001 - see above
            return message_error(f"unreadable Avro {kind.single.name}: {type(exc).__name__}: {exc}")
        problem = trailing_bytes(stream, len(payload), kind.single.name)
        if problem:
            return message_error(problem)
    else:
        return message_error(wrong_schema(fp, (kind.single, kind.batch), kind.noun))
    return build_records(raw, kind.from_avro)


def _salvage_batch(payload: bytes, kind: RecordKind[T]) -> DecodeResult[T]:
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
                raw.append(read_body(stream, kind.single))
    except Exception as exc:  # noqa: BLE001 - corrupt input, reported below
        failure = f"{type(exc).__name__}: {exc}"
    result = build_records(raw, kind.from_avro)
    where = len(raw)
    reason = (
        f"record {where}: unreadable Avro {kind.single.name} ({failure}); "
        f"the rest of the {kind.batch.name} is lost, {where} records before it were read"
        if failure
        else f"Avro {kind.batch.name} could not be read as a whole but every record could; corrupt trailer"
    )
    result.errors.append(RecordError(where if failure else None, "", reason))
    return result
