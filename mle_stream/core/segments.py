"""Segments: the (dimension, value) slices of a model version that get windows of their own
(`segments: {dimensions: [...], max_values: N}` in a topology). Each dimension keeps at most
`max_values` distinct values, in order of arrival; values past the cap share one bucket, OTHER,
so that a source sending a new value per record cannot grow the state without bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mle_stream.core.columns import IntArray
from mle_stream.core.windows import Segment

OTHER = "__other__"  # the segment value that stands for every value past the cardinality cap
WHOLE: tuple[Segment, ...] = (None,)  # the segments of a record without segment values


class SegmentCap:
    """The values seen per segment dimension, capped at `max_values` each."""

    def __init__(self, dimensions: Iterable[str], max_values: int) -> None:
        self.max_values = max_values
        self._seen: dict[str, set[str]] = {d: set() for d in dimensions}

    def of(self, given: Sequence[Mapping[str, str] | None] | None,
           rows: IntArray) -> list[tuple[Segment, ...]] | None:
        """Per row of `given` (the records' segment maps), the whole version followed by
        (dimension, value) for each configured dimension the record names, a value past its
        dimension's cap counted as OTHER; None when no row has segments to count."""
        if not self._seen or given is None:
            return None
        out: list[tuple[Segment, ...]] = []
        cap = self.max_values
        for i in rows.tolist():
            values = given[i]
            if not values:
                out.append(WHOLE)
                continue
            segs: list[Segment] = [None]
            for dimension, seen in self._seen.items():
                value = values.get(dimension)
                if value is None:
                    continue
                if value not in seen:
                    if len(seen) >= cap:
                        value = OTHER
                    else:
                        seen.add(value)
                segs.append((dimension, value))
            out.append(tuple(segs))
        return out

    def snapshot(self) -> dict[str, list[str]]:
        return {d: sorted(v) for d, v in self._seen.items()}

    def restore(self, data: Mapping[str, Iterable[str]]) -> None:
        """The values a snapshot had seen (the cap is the topology's)."""
        self._seen = {d: set(v) for d, v in data.items()}


def segments_from_json(values: list[Any]) -> list[tuple[Segment, ...]]:
    """Segment tuples back from JSON data (lists), a whole-version record's as WHOLE itself."""
    return [WHOLE if len(s) == 1 else tuple(None if d is None else (d[0], d[1]) for d in s) for s in values]


__all__ = ["OTHER", "WHOLE", "SegmentCap", "segments_from_json"]
