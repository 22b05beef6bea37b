"""A mergeable quantile sketch for latencies with a bounded relative error (the DDSketch idea).

Values go into logarithmic buckets of ratio gamma = (1 + a) / (1 - a); any quantile read back is
within a relative error `a` of a value of the true rank. Merging adds bucket counts, so the sketch
of two partitions or two windows is exact with respect to their union. Counts are signed, so
`add_many` with weight -1 takes values back out exactly as they went in.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

# Latencies at or below this are counted as zero: a log bucket for them would be meaningless.
_MIN_POSITIVE = 1e-9


class LatencySketch:
    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, value: float) -> None:
        self.add_many(np.array([value], dtype=np.float64))

    def add_many(self, values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64] | None = None) -> None:
        """Add every value (weight +1) or take it back out (weight -1), vectorised.

        `add` goes through here too: numpy's log and the math module's may differ in the last bit,
        and a value on a bucket edge must land in the same bucket whichever way it came in.
        """
        values = np.asarray(values, dtype=np.float64)
        w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != values.shape or values.ndim != 1:
            raise ValueError("values and weights must be one-dimensional and of the same length")
        if np.isnan(values).any() or np.isinf(values).any():
            raise ValueError("latencies must be finite numbers (drop unreported ones before adding)")
        if not np.array_equal(w, np.round(w)):
            raise ValueError("weights must be whole numbers (+1 adds a value, -1 removes it)")
        zero = values <= _MIN_POSITIVE
        positive = values[~zero]
        indices = np.ceil(np.log(positive) / self._log_gamma).astype(np.int64)
        keys, inverse = np.unique(indices, return_inverse=True)
        sums = np.bincount(inverse, weights=w[~zero], minlength=len(keys))
        for index, n in zip(keys.tolist(), sums.astype(np.int64).tolist()):
            total = self._buckets.get(index, 0) + n
            if total:
                self._buckets[index] = total
            else:
                self._buckets.pop(index, None)  # an emptied bucket must vanish, or snapshots differ
        self._zeros += int(w[zero].sum())
        self._count += int(w.sum())

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1), or None for an empty sketch."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        if self._count <= 0:  # empty, or holding only removals
            return None
        rank = q * (self._count - 1)
        seen = self._zeros
        if rank < seen:
            return 0.0
        index = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if rank < seen:
                break
        # The bucket covers (gamma^(i-1), gamma^i]; this point is within `a` of both ends. (Falling
        # through happens only for a sketch holding removals it never saw added.)
        return 2.0 * self._gamma**index / (self._gamma + 1.0)

    def _bucket(self, value: float) -> int | None:
        """The bucket index `add_many` gives `value` (the same numpy expression), None for a zero."""
        if value <= _MIN_POSITIVE:
            return None
        return int(np.ceil(np.log(np.array([value], dtype=np.float64)) / self._log_gamma)[0])

    def bucket_upper_edge(self, value: float) -> float:
        """The upper edge of the bucket `value` falls in (for a value counted as zero, 1e-9: the zero
        bucket's)."""
        index = self._bucket(value)
        return _MIN_POSITIVE if index is None else float(self._gamma**index)

    def count_above(self, value: float) -> int:
        """How many values lie in buckets above `value`'s bucket: exactly the values greater than
        bucket_upper_edge(value), with no sketch error (a bucket is counted whole or not at all)."""
        index = self._bucket(value)
        return sum(n for i, n in self._buckets.items() if index is None or i > index)

    def merge(self, other: LatencySketch) -> LatencySketch:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches of different relative accuracy")
        merged = LatencySketch(self.relative_accuracy)
        merged._buckets = dict(self._buckets)
        for index, n in other._buckets.items():
            total = merged._buckets.get(index, 0) + n
            if total:
                merged._buckets[index] = total
            else:
                merged._buckets.pop(index, None)
        merged._zeros = self._zeros + other._zeros
        merged._count = self._count + other._count
        return merged

    def snapshot(self) -> dict[str, Any]:
        return {
            "a": self.relative_accuracy,
            "zeros": self._zeros,
            "buckets": [[i, n] for i, n in sorted(self._buckets.items())],
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> LatencySketch:
        sketch = cls(float(data["a"]))
        sketch._zeros = int(data["zeros"])
        sketch._buckets = {int(i): int(n) for i, n in data["buckets"]}
        sketch._count = sketch._zeros + sum(sketch._buckets.values())
        return sketch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencySketch) and self.snapshot() == other.snapshot()
