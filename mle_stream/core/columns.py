"""Predictions and labels as columns: what the hot path decodes into and the evaluator reads.

A Kafka message carries hundreds of records (the stream pays per message),
so the worker never builds one object per record: the codec reads a batch straight into numpy
arrays and lists, checks the contract on whole columns, and the evaluator groups and joins them
as arrays. The dataclasses in events.py stay the form for the edges (JSON, replay, dead letters):
`record(i)` builds one when a single record has to be shown, and `from_records` turns a list of
them into columns, so there is one evaluation path.

Every row of a columns object satisfies the contract of events.Prediction / events.Label; the
decoder puts rows that do not into its errors instead. An absent optional double is NaN: a
present score, value or latency is finite by contract, so NaN is never a real value there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from mle_stream.core.events import FeatureValue, Label, LabelValue, Prediction

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")


@dataclass(eq=False, slots=True)
class FeatureColumns:
    """The features of a batch: the numeric layout most records share as a matrix, the rest as
    maps. `names` are the matrix's columns; `rows[j]` is the record that matrix row j belongs to;
    `other` maps a record index to its features when they did not fit the layout (other names, a
    string value). A record with no features appears in neither."""

    names: tuple[str, ...] = ()
    rows: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    matrix: FloatArray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float64))
    other: dict[int, Mapping[str, FeatureValue]] = field(default_factory=dict)

    def get(self, index: int) -> Mapping[str, FeatureValue] | None:
        if index in self.other:
            return self.other[index]
        j = int(np.searchsorted(self.rows, index))
        if j < len(self.rows) and self.rows[j] == index:
            return dict(zip(self.names, self.matrix[j].tolist()))
        return None

    def maps(self, n: int) -> list[Mapping[str, FeatureValue] | None]:
        """`get(i)` for every record 0..n-1 at once (a search per record would cost more than the map)."""
        out: list[Mapping[str, FeatureValue] | None] = [None] * n
        names = self.names
        for j, values in zip(self.rows.tolist(), self.matrix.tolist()):
            out[j] = dict(zip(names, values))
        for i, m in self.other.items():
            out[i] = m
        return out

    def select(self, indices: IntArray) -> FeatureColumns:
        """The features of the given records (sorted indices), renumbered 0..len(indices)-1."""
        keep = np.isin(self.rows, indices)
        rows = np.searchsorted(indices, self.rows[keep]).astype(np.int64)
        position = {int(i): k for k, i in enumerate(indices.tolist())} if self.other else {}
        other = {position[i]: f for i, f in self.other.items() if i in position}
        return FeatureColumns(self.names, rows, self.matrix[keep], other)

    @classmethod
    def concat(cls, parts: Sequence[tuple[FeatureColumns, int]]) -> FeatureColumns:
        """The features of consecutive batches (each with its number of records) as one. A batch
        whose numeric layout differs from the first one's keeps its features as maps."""
        with_matrix = [f for f, _ in parts if len(f.rows)]
        names = with_matrix[0].names if with_matrix else ()
        rows: list[IntArray] = []
        matrices: list[FloatArray] = []
        other: dict[int, Mapping[str, FeatureValue]] = {}
        offset = 0
        for f, n in parts:
            if len(f.rows) and f.names == names:
                rows.append(f.rows + offset)
                matrices.append(f.matrix)
            else:
                for j, values in zip(f.rows.tolist(), f.matrix.tolist()):
                    other[j + offset] = dict(zip(f.names, values))
            other.update((i + offset, m) for i, m in f.other.items())
            offset += n
        if not rows:
            return cls(other=other)
        return cls(names, np.concatenate(rows), np.concatenate(matrices), other)

    @classmethod
    def from_maps(cls, maps: Sequence[Mapping[str, FeatureValue] | None]) -> FeatureColumns:
        first = next((m for m in maps if m), None)
        if first is None or any(type(v) is str for v in first.values()):
            return cls(other={i: m for i, m in enumerate(maps) if m is not None})
        names = tuple(first)
        rows: list[int] = []
        values: list[list[float]] = []
        other: dict[int, Mapping[str, FeatureValue]] = {}
        for i, m in enumerate(maps):
            if m is None:
                continue
            if tuple(m) == names and all(type(v) is float or type(v) is int for v in m.values()):
                rows.append(i)
                values.append([float(v) for v in m.values()])
            else:
                other[i] = m
        matrix = np.array(values, dtype=np.float64).reshape(len(rows), len(names))
        return cls(names, np.array(rows, dtype=np.int64), matrix, other)


def optional_column(values: list[Any]) -> list[Any] | None:
    """A column of an optional field, or None when no row sets it (the usual case)."""
    return values if any(v is not None for v in values) else None


def _pick(values: list[Any] | None, indices: list[int]) -> list[Any] | None:
    return None if values is None else optional_column([values[i] for i in indices])


def _chain(lists: Iterable[list[T]]) -> list[T]:
    """The lists one after the other: extended in C, ~20x faster than a nested comprehension."""
    out: list[T] = []
    for part in lists:
        out += part
    return out


def _joined(columns: Sequence[list[Any] | None], lengths: Sequence[int]) -> list[Any] | None:
    """Optional columns of consecutive batches as one (None where no batch sets it)."""
    if all(c is None for c in columns):
        return None
    out: list[Any] = []
    for c, n in zip(columns, lengths):
        out.extend([None] * n if c is None else c)
    return out


def nan_if_none(values: Sequence[float | None]) -> FloatArray:
    """A column of an optional number: NaN where a row has none."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _none_if_nan(value: float) -> float | None:
    return None if value != value else value


@dataclass(eq=False, slots=True)
class PredictionColumns:
    prediction_id: list[str]
    model: list[str]
    version: list[str]
    timestamp: IntArray
    score: FloatArray
    value: FloatArray
    latency_ms: FloatArray
    scores: list[Mapping[str, float] | None] | None = None  # None: no row has scores
    predicted_label: list[LabelValue | None] | None = None
    segment: list[Mapping[str, str] | None] | None = None
    error: list[str | None] | None = None
    features: FeatureColumns = field(default_factory=FeatureColumns)

    def __len__(self) -> int:
        return len(self.prediction_id)

    def record(self, i: int) -> Prediction:
        return Prediction(
            prediction_id=self.prediction_id[i], model=self.model[i], version=self.version[i],
            timestamp=int(self.timestamp[i]), score=_none_if_nan(float(self.score[i])),
            scores=None if self.scores is None else self.scores[i], value=_none_if_nan(float(self.value[i])),
            predicted_label=None if self.predicted_label is None else self.predicted_label[i],
            latency_ms=_none_if_nan(float(self.latency_ms[i])), features=self.features.get(i),
            segment=None if self.segment is None else self.segment[i],
            error=None if self.error is None else self.error[i],
        )

    def records(self) -> list[Prediction]:
        """[record(i) for every i], column by column: numpy scalars cost ~0.1 us each to index."""
        n = len(self)
        absent = [None] * n

        def optional(values: FloatArray) -> list[float | None]:
            return list(map(_none_if_nan, values.tolist()))

        return list(map(
            Prediction, self.prediction_id, self.model, self.version, self.timestamp.tolist(),
            optional(self.score), absent if self.scores is None else self.scores, optional(self.value),
            absent if self.predicted_label is None else self.predicted_label, optional(self.latency_ms),
            self.features.maps(n), absent if self.segment is None else self.segment,
            absent if self.error is None else self.error,
        ))

    def select(self, indices: IntArray) -> PredictionColumns:
        """The given rows (sorted indices), in that order."""
        idx = indices.tolist()
        return PredictionColumns(
            [self.prediction_id[i] for i in idx], [self.model[i] for i in idx], [self.version[i] for i in idx],
            self.timestamp[indices], self.score[indices], self.value[indices], self.latency_ms[indices],
            _pick(self.scores, idx), _pick(self.predicted_label, idx), _pick(self.segment, idx),
            _pick(self.error, idx), self.features.select(indices),
        )

    @classmethod
    def concat(cls, parts: Sequence[PredictionColumns]) -> PredictionColumns:
        """Consecutive batches as one, rows in order."""
        if len(parts) == 1:
            return parts[0]
        lengths = [len(p) for p in parts]
        return cls(
            _chain(p.prediction_id for p in parts), _chain(p.model for p in parts),
            _chain(p.version for p in parts), np.concatenate([p.timestamp for p in parts]),
            np.concatenate([p.score for p in parts]), np.concatenate([p.value for p in parts]),
            np.concatenate([p.latency_ms for p in parts]), _joined([p.scores for p in parts], lengths),
            _joined([p.predicted_label for p in parts], lengths), _joined([p.segment for p in parts], lengths),
            _joined([p.error for p in parts], lengths),
            FeatureColumns.concat([(p.features, n) for p, n in zip(parts, lengths)]),
        )

    @classmethod
    def from_records(cls, records: Sequence[Prediction]) -> PredictionColumns:
        return cls(
            [p.prediction_id for p in records], [p.model for p in records], [p.version for p in records],
            np.array([p.timestamp for p in records], dtype=np.int64),
            nan_if_none([p.score for p in records]), nan_if_none([p.value for p in records]),
            nan_if_none([p.latency_ms for p in records]),
            optional_column([p.scores for p in records]), optional_column([p.predicted_label for p in records]),
            optional_column([p.segment for p in records]), optional_column([p.error for p in records]),
            FeatureColumns.from_maps([p.features for p in records]),
        )


@dataclass(eq=False, slots=True)
class LabelColumns:
    prediction_id: list[str]
    model: list[str]
    timestamp: IntArray
    label: list[LabelValue]

    def __len__(self) -> int:
        return len(self.prediction_id)

    def record(self, i: int) -> Label:
        return Label(self.prediction_id[i], self.model[i], int(self.timestamp[i]), self.label[i])

    def records(self) -> list[Label]:
        return list(map(Label, self.prediction_id, self.model, self.timestamp.tolist(), self.label))

    def select(self, indices: IntArray) -> LabelColumns:
        idx = indices.tolist()
        return LabelColumns([self.prediction_id[i] for i in idx], [self.model[i] for i in idx],
                            self.timestamp[indices], [self.label[i] for i in idx])

    @classmethod
    def concat(cls, parts: Sequence[LabelColumns]) -> LabelColumns:
        """Consecutive batches as one, rows in order."""
        if len(parts) == 1:
            return parts[0]
        return cls(_chain(p.prediction_id for p in parts), _chain(p.model for p in parts),
                   np.concatenate([p.timestamp for p in parts]), _chain(p.label for p in parts))

    @classmethod
    def from_records(cls, records: Sequence[Label]) -> LabelColumns:
        return cls([r.prediction_id for r in records], [r.model for r in records],
                   np.array([r.timestamp for r in records], dtype=np.int64), [r.label for r in records])


def group_rows(keys: list[str]) -> dict[str, IntArray]:
    """Row indices per distinct key (a message is nearly always one model: one key, no copy)."""
    if not keys:
        return {}
    if keys.count(keys[0]) == len(keys):  # list.count runs in C
        return {keys[0]: np.arange(len(keys), dtype=np.int64)}
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return {k: np.array(v, dtype=np.int64) for k, v in groups.items()}


__all__ = ["FeatureColumns", "LabelColumns", "PredictionColumns", "group_rows", "nan_if_none", "optional_column"]
