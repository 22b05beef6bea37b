"""Readers of PredictionBatch and LabelBatch bodies straight into columns: the worker's hot path.

records.py stays the entry of the wire format: it decides when these readers apply (only
while the schemas have the canonical forms below), checks the event contract on the columns they
return, and reads everything else with fastavro. This module only turns the Avro binary body of a
batch into columns.

Why hand-written: fastavro dispatches per field and per map entry in Python, and a dataclass per
record that re-checks what Avro already typed costs as much again; together they would take most
of the worker's budget per prediction (docs/performance.md has the figures).

How: the records of one batch nearly always share a *shape*: ids of one length, one model, the
same union branches, the same feature names, only the values differ. From a record the reader
builds a regex of its bytes in which lengths, union branches and map keys are literal and each
value is a hole of fixed width (`_Pattern`); one regex call then matches the whole run of records
of that shape (a possessive repeat, in C), and numpy reads each column out of the matched bytes at
once (`_Shape.read`), with no Python work per record. A batch tries the shapes the last batches
were read with first, so the usual batch is one regex run from its first record on. A record that
no known shape fits is read field by field (`_read_prediction`, `_read_label`: the "loose" path)
and teaches its shape once it has been seen twice; a stream of shapes that never repeat (free-text
values of every length) stays on the loose path without compiling regexes for nothing, and a shape
with only a few records in a batch of several shapes is read loosely too (numpy's fixed cost per
call would outweigh it).

The compiled path is several times faster per record than the loose one; the figures are in
docs/performance-history.md.

Contract with records.py: the readers return every record of the batch as read, in message order,
without checking the event contract. They have no error reporting of their own: anything
unexpected raises (ValueError, IndexError, UnicodeDecodeError...) and records.py then reads the
message with fastavro, which reads or reports it. At worst that is slower, never lossier; the tests
cross-check both paths of this module against fastavro on generated records.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar, cast

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from mle_stream.core.columns import (
    FeatureColumns,
    FloatArray,
    IntArray,
    LabelColumns,
    PredictionColumns,
    nan_if_none,
    optional_column,
)
from mle_stream.core.events import FeatureValue

__all__ = [
    "LABEL_BATCH_CANONICAL_FORM",
    "LABEL_FIELDS",
    "PREDICTION_BATCH_CANONICAL_FORM",
    "PREDICTION_FIELDS",
    "PredictionRead",
    "read_label_batch",
    "read_prediction_batch",
]

BoolArray = npt.NDArray[np.bool_]
ByteRows = npt.NDArray[np.uint8]  # the bytes of records of one shape, one record per row

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
_LABEL_CANONICAL_FORM = (
    '{"name":"io.mlestream.Label","type":"record","fields":[{"name":"prediction_id","type":"string"},'
    '{"name":"model","type":"string"},{"name":"timestamp","type":"long"},'
    '{"name":"label","type":["boolean","long","double","string"]}]}'
)


def _batch_form(name: str, item: str) -> str:
    return (f'{{"name":"io.mlestream.{name}","type":"record",'
            f'"fields":[{{"name":"records","type":{{"type":"array","items":{item}}}}}]}}')


# The schemas these readers were written for: records.py uses them only while schemas/*.avsc match.
PREDICTION_BATCH_CANONICAL_FORM = _batch_form("PredictionBatch", _PREDICTION_CANONICAL_FORM)
LABEL_BATCH_CANONICAL_FORM = _batch_form("LabelBatch", _LABEL_CANONICAL_FORM)

# Argument order of the Prediction and Label constructors, which is also the schemas' field order.
PREDICTION_FIELDS = ("prediction_id", "model", "version", "timestamp", "score", "scores", "value",
                     "predicted_label", "latency_ms", "features", "segment", "error")
LABEL_FIELDS = ("prediction_id", "model", "timestamp", "label")


@dataclass(eq=False, slots=True)
class PredictionRead:
    """Every record of a PredictionBatch as read, before the contract is checked.

    In `columns` NaN stands for an absent score, value or latency_ms; the `has_*` masks say which
    were present, because a NaN that was sent breaks the contract and must be told apart.
    """

    columns: PredictionColumns
    has_score: BoolArray
    has_value: BoolArray
    has_latency: BoolArray

    def __len__(self) -> int:
        return len(self.columns)

    def args(self, i: int) -> tuple[Any, ...]:
        """Record i as Prediction constructor arguments, exactly as read (records.py builds the
        dataclass from them to explain a record that breaks the contract)."""
        c = self.columns
        return (
            c.prediction_id[i], c.model[i], c.version[i], int(c.timestamp[i]),
            float(c.score[i]) if self.has_score[i] else None, None if c.scores is None else c.scores[i],
            float(c.value[i]) if self.has_value[i] else None,
            None if c.predicted_label is None else c.predicted_label[i],
            float(c.latency_ms[i]) if self.has_latency[i] else None, c.features.get(i),
            None if c.segment is None else c.segment[i], None if c.error is None else c.error[i],
        )


# ------------------------------------------------------------------------------------------------
# Field by field (the loose path)

_unpack_double = struct.Struct("<d").unpack_from
_DOUBLE = np.dtype("<f8")  # Avro doubles are little-endian whatever the machine


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
    if n >> 64:  # a tenth byte beyond the 64 bits: invalid, and fastavro would read it otherwise
        raise ValueError("varint beyond 64 bits")
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
    _bad(branch)


def _value_at(buf: bytes, pos: int, branch: int) -> tuple[Any, int]:
    """A value of the union ["boolean", "long", "double", "string"] (Label.label; predicted_label
    is the same union after a "null"), given its branch index."""
    if branch == 0:
        flag = buf[pos]
        if flag > 1:
            _bad(flag)
        return flag == 1, pos + 1
    if branch == 1:
        return _long_at(buf, pos)
    if branch == 2:
        return _unpack_double(buf, pos)[0], pos + 8
    if branch == 3:
        return _str_at(buf, pos)
    _bad(2 * branch)


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


def _bad(byte: int) -> NoReturn:
    raise ValueError(f"unexpected byte {byte} for a union branch or boolean")


class _FeatureLayout:
    """The bytes of a features map of given names, in one block, every value a double.

    Only the eight bytes of each value differ between two records with the same names, so a regex
    over the fixed bytes recognises the layout, and numpy gathers the values of all the records that
    matched it into one matrix afterwards. This is the loose path's shortcut for the features; the
    shapes do the same for whole records.
    """

    __slots__ = ("match", "names", "size", "_value_bytes")

    def __init__(self, names: Sequence[str]) -> None:
        pattern = _Pattern()
        _features_pattern(pattern, dict.fromkeys(names, 0.0))
        self.match = re.compile(pattern.regex(), re.DOTALL).match
        self.names = tuple(names)
        self.size = pattern.size
        self._value_bytes = pattern.double_bytes()

    def values(self, buf: bytes, starts: Sequence[int]) -> FloatArray:
        """The matrix of the maps that begin at `starts` (each matched by this layout)."""
        data = np.frombuffer(buf, np.uint8)
        return data[np.array(starts)[:, None] + self._value_bytes].view(_DOUBLE).astype(np.float64, copy=False)


_LayoutHit = tuple[_FeatureLayout, int]  # a features map the layout matched, and where it begins


class _FeatureLayouts:
    """The layouts seen so far, and the one that matched last (a batch usually repeats one)."""

    _MAX = 256  # feature-name sets to remember; beyond that, new sets take the general path

    def __init__(self) -> None:
        self.last: _FeatureLayout | None = None
        self._known: dict[tuple[str, ...], _FeatureLayout] = {}

    def read(self, buf: bytes, pos: int) -> tuple[dict[str, Any] | _LayoutHit, int]:
        layout = self.last
        if layout is not None and layout.match(buf, pos):
            return (layout, pos), pos + layout.size
        features, end = _map_at(buf, pos, _feature_at)
        return self._learn(features, buf, pos) or features, end

    def _learn(self, features: dict[str, Any], buf: bytes, pos: int) -> _LayoutHit | None:
        if not features or any(type(v) is not float for v in features.values()):
            return None
        names = tuple(features)
        layout = self._known.get(names)
        if layout is None:
            if len(self._known) >= self._MAX:
                return None
            layout = _FeatureLayout(names)
        if not layout.match(buf, pos):  # the regex, not this code, decides whether the layout applies
            return None
        self._known[names] = layout
        self.last = layout
        return layout, pos


_feature_layouts = _FeatureLayouts()


def _read_prediction(buf: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
    """One Prediction record: its constructor arguments in schema order (features a dict, or a
    _LayoutHit whose values are gathered later) and the position after it.

    Written out long-hand on purpose: the common cases (short strings, one-byte union indexes) are
    inlined because a function call costs as much as the read itself.
    """
    # prediction_id, model, version: strings, nearly always shorter than 64 bytes
    b = buf[pos]
    if b & 0x81:
        prediction_id, pos = _str_at(buf, pos)
    else:
        end = pos + 1 + (b >> 1)
        prediction_id = buf[pos + 1 : end].decode()
        pos = end
    b = buf[pos]
    if b & 0x81:
        model, pos = _str_at(buf, pos)
    else:
        end = pos + 1 + (b >> 1)
        model = buf[pos + 1 : end].decode()
        pos = end
    b = buf[pos]
    if b & 0x81:
        version, pos = _str_at(buf, pos)
    else:
        end = pos + 1 + (b >> 1)
        version = buf[pos + 1 : end].decode()
        pos = end
    timestamp, pos = _long_at(buf, pos)
    # The unions: the branch index is one zig-zag byte, branch i is written as 2 * i.
    b = buf[pos]
    if b == 2:
        score = _unpack_double(buf, pos + 1)[0]
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
        scores, pos = _map_at(buf, pos, _double_at)
    else:
        _bad(b)
    b = buf[pos]
    if b == 0:
        value = None
        pos += 1
    elif b == 2:
        value = _unpack_double(buf, pos + 1)[0]
        pos += 9
    else:
        _bad(b)
    b = buf[pos]
    pos += 1
    if b == 0:
        predicted_label = None
    elif b & 1 or b > 8:
        _bad(b)
    else:
        predicted_label, pos = _value_at(buf, pos, (b >> 1) - 1)
    b = buf[pos]
    if b == 2:
        latency_ms = _unpack_double(buf, pos + 1)[0]
        pos += 9
    elif b == 0:
        latency_ms = None
        pos += 1
    else:
        _bad(b)
    b = buf[pos]
    pos += 1
    features: dict[str, Any] | _LayoutHit | None
    if b == 2:
        features, pos = _feature_layouts.read(buf, pos)
    elif b == 0:
        features = None
    else:
        _bad(b)
    b = buf[pos]
    pos += 1
    if b == 0:
        segment = None
    elif b == 2:
        segment, pos = _map_at(buf, pos, _str_at)
    else:
        _bad(b)
    b = buf[pos]
    pos += 1
    if b == 0:
        error = None
    elif b == 2:
        error, pos = _str_at(buf, pos)
    else:
        _bad(b)
    return (prediction_id, model, version, timestamp, score, scores, value, predicted_label, latency_ms,
            features, segment, error), pos


def _read_label(buf: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
    """One Label record: its constructor arguments and the position after it."""
    prediction_id, pos = _str_at(buf, pos)
    model, pos = _str_at(buf, pos)
    timestamp, pos = _long_at(buf, pos)
    b = buf[pos]
    if b & 1 or b > 6:
        _bad(b)
    label, pos = _value_at(buf, pos + 1, b >> 1)
    return (prediction_id, model, timestamp, label), pos


def _present(values: Sequence[object]) -> BoolArray:
    return np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))


def _loose_features(features: Sequence[dict[str, FeatureValue] | _LayoutHit | None], buf: bytes) -> FeatureColumns:
    """The features the loose path read: the layout most records matched becomes the matrix, every
    other map goes to `other`."""
    hits: dict[_FeatureLayout, tuple[list[int], list[int]]] = {}  # layout -> (records, starts)
    other: dict[int, Mapping[str, FeatureValue]] = {}
    for i, f in enumerate(features):
        if f is None:
            continue
        if type(f) is tuple:
            rows, starts = hits.setdefault(f[0], ([], []))
            rows.append(i)
            starts.append(f[1])
        else:
            other[i] = f  # type: ignore[assignment]
    if not hits:
        return FeatureColumns(other=other)
    main = max(hits, key=lambda layout: len(hits[layout][0]))
    for layout, (rows, starts) in hits.items():
        if layout is not main:
            other.update(zip(rows, (dict(zip(layout.names, v)) for v in layout.values(buf, starts).tolist())))
    rows, starts = hits[main]
    return FeatureColumns(main.names, np.array(rows, dtype=np.int64), main.values(buf, starts), other)


def _loose_predictions(rows: list[tuple[Any, ...]], buf: bytes) -> PredictionRead:
    if not rows:
        empty = np.empty(0, dtype=np.float64)
        no = np.empty(0, dtype=np.bool_)
        return PredictionRead(PredictionColumns([], [], [], np.empty(0, dtype=np.int64), empty, empty, empty), no, no,
                              no)
    ids, models, versions, timestamps, score, scores, value, label, latency, features, segment, error = zip(*rows)
    columns = PredictionColumns(
        list(ids), list(models), list(versions), np.array(timestamps, dtype=np.int64),
        nan_if_none(score), nan_if_none(value), nan_if_none(latency),
        optional_column(list(scores)), optional_column(list(label)), optional_column(list(segment)),
        optional_column(list(error)),
        _loose_features(features, buf),
    )
    return PredictionRead(columns, _present(score), _present(value), _present(latency))


def _loose_labels(rows: list[tuple[Any, ...]], buf: bytes) -> LabelColumns:
    if not rows:
        return LabelColumns([], [], np.empty(0, dtype=np.int64), [])
    ids, models, timestamps, labels = zip(*rows)
    return LabelColumns(list(ids), list(models), np.array(timestamps, dtype=np.int64), list(labels))


# ------------------------------------------------------------------------------------------------
# Shapes: a run of records at once

_MAX_LONG_BYTES = 9  # 63 bits: a varint numpy decodes in uint64 without overflow (10 bytes: loose)
_SHIFTS = np.arange(0, 7 * _MAX_LONG_BYTES, 7, dtype=np.uint64)


class _Unshaped(Exception):
    """A record that no shape can describe (a long of 10 bytes); it is read loosely."""


def _varint(n: int) -> bytes:
    """Avro's zig-zag varint, as fastavro writes it (the shortest form)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


Loc = tuple[int, int]  # (offset in the record, width in bytes) of a string or long hole


class _Pattern:
    """One record's bytes as a regex: literal where every record of the shape repeats them (string
    lengths, union branches, map counts and keys), a fixed-width hole for each value, and where
    each hole is. Written alongside the encoding fastavro produces; a record encoded otherwise
    (blocks with byte sizes, padded varints) is simply not matched and is read loosely."""

    __slots__ = ("_parts", "size", "doubles", "first")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0
        self.doubles: list[int] = []  # offsets of the double holes, in record order
        self.first = -1  # the first byte of every record of the shape (records begin with a length)

    def regex(self) -> bytes:
        return b"".join(self._parts)

    def double_bytes(self) -> IntArray:
        """The byte offsets of every double hole, eight per double: gather them, view as doubles."""
        return (np.array(self.doubles, dtype=np.int64)[:, None] + np.arange(8)).ravel()

    def literal(self, raw: bytes) -> None:
        if not self.size and raw:
            self.first = raw[0]
        self._parts.append(re.escape(raw))
        self.size += len(raw)

    def _hole(self, width: int, regex: bytes) -> int:
        offset = self.size
        self._parts.append(regex)
        self.size += width
        return offset

    def branch(self, index: int) -> None:
        self.literal(_varint(index))

    def key(self, name: str) -> None:
        raw = name.encode()
        self.literal(_varint(len(raw)) + raw)

    def text(self, value: str) -> Loc:
        raw = value.encode()
        self.literal(_varint(len(raw)))
        return self._hole(len(raw), b".{%d}" % len(raw)), len(raw)

    def long(self, value: int) -> Loc:
        width = len(_varint(value))
        if width > _MAX_LONG_BYTES:
            raise _Unshaped(f"a long of {width} bytes")
        return self._hole(width, rb"[\x80-\xff]{%d}[\x00-\x7f]" % (width - 1)), width

    def double(self) -> int:
        """A double hole; returns its column in the record's matrix of doubles."""
        self.doubles.append(self._hole(8, b".{8}"))
        return len(self.doubles) - 1

    def optional_double(self, value: float | None) -> int | None:
        self.branch(0 if value is None else 1)
        return None if value is None else self.double()

    def value(self, value: object, first_branch: int) -> tuple[int, Any]:
        """A value of the union ["boolean", "long", "double", "string"] whose first branch has
        index `first_branch`; returns its kind (0-3, the branch in that order) and hole."""
        if isinstance(value, bool):
            self.branch(first_branch)
            return 0, self._hole(1, b"[\x00\x01]")
        if isinstance(value, int):
            self.branch(first_branch + 1)
            return 1, self.long(value)
        if isinstance(value, float):
            self.branch(first_branch + 2)
            return 2, self.double()
        self.branch(first_branch + 3)
        return 3, self.text(value)  # type: ignore[arg-type]

    def map_of(self, value: Mapping[str, Any], hole: Callable[[Any], Any]) -> list[tuple[str, Any]]:
        """A map in one block (what fastavro writes): count, keys and values, the final 0."""
        if value:
            self.literal(_varint(len(value)))
        holes = []
        for name, v in value.items():
            self.key(name)
            holes.append((name, hole(v)))
        self.literal(b"\x00")
        return holes


def _features_pattern(p: _Pattern, features: Mapping[str, FeatureValue]) -> list[tuple[str, tuple[int, Any]]]:
    """The features map; each value a (kind, hole) as _Pattern.value gives (2 double, 3 string)."""

    def value(v: FeatureValue) -> tuple[int, Any]:
        p.branch(1 if isinstance(v, str) else 0)  # the values' union is ["double", "string"]
        return (3, p.text(v)) if isinstance(v, str) else (2, p.double())

    return p.map_of(features, value)


def _texts(rows: ByteRows, loc: Loc) -> list[str]:
    """A string column: the same `width` bytes at `offset` of every record."""
    offset, width = loc
    n = len(rows)
    if width == 0:
        return [""] * n
    block = rows[:, offset : offset + width]
    if n > 1 and block[0].tobytes() == block[-1].tobytes() and (block == block[0]).all():
        return [block[0].tobytes().decode()] * n  # one model, often one version: decode once
    raw = block.tobytes()
    if raw.isascii():  # then every character is one byte: decode once, cut the str
        text = raw.decode("ascii")
        if width == 1:  # a version "1" / "2": list() cuts in C
            return list(text)
        return [text[i : i + width] for i in range(0, n * width, width)]
    return [raw[i : i + width].decode() for i in range(0, n * width, width)]


def _longs(rows: ByteRows, loc: Loc) -> IntArray:
    """A long column: varints of `width` bytes at `offset`, decoded in uint64 (at most 63 bits)."""
    offset, width = loc
    groups = rows[:, offset : offset + width].astype(np.uint64) & np.uint64(0x7F)
    n = (groups << _SHIFTS[:width]).sum(axis=1, dtype=np.uint64)
    return (n >> np.uint64(1)).astype(np.int64) ^ -(n & np.uint64(1)).astype(np.int64)


def _values(rows: ByteRows, doubles: FloatArray, kind: int, hole: Any) -> list[Any]:
    """A column of the union ["boolean", "long", "double", "string"] of one branch (`kind`)."""
    if kind == 0:
        return (rows[:, hole] != 0).tolist()
    if kind == 1:
        return _longs(rows, hole).tolist()
    if kind == 2:
        return doubles[:, hole].tolist()
    return _texts(rows, hole)


def _maps(n: int, holes: list[tuple[str, Any]], column: Callable[[Any], list[Any]]) -> list[Any]:
    if not holes:
        return [{} for _ in range(n)]
    names = [name for name, _ in holes]
    return [dict(zip(names, values)) for values in zip(*(column(hole) for _, hole in holes))]


R = TypeVar("R")


def _not_compiled(buf: bytes, pos: int) -> re.Match[bytes]:
    raise RuntimeError("a shape is used before it is compiled")


class _Shape(Generic[R]):
    """The layout of records of one shape. `key` (its regex) identifies it; `compile()` makes
    `run(buf, pos)`, which matches as many consecutive records of the shape as follow, and
    `read(rows)` turns their bytes (one record per row) into columns."""

    __slots__ = ("key", "size", "first", "run", "_double_bytes")

    def __init__(self, pattern: _Pattern) -> None:
        self.key = pattern.regex()
        self.size = pattern.size
        self.first = pattern.first
        self._double_bytes = pattern.double_bytes()
        self.run: Callable[[bytes, int], re.Match[bytes]] = _not_compiled

    def compile(self) -> None:
        # Possessive (*+): a run never needs to give records back, and sre then keeps no
        # backtracking state per record (~20% faster). Zero records match too: never None.
        self.run = cast(Callable[[bytes, int], "re.Match[bytes]"],
                        re.compile(b"(?:" + self.key + b")*+", re.DOTALL).match)

    def doubles(self, rows: ByteRows) -> FloatArray:
        """Every double of every record, one row per record, in record order: one gather."""
        if not len(self._double_bytes):
            return np.empty((len(rows), 0), dtype=np.float64)
        return rows.take(self._double_bytes, axis=1).view(_DOUBLE).astype(np.float64, copy=False)

    def read(self, rows: ByteRows) -> R:
        raise NotImplementedError


class _PredictionShape(_Shape[PredictionRead]):
    __slots__ = ("_texts", "_timestamp", "_score", "_scores", "_value", "_label", "_latency", "_features",
                 "_segment", "_error")

    def __init__(self, args: tuple[Any, ...]) -> None:
        prediction_id, model, version, timestamp, score, scores, value, label, latency, features, segment, error = args
        p = _Pattern()
        self._texts = (p.text(prediction_id), p.text(model), p.text(version))
        self._timestamp = p.long(timestamp)
        self._score = p.optional_double(score)
        p.branch(0 if scores is None else 1)
        self._scores = None if scores is None else p.map_of(scores, lambda _: p.double())
        self._value = p.optional_double(value)
        if label is None:
            p.branch(0)
        self._label = None if label is None else p.value(label, 1)
        self._latency = p.optional_double(latency)
        if type(features) is tuple:  # the loose reader's layout hit: every value a double
            features = dict.fromkeys(features[0].names, 0.0)
        p.branch(0 if features is None else 1)
        self._features = None if features is None else _features_pattern(p, features)
        p.branch(0 if segment is None else 1)
        self._segment = None if segment is None else p.map_of(segment, p.text)
        p.branch(0 if error is None else 1)
        self._error = None if error is None else p.text(error)
        super().__init__(p)

    def read(self, rows: ByteRows) -> PredictionRead:
        n = len(rows)
        doubles = self.doubles(rows)

        def optional_double(column: int | None) -> FloatArray:
            return np.full(n, np.nan) if column is None else np.ascontiguousarray(doubles[:, column])

        def value(hole: tuple[int, Any]) -> list[Any]:
            return _values(rows, doubles, *hole)

        ids, models, versions = (_texts(rows, loc) for loc in self._texts)
        columns = PredictionColumns(
            ids, models, versions, _longs(rows, self._timestamp),
            optional_double(self._score), optional_double(self._value), optional_double(self._latency),
            scores=None if self._scores is None else _maps(n, self._scores, lambda j: doubles[:, j].tolist()),
            predicted_label=None if self._label is None else value(self._label),
            segment=None if self._segment is None else _maps(n, self._segment, lambda loc: _texts(rows, loc)),
            error=None if self._error is None else cast(list[str | None], _texts(rows, self._error)),
            features=self._feature_columns(n, doubles, value),
        )
        return PredictionRead(columns, np.full(n, self._score is not None), np.full(n, self._value is not None),
                              np.full(n, self._latency is not None))

    def _feature_columns(self, n: int, doubles: FloatArray,
                         value: Callable[[tuple[int, Any]], list[Any]]) -> FeatureColumns:
        holes = self._features
        if holes is None:
            return FeatureColumns()
        if holes and all(kind == 2 for _, (kind, _) in holes):
            # All doubles: their columns follow each other in `doubles`, so the matrix is a slice.
            first = holes[0][1][1]
            matrix = np.ascontiguousarray(doubles[:, first : first + len(holes)])
            return FeatureColumns(tuple(name for name, _ in holes), np.arange(n, dtype=np.int64), matrix)
        return FeatureColumns(other=dict(enumerate(_maps(n, holes, value))))


class _LabelShape(_Shape[LabelColumns]):
    __slots__ = ("_id", "_model", "_timestamp", "_label")

    def __init__(self, args: tuple[Any, ...]) -> None:
        prediction_id, model, timestamp, label = args
        p = _Pattern()
        self._id, self._model = p.text(prediction_id), p.text(model)
        self._timestamp = p.long(timestamp)
        self._label = p.value(label, 0)
        super().__init__(p)

    def read(self, rows: ByteRows) -> LabelColumns:
        return LabelColumns(_texts(rows, self._id), _texts(rows, self._model), _longs(rows, self._timestamp),
                            _values(rows, self.doubles(rows), *self._label))


class _Shapes:
    """Compiled shapes by regex, shared by all batches: compiling one costs as much as reading
    hundreds of records, and a stream repeats a few shapes (one per model version and segment,
    typically). A shape is compiled the second time it is seen, so shapes that never repeat cost no
    compilation."""

    _MAX = 512  # beyond that the cache starts over: shapes drift (ids grow a digit), old ones go

    def __init__(self) -> None:
        # Keyed by the shape's class too: a prediction's and a label's regex could never be the same
        # bytes, but a mix-up would hand out columns of the wrong type.
        self._compiled: dict[tuple[type, bytes], _Shape[Any]] = {}
        self._seen: set[tuple[type, bytes]] = set()
        # The shapes the last batches of each kind were read with, newest first: the next batch
        # tries its first record against them, instead of reading it loosely and building its
        # pattern (~35 us a message of predictions with ten features) to find the same shape.
        self._last: dict[Callable[..., Any], tuple[_Shape[Any], ...]] = {}

    def last(self, kind: Callable[..., Any]) -> tuple[_Shape[Any], ...]:
        return self._last.get(kind, ())

    def used(self, kind: Callable[..., Any], shapes: Iterable[_Shape[Any]]) -> None:
        """Remember the shapes a batch was read with, ahead of older ones (a few per kind)."""
        self._last[kind] = tuple(dict.fromkeys([*shapes, *self.last(kind)]))[:_LAST]

    def find(self, shape: _Shape[R], may_compile: bool) -> _Shape[R] | None:
        """The compiled shape of this key, or `shape` compiled if the key was seen before."""
        key = (type(shape), shape.key)
        known = self._compiled.get(key)
        if known is not None:
            return known
        if not may_compile:
            return None
        if key not in self._seen:
            if len(self._seen) >= self._MAX:
                self._seen.clear()
            self._seen.add(key)
            return None
        # Kept even if it does not match the record it came from (one encoded unlike fastavro does
        # it): it still describes the records that are, and compiling it again would cost each time.
        shape.compile()
        if len(self._compiled) >= self._MAX:
            self._compiled.clear()
        self._compiled[key] = shape
        return shape


_SHAPES = _Shapes()
# Records per batch whose shape is looked up (building a pattern costs ~20 us): after that, a record
# of none of the shapes found so far is read loosely without asking.
_LEARN = 8
_COMPILE = 2  # shapes compiled per batch at most, however new shapes keep coming: each is costly
_LAST = 4  # shapes of earlier batches tried on a batch's records before any is read loosely
_MIN_PART = 16  # records of one shape in a batch of several parts, below which they are read loosely


@dataclass(frozen=True)
class _Record(Generic[R]):
    """How to read records of one schema: loosely, as a shape, and many loose ones as columns."""

    read_one: Callable[[bytes, int], tuple[tuple[Any, ...], int]]
    shape: Callable[[tuple[Any, ...]], _Shape[R]]
    loose: Callable[[list[tuple[Any, ...]], bytes], R]


_PREDICTION: _Record[PredictionRead] = _Record(_read_prediction, _PredictionShape, _loose_predictions)
_LABEL: _Record[LabelColumns] = _Record(_read_label, _LabelShape, _loose_labels)


def _learn(record: _Record[R], args: tuple[Any, ...], may_compile: bool) -> tuple[_Shape[R] | None, bool]:
    """The compiled shape of a record just read loosely, if it has one worth compiling yet, and
    whether it was compiled now."""
    try:
        shape = record.shape(args)
    except _Unshaped:
        return None, False
    found = _SHAPES.find(shape, may_compile)
    return found, found is shape


def _read_batch(buf: bytes, pos: int, record: _Record[R], use_shapes: bool) -> R:
    """The records of the Avro array at `pos` (a batch body), which must end the buffer."""
    # This batch's shapes by their first byte (the id's length): a record is tried only against
    # the shapes it can have, so one of no known shape costs a dict lookup, not a regex per shape.
    recent: dict[int, list[_Shape[R]]] = {}
    if use_shapes:
        for shape in _SHAPES.last(record.shape):
            recent.setdefault(shape.first, []).append(shape)
    runs: dict[_Shape[R], list[tuple[int, int, int]]] = {}  # shape -> (first record, position, count)
    loose_rows: list[int] = []
    loose: list[tuple[Any, ...]] = []
    learn = _LEARN if use_shapes else 0
    compiles = _COMPILE
    row = 0
    while True:
        count, pos = _long_at(buf, pos)
        if count == 0:
            break
        if count < 0:  # a block that also carries its size in bytes
            count = -count
            _, pos = _long_at(buf, pos)
        while count:
            found: _Shape[R] | None = None
            k = 0
            for shape in recent.get(buf[pos], ()):
                k = (shape.run(buf, pos).end() - pos) // shape.size  # records of this shape from pos on
                if k:
                    found = shape
                    break
            if found is None:
                args, end = record.read_one(buf, pos)
                if learn:
                    learn -= 1
                    found, compiled = _learn(record, args, compiles > 0)
                    compiles -= compiled
                # The run includes the record just read: its shape matches it unless the record
                # was encoded unlike fastavro does it (padded varints, blocked maps).
                k = 0 if found is None else (found.run(buf, pos).end() - pos) // found.size
                if found is None or not k:
                    loose_rows.append(row)
                    loose.append(args)
                    row += 1
                    count -= 1
                    pos = end
                    continue
                recent.setdefault(found.first, []).append(found)
            k = min(k, count)  # a run may go on into the bytes after the block
            runs.setdefault(found, []).append((row, pos, k))
            row += k
            count -= k
            pos += k * found.size
    if pos != len(buf):
        raise ValueError(f"batch ends at byte {pos} of {len(buf)}")
    if runs:
        _SHAPES.used(record.shape, runs)
    if len(runs) + bool(loose) > 1:
        # Reading a shape's records costs ~40 us whatever their number: for a few, reading them
        # loosely again is cheaper (shapes that repeat only a few times in a batch).
        few = [s for s, shape_runs in runs.items() if sum(k for _, _, k in shape_runs) < _MIN_PART]
        for shape in few:
            for first, start, k in runs.pop(shape):
                for j in range(k):
                    loose_rows.append(first + j)
                    loose.append(record.read_one(buf, start + j * shape.size)[0])
        if few:  # back in message order
            order = sorted(range(len(loose_rows)), key=loose_rows.__getitem__)
            loose_rows = [loose_rows[i] for i in order]
            loose = [loose[i] for i in order]
    data = np.frombuffer(buf, np.uint8)
    parts: list[tuple[IntArray, R]] = []
    for shape, shape_runs in runs.items():
        size = shape.size
        if len(shape_runs) == 1:  # the usual batch: its records are one block of bytes
            first, start, k = shape_runs[0]
            rows = data[start : start + k * size].reshape(k, size)
            indices = np.arange(first, first + k, dtype=np.int64)
        else:
            firsts, starts, counts = (np.array(column, dtype=np.int64) for column in zip(*shape_runs))
            run = np.repeat(np.arange(len(counts)), counts)  # the run of each record
            step = np.arange(len(run)) - np.repeat(np.cumsum(counts) - counts, counts)  # its place in the run
            indices = firsts[run] + step
            rows = as_strided(data, (len(data) - size + 1, size), (1, 1), writeable=False)[starts[run] + size * step]
        parts.append((indices, shape.read(rows)))
    if loose or not parts:
        parts.append((np.array(loose_rows, dtype=np.int64), record.loose(loose, buf)))
    return parts[0][1] if len(parts) == 1 else _merge(row, parts)


# ------------------------------------------------------------------------------------------------
# Putting the parts of a batch (runs of shapes, loose records) back in message order


def _merge(n: int, parts: list[tuple[IntArray, Any]]) -> Any:
    """One columns object of n records from parts that each hold the records `indices` (of the same
    columns type: PredictionRead, PredictionColumns or LabelColumns), field by field."""
    cls = type(parts[0][1])
    return cls(**{f.name: _merge_column(n, [(indices, getattr(part, f.name)) for indices, part in parts])
                  for f in dataclasses.fields(cls)})


def _merge_column(n: int, column: list[tuple[IntArray, Any]]) -> Any:
    sample = next((values for _, values in column if values is not None), None)
    if sample is None:
        return None  # an optional column that no part sets
    if isinstance(sample, FeatureColumns):
        return _merge_features(column)
    if dataclasses.is_dataclass(sample):
        return _merge(n, column)
    if isinstance(sample, np.ndarray):
        array = np.empty(n, dtype=sample.dtype)
        for indices, values in column:
            array[indices] = values
        return array
    objects = np.empty(n, dtype=object)  # None where a part has no such column
    for indices, values in column:
        if values is not None:
            objects[indices] = np.fromiter(values, dtype=object, count=len(values))
    return objects.tolist()


def _merge_features(column: list[tuple[IntArray, FeatureColumns]]) -> FeatureColumns:
    """The matrix of the layout with most records; the other layouts' records become maps."""
    main = max((f for _, f in column), key=lambda f: len(f.rows))
    rows: list[IntArray] = []
    matrices: list[FloatArray] = []
    other: dict[int, Mapping[str, FeatureValue]] = {}
    for indices, f in column:
        if len(f.rows) and f.names == main.names:
            rows.append(indices[f.rows])
            matrices.append(f.matrix)
        elif len(f.rows):
            other.update(zip(indices[f.rows].tolist(), (dict(zip(f.names, v)) for v in f.matrix.tolist())))
        other.update((int(indices[i]), m) for i, m in f.other.items())
    if not rows:
        return FeatureColumns(other=other)
    all_rows = np.concatenate(rows)
    order = np.argsort(all_rows, kind="stable")
    return FeatureColumns(main.names, all_rows[order], np.concatenate(matrices)[order], other)


# ------------------------------------------------------------------------------------------------
# Entry points


def read_prediction_batch(payload: bytes, pos: int, *, shapes: bool = True) -> PredictionRead:
    """Every record of the PredictionBatch body at `pos` (after the single-object header).

    `shapes=False` reads every record field by field (tests compare both paths). Raises on
    anything unexpected; see the module docstring.
    """
    return _read_batch(payload, pos, _PREDICTION, shapes)


def read_label_batch(payload: bytes, pos: int, *, shapes: bool = True) -> LabelColumns:
    """Every record of the LabelBatch body at `pos`, unchecked; as read_prediction_batch."""
    return _read_batch(payload, pos, _LABEL, shapes)
