"""Mergeable binned sketches of one feature (or the prediction score) for drift statistics.

Why fixed bins and not a quantile sketch (KLL, t-digest): every drift statistic here compares two
distributions on the *same* bins, and with bins fixed when the sketch is created (the reference's
quantile edges) the counts per bin are exact integers. Merging two sketches is then an exact
addition, a window is exactly the merge of its partitions, and the only approximation left is the
one of reading a distribution from bin counts, which `statistics` bounds for each statistic
instead of hiding it (whylogs #684: KS from KLL sketches raised false drift at 1M rows because
the sketch error was not part of the test).

Bins of a `NumericSketch` with edges e_0 < ... < e_{K-1} (K >= 1), K + 1 bins in all:

    bin 0:        x < e_0                (underflow)
    bin k:        e_{k-1} <= x < e_k     (0 < k < K)
    bin K:        x >= e_{K-1}           (overflow)

i.e. `np.searchsorted(edges, x, side="right")`. The count of values strictly below each edge is
therefore known exactly, which is what the KS bound needs. NaN is counted apart (`nan_count`) and
in no bin; +-inf count in the end bins (a feature that starts producing infinities has drifted)
and apart in `inf_count`, and are left out of the moments, min and max.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.exact_sum import SCALE_BITS, exact_column_sums, pack, square_parts, to_float, unpack
from mle_stream.core.metrics.base import check_mergeable, check_snapshot, ratio

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_NUMERIC_KIND, _NUMERIC_VERSION = "drift_numeric_sketch", 2  # v2: exact sums
_CATEGORICAL_KIND, _VERSION = "drift_categorical_sketch", 1


_LOOKUP_MIN_VALUES = 2048  # below this, one np.searchsorted call costs less than the lookup's passes


def bin_index(edges: FloatArray, key: tuple[float, ...], values: FloatArray) -> IntArray:
    """np.searchsorted(edges, values, side="right") (values without NaN), the same integers,
    through a lookup table for large batches, several times faster: binning was half of what a
    drift table of a million rows cost (docs/performance.md, Drift bench)."""
    lookup = _lookup(key) if values.size >= _LOOKUP_MIN_VALUES and len(key) >= 8 else None
    if lookup is None:
        return np.searchsorted(edges, values, side="right")  # type: ignore[no-any-return]
    return lookup.index(values)


class _BinLookup:
    """A uniform grid of cells over [e_0, e_{K-1}] and, per cell, a lower bound of the bin of any
    value that falls in it; a value then moves up one bin at a time while it is >= the next edge,
    which only the values of the few cells holding an edge do. Float rounding of the cell number
    can put a value one cell too high, so a cell's bound is the count of edges <= the start of the
    cell before it. Exact whatever the rounding: the final comparisons are against the edges."""

    def __init__(self, edges: FloatArray, cells: int) -> None:
        self.lo = float(edges[0])
        self.cells = cells
        self.scale = cells / (float(edges[-1]) - self.lo)
        starts = self.lo + np.arange(cells, dtype=np.float64) / self.scale
        below = np.searchsorted(edges, starts, side="right")
        # Index 0: below the grid (bin 0); index k + 1: computed cell k.
        self.table: IntArray = np.concatenate([[0, 0], below[:-1]]).astype(np.int64)
        self.next_edge: FloatArray = np.append(edges, np.nan)  # x >= NaN is False: bin K is the last
        self.crowding = int(np.diff(below).max(initial=0))  # most edges in one cell

    def index(self, values: FloatArray) -> IntArray:
        cell = np.floor((values - self.lo) * self.scale)
        np.clip(cell, -1, self.cells - 1, out=cell)
        bins = self.table[cell.astype(np.int64) + 1]
        moving = np.flatnonzero(values >= self.next_edge[bins])
        while moving.size:
            bins[moving] += 1
            moving = moving[values[moving] >= self.next_edge[bins[moving]]]
        return bins


@functools.lru_cache(maxsize=512)
def _lookup(key: tuple[float, ...]) -> _BinLookup | None:
    """The lookup of one set of edges, shared by every sketch on them (every pane of a feature);
    None where edges crowd so that values would step through many of them (searchsorted then)."""
    edges = np.asarray(key, dtype=np.float64)
    lookup = _BinLookup(edges, min(1 << 16, 256 * len(key)))
    return lookup if lookup.crowding <= 4 else None


def quantile_edges(reference: npt.ArrayLike, bins: int = 100) -> list[float]:
    """Bin edges at the reference's quantiles 0, 1/bins, ..., 1, duplicates removed.

    Quantile edges give every bin about the same reference mass, which keeps the error bounds of
    `statistics` (they grow with the largest mass in one bin) near 1/bins. Duplicates come from
    repeated values (an integer feature, a spike at 0); a repeated value then starts its own bin,
    so a spike keeps its mass in one bin instead of being spread across several."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"quantile_edges: bins must be an integer >= 1, got {bins!r}")
    x = np.asarray(reference, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("quantile_edges: the reference holds no finite value")
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))
    return [float(e) for e in edges]


def top_categories(reference: npt.ArrayLike, k: int = 50) -> list[str]:
    """The k most frequent categories of the reference (ties broken by the category's text), the
    fixed category list of a `CategoricalSketch`: rarer categories are counted together in
    "other", so a sketch stays k + 1 counts however many categories the stream invents."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"top_categories: k must be an integer >= 0, got {k!r}")
    text, _ = _as_text(np.asarray(reference).ravel())
    names, counts = np.unique(text, return_counts=True)
    order = np.lexsort((names, -counts))[:k]
    return [str(name) for name in names[order]]


class NumericSketch:
    """Counts and value sums per fixed bin, plus count, mean, sum of squared deviations, min, max.

    Bin sums and the sum of the exact squares are exact sums (core/exact_sum.py), so a sketch is
    the same bit for bit however its rows were grouped, and its variance is correctly rounded even
    for a feature like a timestamp (mean 1.7e9, std 10), which a float sum of squares would cancel
    away. The normalized Wasserstein distance divides by the reference's population std (ddof=0,
    as Evidently and np.std do).

    values(): count (all rows, NaN included), nan_rate, mean, std, min, max (None when no finite
    value is held).
    """

    def __init__(self, edges: Sequence[float]) -> None:
        e = np.asarray(edges, dtype=np.float64)
        if e.ndim != 1 or e.size < 1:
            raise ValueError(f"NumericSketch edges must be a non-empty 1-D sequence, got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ValueError("NumericSketch edges must be finite")
        if e.size > 1 and not np.all(np.diff(e) > 0):
            raise ValueError("NumericSketch edges must be strictly increasing (see quantile_edges)")
        self.edges: tuple[float, ...] = tuple(float(v) for v in e)
        self._edges = e
        self._counts: IntArray = np.zeros(e.size + 1, dtype=np.int64)
        self._sums = [0] * (e.size + 1)  # exact sums of the finite values per bin
        self._nan = 0
        self._inf = 0
        self._n_finite = 0
        self._square_sum = 0  # exact sum of the exact squares of the finite values
        self._min = math.inf
        self._max = -math.inf

    # --- reading -------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """All rows held, NaN included."""
        return int(self._counts.sum()) + self._nan

    @property
    def binned_count(self) -> int:
        """Rows in the bins (everything but NaN): the sample size of the binned statistics."""
        return int(self._counts.sum())

    @property
    def counts(self) -> IntArray:
        """Counts per bin, underflow first and overflow last (a copy)."""
        return self._counts.copy()

    @property
    def bin_sums(self) -> FloatArray:
        """Sum of the finite values in each bin (a copy): with the counts, each bin's mean, which
        lets `statistics` place a bin's mass where it lies (tail bins are wide and lopsided)."""
        return np.array([to_float(s) for s in self._sums], dtype=np.float64)

    @property
    def nan_count(self) -> int:
        return self._nan

    @property
    def inf_count(self) -> int:
        return self._inf

    @property
    def finite_count(self) -> int:
        return self._n_finite

    @property
    def mean(self) -> float | None:
        return to_float(sum(self._sums), self._n_finite) if self._n_finite > 0 else None

    @property
    def std(self) -> float | None:
        """Population standard deviation (ddof=0) of the finite values."""
        n = self._n_finite
        if n <= 0:
            return None
        total = sum(self._sums)
        # n sum(x^2) - sum(x)^2 in units of 2**-2148, exactly: n^2 times the variance. Exact while the
        # squares are (|x| >= 2**-480); below, a square's low part underflows and the difference can
        # come out a few units below 0 for a variance of 0.
        n2_variance = (self._square_sum * n << SCALE_BITS) - total * total
        return math.sqrt(max(n2_variance, 0) / (n * n << 2 * SCALE_BITS))

    @property
    def min(self) -> float | None:
        return self._min if self._n_finite > 0 else None

    @property
    def max(self) -> float | None:
        return self._max if self._n_finite > 0 else None

    def values(self) -> dict[str, float | None]:
        return {"count": self.count, "nan_rate": ratio(self._nan, self.count), "mean": self.mean,
                "std": self.std, "min": self.min, "max": self.max}

    # --- writing -------------------------------------------------------------------------
    def update(self, values: npt.ArrayLike) -> None:
        """Add a batch of values (any array-like of numbers, one value per row), vectorised."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"NumericSketch.update takes a 1-D batch, got shape {x.shape}")
        finite = np.isfinite(x)
        if finite.all():  # the usual batch: no masks, no copies
            index = f_index = bin_index(self._edges, self.edges, x)
            f = x
        else:
            nan = np.isnan(x)
            binned = x[~nan]
            index = bin_index(self._edges, self.edges, binned)
            self._nan += int(nan.sum())
            self._inf += int(binned.size - finite.sum())
            f = x[finite]
            f_index = index[finite[~nan]]
        self._counts += np.bincount(index, minlength=self._counts.size).astype(np.int64)
        if f.size:
            square_hi, square_lo, *bin_sums = exact_column_sums(square_parts(f), grouped=(f, f_index, len(self._sums)))
            self._n_finite += int(f.size)
            self._square_sum += square_hi + square_lo
            self._sums = [a + b for a, b in zip(self._sums, bin_sums)]
            self._min = min(self._min, float(f.min()))
            self._max = max(self._max, float(f.max()))

    def merge(self, other: NumericSketch) -> NumericSketch:
        check_mergeable(self, other, ("edges",))
        merged = NumericSketch(self.edges)
        merged._counts = self._counts + other._counts
        merged._sums = [a + b for a, b in zip(self._sums, other._sums)]
        merged._nan = self._nan + other._nan
        merged._inf = self._inf + other._inf
        merged._n_finite = self._n_finite + other._n_finite
        merged._square_sum = self._square_sum + other._square_sum
        merged._min = min(self._min, other._min)
        merged._max = max(self._max, other._max)
        return merged

    # --- persistence ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": _NUMERIC_KIND, "v": _NUMERIC_VERSION, "edges": list(self.edges), "counts": self._counts.tolist(),
            "sums": [pack(v) for v in self._sums], "nan": self._nan, "inf": self._inf,
            "n_finite": self._n_finite, "square_sum": pack(self._square_sum),
            "min": self.min, "max": self.max,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> NumericSketch:
        check_snapshot(data, _NUMERIC_KIND, _NUMERIC_VERSION)
        state = cls(data["edges"])
        state._counts = _int_array(data["counts"], len(state.edges) + 1, "counts", _NUMERIC_KIND)
        if not isinstance(data["sums"], list) or len(data["sums"]) != state._counts.size:
            raise ValueError(f"{_NUMERIC_KIND} snapshot field 'sums' must be a list of {state._counts.size} exact sums")
        state._sums = [unpack(v) for v in data["sums"]]
        state._nan, state._inf = int(data["nan"]), int(data["inf"])
        state._n_finite, state._square_sum = int(data["n_finite"]), unpack(data["square_sum"])
        state._min = math.inf if data["min"] is None else float(data["min"])
        state._max = -math.inf if data["max"] is None else float(data["max"])
        return state

    def __repr__(self) -> str:
        return (f"NumericSketch(edges=<{len(self.edges)} edges in [{self.edges[0]!r}, {self.edges[-1]!r}]>, "
                f"count={self.count})")


class CategoricalSketch:
    """Counts per category of a fixed list (the reference's top categories) plus "other".

    A category outside the list, including one the reference never saw, counts in "other"
    (the last count): the sketch keeps a fixed size however many categories the stream invents,
    and a surge of new categories shows as drift through "other". Values are compared as text
    (`str(value)`; 1 and "1" are the same category). Missing values (None, NaN) are counted apart
    in `missing_count` and in no category.

    values(): count (all rows, missing included), missing_rate, other_rate (share of the
    non-missing rows in "other").
    """

    def __init__(self, categories: Sequence[str]) -> None:
        cats = [str(c) for c in categories]
        if len(set(cats)) != len(cats):
            raise ValueError(f"CategoricalSketch categories must be distinct, got {cats!r}")
        self.categories: tuple[str, ...] = tuple(cats)
        sorted_cats = np.asarray(sorted(cats), dtype=str)
        self._sorted = sorted_cats
        position = {c: i for i, c in enumerate(cats)}
        self._order: IntArray = np.asarray([position[str(c)] for c in sorted_cats], dtype=np.int64)
        self._counts: IntArray = np.zeros(len(cats) + 1, dtype=np.int64)
        self._missing = 0

    @property
    def count(self) -> int:
        return int(self._counts.sum()) + self._missing

    @property
    def binned_count(self) -> int:
        """Rows in the categories and "other": the sample size of the statistics."""
        return int(self._counts.sum())

    @property
    def counts(self) -> IntArray:
        """Counts per category in the order of `categories`, "other" last (a copy)."""
        return self._counts.copy()

    @property
    def missing_count(self) -> int:
        return self._missing

    def values(self) -> dict[str, float | None]:
        return {"count": self.count, "missing_rate": ratio(self._missing, self.count),
                "other_rate": ratio(int(self._counts[-1]), self.binned_count)}

    def update(self, values: npt.ArrayLike) -> None:
        """Add a batch of values (strings, numbers or objects, one per row), vectorised: a sorted
        search of the category list, no Python loop over rows."""
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"CategoricalSketch.update takes a 1-D batch, got shape {arr.shape}")
        text, missing = _as_text(arr)
        self._missing += missing
        k = len(self.categories)
        index: IntArray = np.full(text.size, k, dtype=np.int64)
        if k and text.size:
            at = np.minimum(np.searchsorted(self._sorted, text), k - 1)
            hit = self._sorted[at] == text
            index[hit] = self._order[at[hit]]
        self._counts += np.bincount(index, minlength=k + 1).astype(np.int64)

    def merge(self, other: CategoricalSketch) -> CategoricalSketch:
        check_mergeable(self, other, ("categories",))
        merged = CategoricalSketch(self.categories)
        merged._counts = self._counts + other._counts
        merged._missing = self._missing + other._missing
        return merged

    def snapshot(self) -> dict[str, Any]:
        return {"kind": _CATEGORICAL_KIND, "v": _VERSION, "categories": list(self.categories),
                "counts": self._counts.tolist(), "missing": self._missing}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> CategoricalSketch:
        check_snapshot(data, _CATEGORICAL_KIND, _VERSION)
        state = cls(data["categories"])
        state._counts = _int_array(data["counts"], len(state.categories) + 1, "counts", _CATEGORICAL_KIND)
        state._missing = int(data["missing"])
        return state

    def __repr__(self) -> str:
        return f"CategoricalSketch(categories=<{len(self.categories)}>, count={self.count})"


def _as_text(arr: npt.NDArray[Any]) -> tuple[npt.NDArray[np.str_], int]:
    """The non-missing values as a str array, and how many were missing (None or NaN)."""
    missing: npt.NDArray[np.bool_]
    if arr.dtype.kind == "f":
        missing = np.isnan(arr)
    elif arr.dtype.kind == "O":
        # Element-wise comparisons of an object array (numpy's C loop, not a Python one);
        # NaN is the one value unequal to itself.
        is_none: npt.NDArray[np.bool_] = np.asarray(arr == None, dtype=np.bool_)
        is_nan: npt.NDArray[np.bool_] = np.asarray(arr != arr, dtype=np.bool_)  # noqa: PLR0124
        missing = is_none | is_nan
    else:
        missing = np.zeros(arr.shape, dtype=bool)
    kept = arr[~missing]
    return kept.astype(str), int(missing.sum())


def _int_array(values: Any, length: int, name: str, kind: str) -> IntArray:
    array: IntArray = np.asarray(values, dtype=np.int64)
    if array.shape != (length,):
        raise ValueError(f"{kind} snapshot field {name!r} must be a list of {length} integers")
    return array
