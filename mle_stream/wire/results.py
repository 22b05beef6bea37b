"""What decoding a message of predictions or labels returns: its valid records (as dataclasses or
columns) and one error per invalid record; and what the decoders of each framing share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mle_stream.core.columns import IntArray, LabelColumns, PredictionColumns
from mle_stream.errors import InvalidEvent
from mle_stream.wire.avro_schemas import WireSchema

__all__ = ["ColumnsResult", "DecodeResult", "RecordError", "RecordKind", "build_records", "message_error",
           "record_error"]

T = TypeVar("T")
C = TypeVar("C", PredictionColumns, LabelColumns)


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


def record_error(index: int, exc: InvalidEvent) -> RecordError:
    """Record `index` of a message refused for `exc`, the reason naming the record and its field."""
    where = f"record {index}: field '{exc.field}'" if exc.field else f"record {index}"
    return RecordError(index, exc.field, f"{where}: {exc.reason}")


def message_error(reason: str) -> DecodeResult[Any]:
    """A message that could not be read at all: no records, one error with index None."""
    return DecodeResult([], [RecordError(None, "", reason)])


@dataclass(frozen=True)
class RecordKind(Generic[T]):
    """What decode_predictions / decode_labels differ in."""

    noun: str
    single: WireSchema
    batch: WireSchema
    from_avro: Callable[[dict[str, Any]], T]
    from_json: Callable[[Mapping[str, Any]], T]
    id_field: str


def build_records(raw: Iterable[Any], make: Callable[[Any], T]) -> DecodeResult[T]:
    """The dataclasses of a batch; a record that breaks the contract is reported, not fatal."""
    records: list[T] = []
    errors: list[RecordError] = []
    append = records.append
    for index, datum in enumerate(raw):
        try:
            append(make(datum))
        except InvalidEvent as exc:
            errors.append(record_error(index, exc))
    return DecodeResult(records, errors)
