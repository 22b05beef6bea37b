"""A mergeable quantile sketch for latencies with a bounded relative error (the DDSketch idea).

Values go into logarithmic buckets of ratio gamma = (1 + a) / (1 - a); any quantile read back is
within a relative error `a` of a value of the true rank. Merging adds bucket counts, so the sketch
of two partitions or two windows is exact with respect to their union.
"""

from __future__ import annotations

import math
from typing import Any

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
        if value <= _MIN_POSITIVE:
            self._zeros += 1
        else:
            index = math.ceil(math.log(value) / self._log_gamma)
            self._buckets[index] = self._buckets.get(index, 0) + 1
        self._count += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1), or None for an empty sketch."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        if self._count == 0:
            return None
        rank = q * (self._count - 1)
        seen = self._zeros
        if rank < seen:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if rank < seen:
                # The bucket covers (gamma^(i-1), gamma^i]; this point is within `a` of both ends.
                return 2.0 * self._gamma**index / (self._gamma + 1.0)
        raise AssertionError("unreachable: rank below count")

    def merge(self, other: "LatencySketch") -> "LatencySketch":
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches of different relative accuracy")
        merged = LatencySketch(self.relative_accuracy)
        merged._buckets = dict(self._buckets)
        for index, n in other._buckets.items():
            merged._buckets[index] = merged._buckets.get(index, 0) + n
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
    def restore(cls, data: dict[str, Any]) -> "LatencySketch":
        sketch = cls(float(data["a"]))
        sketch._zeros = int(data["zeros"])
        sketch._buckets = {int(i): int(n) for i, n in data["buckets"]}
        sketch._count = sketch._zeros + sum(sketch._buckets.values())
        return sketch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencySketch) and self.snapshot() == other.snapshot()
