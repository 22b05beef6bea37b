"""Exact sums of float64 values: a window's metrics do not depend on how its rows were grouped.

A metric state adds a batch's values to its sums, and a window is the merge of many batches. With
float sums the result depends on the grouping: a worker restarted mid-stream, a rebalance or the
replay groups the same rows into other batches, and the last bits of log_loss or mean_score
differ. Windows must equal an uninterrupted run's *exactly*, so the sums are kept as integers
instead.

Every finite double is an integer multiple of 2**-1074 (the smallest subnormal). A sum is held as
that integer, a Python int: adding and subtracting (a correction takes a row back out) is exact and
associative, and reading it back (`to_float`) is correctly rounded, since Python's int / int true
division is. So a state equals the merge of any split of its rows, bit for bit, and a row added and
later taken back out leaves no trace.

How a batch is summed without a Python loop per value (the idea of Rump, Ogita and Oishi's
error-free splitting): each pass rounds every value to a multiple of 2**g, with g 26 bits below the
largest value's top bit, by adding and taking back 1.5 * 2**(g + 52); what is left (exactly the
value minus that part) goes to the next pass, 26 bits further down, until nothing is left. Every
part of a pass is a multiple of 2**g below 2**(g + 27), so a sum of fewer than 2**26 of them (a plain
numpy sum, or bincount per group) is exact in float64, and becomes an int. Values within a factor
of 2**20 of each other take 3 passes. The cost is a few numpy passes per batch: small per row for
whole worker batches, larger for small ones, where numpy's fixed cost per call dominates (the
figures: docs/performance-history.md).

Snapshots store a sum as [m, e] (value m * 2**e, m odd or 0): the integer itself has ~1074 trailing
zero bits for values near 1, which JSON would spell out as ~330 digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

SCALE_BITS = 1074  # a sum s stands for s * 2**-1074
_PART_BITS = 26  # each pass takes the next 26 bits of every value
_MAX_VALUES = 1 << 26  # per pass: sums of fewer parts than 2**26 stay exact doubles
_SEPARATE_FROM = 8192  # values from which exact_column_sums sums each column in a call of its own
_HUGE = 2.0 ** 940  # from here on 1.5 * 2**(grid + 52) would overflow: such values are scaled down
_HUGE_SCALE = 200  # by 2**-200, exactly (they stay far above the subnormals)

IntArray = npt.NDArray[np.int64]


def exact_sum(values: npt.ArrayLike) -> int:
    """The exact sum of finite float64 values, as an integer count of 2**-1074."""
    return exact_sums(values, None, 1)[0]


def exact_sums(values: npt.ArrayLike, groups: IntArray | None, n_groups: int) -> list[int]:
    """The exact sum of the values of each group 0..n_groups-1 (`groups[i]` is value i's group;
    None puts every value in group 0)."""
    x = np.array(values, dtype=np.float64).ravel()  # a copy: it becomes the remainder below
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64).ravel()
        if groups.shape != x.shape:
            raise ValueError(f"exact_sums: {len(x)} values but {len(groups)} group numbers")
    totals = [0] * n_groups
    if len(x) == 0:
        return totals
    if len(x) > _MAX_VALUES:
        for start in range(0, len(x), _MAX_VALUES):
            piece = exact_sums(x[start:start + _MAX_VALUES],
                               None if groups is None else groups[start:start + _MAX_VALUES],
                               n_groups)
            totals = [a + b for a, b in zip(totals, piece)]
        return totals
    largest = float(np.max(np.abs(x)))
    if not math.isfinite(largest):
        raise ValueError("exact_sums: values must be finite numbers (no NaN or infinity)")
    if largest == 0.0:
        return totals
    if largest >= _HUGE:  # the shifter below would overflow: sum the huge values scaled down, exactly
        huge = np.abs(x) >= _HUGE
        scaled = exact_sums(np.where(huge, np.ldexp(x, -_HUGE_SCALE), 0.0), groups, n_groups)
        rest = exact_sums(np.where(huge, 0.0, x), groups, n_groups)
        return [(a << _HUGE_SCALE) + b for a, b in zip(scaled, rest)]
    grid = max(math.frexp(largest)[1] - _PART_BITS, -SCALE_BITS)  # |x| < 2**(grid + 26)
    part = np.empty_like(x)
    while True:
        # part = x rounded to a multiple of 2**grid (adding and taking back a constant whose last
        # bit is worth 2**grid); x - part is exact, so the parts add up to the values exactly.
        shifter = 1.5 * 2.0 ** (grid + 52)
        np.add(x, shifter, out=part)
        np.subtract(part, shifter, out=part)
        np.subtract(x, part, out=x)
        # The parts are multiples of 2**grid below 2**(grid + 27): any sum of fewer than 2**26 of
        # them, so every partial sum of np.sum or bincount, is a multiple of 2**grid below
        # 2**(grid + 53), an exact double.
        if groups is None:
            sums = np.array([part.sum()])
        else:
            sums = np.bincount(groups, weights=part, minlength=n_groups)
        units = np.ldexp(sums, -grid).astype(np.int64)  # exact integers below 2**53
        shift = grid + SCALE_BITS
        for g in np.flatnonzero(units).tolist():
            totals[g] += int(units[g]) << shift
        if grid <= -SCALE_BITS or not x.any():  # at 2**-1074, every double is a multiple
            return totals
        grid = max(grid - _PART_BITS, -SCALE_BITS)


def exact_column_sums(columns: Sequence[npt.ArrayLike],
                       grouped: tuple[npt.ArrayLike, IntArray, int] | None = None) -> list[int]:
    """The exact sum of each column, then, if `grouped` = (values, groups, n_groups) is given, of
    each group of those values.

    Small batches go in one call (numpy's fixed cost, ~1 us a call and ~6 calls a pass, dominates
    them); large ones a call per column, where a column's passes cover only its own range of
    magnitudes and a plain sum (~0.2 ns a value) replaces bincount (~3 ns)."""
    parts = [np.asarray(c, dtype=np.float64).ravel() for c in columns]
    size = sum(len(c) for c in parts) + (0 if grouped is None else len(grouped[1]))
    if size >= _SEPARATE_FROM:
        sums = [exact_sum(c) for c in parts]
        return sums if grouped is None else sums + exact_sums(*grouped)
    labels = [np.full(len(c), i, dtype=np.int64) for i, c in enumerate(parts)]
    n_groups = len(parts)
    if grouped is not None:
        values, groups, k = grouped
        parts.append(np.asarray(values, dtype=np.float64).ravel())
        labels.append(np.asarray(groups, dtype=np.int64).ravel() + n_groups)
        n_groups += k
    if not parts:
        return []
    return exact_sums(np.concatenate(parts), np.concatenate(labels), n_groups)


def to_float(total: int, divisor: int = 1) -> float:
    """total * 2**-1074 / divisor, correctly rounded (divisor > 0)."""
    return total / (divisor << SCALE_BITS)


def pack(total: int) -> list[int]:
    """A sum as [m, e] with total = m * 2**e, m odd or zero: short in JSON."""
    if total == 0:
        return [0, 0]
    zeros = (total & -total).bit_length() - 1
    return [total >> zeros, zeros]


def unpack(data: Sequence[int]) -> int:
    """The sum `pack` wrote."""
    if (not isinstance(data, (list, tuple)) or len(data) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in data) or data[1] < 0):
        raise ValueError(f"an exact sum must be [mantissa, exponent >= 0] as integers, got {data!r}")
    return int(data[0]) << int(data[1])


def square_parts(values: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """hi, lo with hi + lo == values**2 exactly (Dekker's product with Veltkamp's split), so that a
    sum of squares is exact too. Exact while 2**-480 <= |value| < 2**511 (or value is 0): below,
    lo underflows; above, the square overflows. Either way each value's hi and lo depend on the
    value alone, so their sums are still the same whatever the grouping."""
    x = np.asarray(values, dtype=np.float64)
    hi = x * x
    split = x * 134217729.0  # 2**27 + 1
    x_hi = split - (split - x)
    x_lo = x - x_hi
    lo = ((x_hi * x_hi - hi) + 2.0 * x_hi * x_lo) + x_lo * x_lo
    return hi, lo
