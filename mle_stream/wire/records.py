"""The messages of the prediction and label topics: one record or a batch (PredictionBatch /
LabelBatch) per message, in any framing the worker reads (Avro single-object, JSON, Confluent
Schema Registry), told apart by their first bytes.

The decoders return every valid record of a message and one `RecordError` per invalid one, so a
single bad record never costs the good ones. The worker reads them as columns
(`decode_prediction_columns` / `decode_label_columns`): a batch written with mle-stream's own
schema goes straight from its bytes into numpy arrays and lists (_batch_reader.py), with the same
records and errors as the dataclass decoders (`decode_predictions` / `decode_labels`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from mle_stream.core.columns import LabelColumns, PredictionColumns
from mle_stream.core.events import Label, Prediction
from mle_stream.errors import InvalidEvent
from mle_stream.wire import confluent
from mle_stream.wire._batch_reader import (
    LABEL_BATCH_CANONICAL_FORM,
    LABEL_FIELDS,
    PREDICTION_BATCH_CANONICAL_FORM,
    PREDICTION_FIELDS,
    PredictionRead,
    read_label_batch,
    read_prediction_batch,
)
from mle_stream.wire.avro_records import decode_avro
from mle_stream.wire.avro_schemas import schemas
from mle_stream.wire.framing import AVRO_MARKER, SINGLE_OBJECT_HEADER_LEN, as_bytes
from mle_stream.wire.json_records import decode_json, label_from_dict, prediction_from_dict
from mle_stream.wire.results import (
    ColumnsResult,
    DecodeResult,
    RecordError,
    RecordKind,
    build_records,
    message_error,
    record_error,
)
from mle_stream.wire.schema_registry import WriterSchemas

__all__ = ["decode_label_columns", "decode_labels", "decode_prediction_columns", "decode_predictions"]

_SCHEMAS = schemas()

T = TypeVar("T")
C = TypeVar("C", PredictionColumns, LabelColumns)
R = TypeVar("R")
BoolArray = npt.NDArray[np.bool_]


def _decode(payload: bytes, kind: RecordKind[T], registry: WriterSchemas | None = None) -> DecodeResult[T]:
    """The record path: the framing told apart by the first bytes, every record a dataclass."""
    payload = as_bytes(payload)
    if payload[:2] == AVRO_MARKER:
        return decode_avro(payload, kind)
    if payload[:1] == confluent.MAGIC:  # never the start of JSON text
        resolution = confluent.framed_resolution(payload, registry, kind.noun, kind.single, kind.batch)
        if isinstance(resolution, str):
            return message_error(resolution)
        return _decode_confluent(payload, kind, resolution)
    return decode_json(payload, kind)


def _decode_confluent(payload: bytes, kind: RecordKind[T], resolution: confluent.Resolution) -> DecodeResult[T]:
    try:
        datum = confluent.read_framed(payload, resolution)
    except InvalidEvent as exc:
        return message_error(exc.reason)
    return build_records(datum["records"] if resolution.reader.name == kind.batch.name else [datum], kind.from_avro)


def _confluent_columns(payload: bytes, kind: RecordKind[Any], registry: WriterSchemas | None, fast: bool,
                       reader: Callable[[bytes, int], R], check: Callable[[R], ColumnsResult[C]],
                       to_columns: Callable[[list[Any]], C]) -> ColumnsResult[C]:
    """A framed message as columns: a body written with our own batch schema goes to the fast reader,
    exactly as a single-object one; any other through the record path."""
    resolution = confluent.framed_resolution(payload, registry, kind.noun, kind.single, kind.batch)
    if isinstance(resolution, str):
        return _as_columns(message_error(resolution), to_columns)
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


_PREDICTIONS: RecordKind[Prediction] = RecordKind(
    "prediction", _SCHEMAS["Prediction"], _SCHEMAS["PredictionBatch"],
    _prediction_from_avro, prediction_from_dict, "prediction_id",
)
_LABELS: RecordKind[Label] = RecordKind(
    "label", _SCHEMAS["Label"], _SCHEMAS["LabelBatch"], _label_from_avro, label_from_dict, "prediction_id",
)


# ------------------------------------------------------------------------------------------------
# The columns path: a PredictionBatch or LabelBatch straight into columns (_batch_reader.py)

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


def _fast_read(payload: bytes, kind: RecordKind[Any], enabled: bool, reader: Callable[[bytes, int], R]) -> R | None:
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
            errors.append(record_error(i, exc))
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
    payload = as_bytes(payload)
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
    payload = as_bytes(payload)
    fast = _prediction_columns(payload)
    if fast is not None:
        return fast
    if payload[:1] == confluent.MAGIC:
        return _confluent_columns(payload, _PREDICTIONS, registry, _FAST_PREDICTIONS, read_prediction_batch,
                                  _check_predictions, PredictionColumns.from_records)
    return _as_columns(_decode(payload, _PREDICTIONS), PredictionColumns.from_records)


def decode_labels(payload: bytes, registry: WriterSchemas | None = None) -> DecodeResult[Label]:
    """The labels in one message of the labels topic; same forms and rules as decode_predictions."""
    payload = as_bytes(payload)
    fast = _label_columns(payload)
    if fast is not None:
        return DecodeResult(fast.columns.records(), fast.errors)
    return _decode(payload, _LABELS, registry)


def decode_label_columns(payload: bytes, registry: WriterSchemas | None = None) -> ColumnsResult[LabelColumns]:
    """The labels in one message as columns; as decode_prediction_columns."""
    payload = as_bytes(payload)
    fast = _label_columns(payload)
    if fast is not None:
        return fast
    if payload[:1] == confluent.MAGIC:
        return _confluent_columns(payload, _LABELS, registry, _FAST_LABELS, read_label_batch, _check_labels,
                                  LabelColumns.from_records)
    return _as_columns(_decode(payload, _LABELS), LabelColumns.from_records)
