"""Drift sketches: binning, exact merge, snapshot round trip through JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mle_stream.core.drift.sketch import (
    CategoricalSketch,
    NumericSketch,
    quantile_edges,
    top_categories,
)

EDGES = [-1.0, 0.0, 0.5, 2.0]

values = st.lists(st.one_of(st.floats(-5, 5), st.sampled_from([0.0, 0.5, -1.0, 2.0, float("nan"),
                                                                  float("inf"), float("-inf")])), max_size=40)


def _numeric(xs: list[float], edges: list[float] = EDGES) -> NumericSketch:
    s = NumericSketch(edges)
    s.update(np.asarray(xs, dtype=np.float64))
    return s


def _assert_same(a: NumericSketch, b: NumericSketch) -> None:
    """Bit for bit: the sums are exact, so the grouping of the rows cannot show."""
    assert a.snapshot() == b.snapshot()
    assert a.values() == b.values() and a.bin_sums.tolist() == b.bin_sums.tolist()


def test_bins_follow_searchsorted_right() -> None:
    s = _numeric([-3.0, -1.0, -0.5, 0.0, 0.49, 0.5, 1.9, 2.0, 7.0, float("nan"), float("inf"), float("-inf")])
    # bins: < -1 | [-1, 0) | [0, 0.5) | [0.5, 2) | >= 2 ; -inf under, +inf over, NaN apart
    assert s.counts.tolist() == [2, 2, 2, 2, 3]
    assert (s.nan_count, s.inf_count, s.finite_count, s.count, s.binned_count) == (1, 2, 9, 12, 11)
    assert s.min == -3.0 and s.max == 7.0
    finite = np.array([-3.0, -1.0, -0.5, 0.0, 0.49, 0.5, 1.9, 2.0, 7.0])
    assert s.mean == pytest.approx(finite.mean(), rel=1e-15) and s.std == pytest.approx(finite.std(), rel=1e-15)
    assert s.bin_sums.tolist() == [-3.0, -1.5, 0.49, 2.4, 9.0]  # each the correctly rounded sum


@given(values, values)
@settings(max_examples=60, deadline=None)
def test_update_of_union_equals_merge(a: list[float], b: list[float]) -> None:
    _assert_same(_numeric(a + b), _numeric(a).merge(_numeric(b)))


@given(values, values, values)
@settings(max_examples=40, deadline=None)
def test_merge_is_associative_and_commutative(a: list[float], b: list[float], c: list[float]) -> None:
    sa, sb, sc = _numeric(a), _numeric(b), _numeric(c)
    _assert_same(sa.merge(sb).merge(sc), sa.merge(sb.merge(sc)))
    _assert_same(sa.merge(sb), sb.merge(sa))


@given(values)
@example([8.270334848839753e-152])  # below 2**-480: its square's low part underflows
@settings(max_examples=40, deadline=None)
def test_numeric_snapshot_round_trip_through_json(a: list[float]) -> None:
    s = _numeric(a)
    data = json.loads(json.dumps(s.snapshot()))
    assert data["kind"] == "drift_numeric_sketch" and data["v"] == 2
    restored = NumericSketch.restore(data)
    _assert_same(s, restored)
    assert restored.snapshot() == s.snapshot()


def test_merge_refuses_other_edges_naming_them() -> None:
    with pytest.raises(ValueError, match="edges"):
        NumericSketch([0.0, 1.0]).merge(NumericSketch([0.0, 2.0]))
    with pytest.raises(TypeError):
        NumericSketch([0.0]).merge(CategoricalSketch(["a"]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="categories"):
        CategoricalSketch(["a", "b"]).merge(CategoricalSketch(["b", "a"]))


def test_restore_refuses_other_kind_and_bad_fields() -> None:
    with pytest.raises(ValueError, match="drift_numeric_sketch"):
        NumericSketch.restore(CategoricalSketch(["a"]).snapshot())
    data = _numeric([1.0]).snapshot()
    data["counts"] = data["counts"][:-1]
    with pytest.raises(ValueError, match="counts"):
        NumericSketch.restore(data)


def test_edges_are_validated() -> None:
    for bad in ([], [1.0, 1.0], [2.0, 1.0], [0.0, float("nan")], [[0.0, 1.0]]):
        with pytest.raises(ValueError):
            NumericSketch(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        NumericSketch([0.0]).update(np.zeros((2, 2)))


def test_quantile_edges_deduplicate_and_span_the_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=10_000)
    e = quantile_edges(x, 100)
    assert len(e) == 101 and e[0] == x.min() and e[-1] == x.max()
    spiky = np.concatenate([np.zeros(900), rng.normal(size=100), [np.nan, np.inf]])
    e2 = quantile_edges(spiky, 100)
    assert len(e2) == len(set(e2)) and np.all(np.diff(e2) > 0) and 0.0 in e2
    assert quantile_edges([3.0, 3.0], 10) == [3.0]
    with pytest.raises(ValueError, match="no finite"):
        quantile_edges([np.nan], 10)
    with pytest.raises(ValueError, match="bins"):
        quantile_edges([1.0], 0)


def test_empty_numeric_sketch_reads_none() -> None:
    s = NumericSketch([0.0])
    assert s.values() == {"count": 0, "nan_rate": None, "mean": None, "std": None, "min": None, "max": None}
    assert NumericSketch.restore(json.loads(json.dumps(s.snapshot()))).min is None


# --- categorical ---------------------------------------------------------------------------

cats = st.lists(st.one_of(st.sampled_from(["a", "b", "c", "zz", ""]), st.none()), max_size=30)


def _categorical(xs: list[str | None], categories: tuple[str, ...] = ("b", "a", "c")) -> CategoricalSketch:
    s = CategoricalSketch(categories)
    s.update(np.asarray(xs, dtype=object))
    return s


def test_categorical_counts_known_other_and_missing() -> None:
    s = _categorical(["a", "b", "new", None, float("nan"), "a", "c", 1])  # type: ignore[list-item]
    assert s.categories == ("b", "a", "c")
    assert s.counts.tolist() == [1, 2, 1, 2]  # b, a, c, other ("new", 1)
    assert s.missing_count == 2 and s.count == 8 and s.binned_count == 6
    t = CategoricalSketch(["1", "2"])
    t.update(np.array([1, 2, 2, 3]))
    assert t.counts.tolist() == [1, 2, 1]
    empty = CategoricalSketch([])
    empty.update(np.array(["x", "y"]))
    assert empty.counts.tolist() == [2]


@given(cats, cats, cats)
@settings(max_examples=40, deadline=None)
def test_categorical_merge_exact_associative_and_round_trips(a: list[str | None], b: list[str | None],
                                                             c: list[str | None]) -> None:
    sa, sb, sc = _categorical(a), _categorical(b), _categorical(c)
    union = _categorical(a + b + c)
    for merged in (sa.merge(sb).merge(sc), sa.merge(sb.merge(sc))):
        assert merged.counts.tolist() == union.counts.tolist() and merged.missing_count == union.missing_count
    restored = CategoricalSketch.restore(json.loads(json.dumps(union.snapshot())))
    assert restored.snapshot() == union.snapshot()


def test_top_categories_by_frequency_then_text() -> None:
    ref = np.array(["x"] * 5 + ["y"] * 3 + ["a"] * 3 + ["q"] + [None] * 9, dtype=object)
    assert top_categories(ref, 3) == ["x", "a", "y"]
    assert top_categories(ref, 0) == []
    with pytest.raises(ValueError, match="distinct"):
        CategoricalSketch(["a", "a"])


@settings(max_examples=200, deadline=None)
@given(
    edges=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=8, max_size=120, unique=True),
    picks=st.lists(st.integers(0, 10**9), min_size=1, max_size=50),
    seed=st.integers(0, 2**32 - 1),
)
def test_bin_index_equals_searchsorted_at_edges_cell_borders_and_infinities(edges, picks, seed) -> None:
    from mle_stream.core.drift.sketch import _LOOKUP_MIN_VALUES, _lookup, bin_index

    e = np.array(sorted(edges))
    key = tuple(float(v) for v in e)
    rng = np.random.default_rng(seed)
    lookup = _lookup(key)
    special = [np.inf, -np.inf, e[0], e[-1], np.nextafter(e[0], -np.inf), np.nextafter(e[-1], np.inf)]
    special += [e[p % len(e)] for p in picks] + [np.nextafter(e[p % len(e)], -np.inf) for p in picks]
    if lookup is not None:  # the starts of cells, where rounding of the cell number matters
        special += [lookup.lo + (p % lookup.cells) / lookup.scale for p in picks]
    spread = rng.uniform(e[0] - 1, e[-1] + 1, _LOOKUP_MIN_VALUES)
    values = np.concatenate([np.array(special, dtype=np.float64), spread, rng.choice(e, 500)])
    assert np.array_equal(bin_index(e, key, values), np.searchsorted(e, values, side="right"))


@pytest.mark.parametrize("batch", [[8.270334848839753e-152], [1e-200, 1e-200, 1e-200], [1e-160, 3e-160]])
def test_std_of_values_too_small_to_square_exactly_is_numpys(batch: list[float]) -> None:
    # The exact sum of squares is exact only from 2**-480 up; below, the std must still be a number
    # (it raised "math domain error" for one value of 8e-152).
    assert _numeric(batch).std == pytest.approx(float(np.std(batch)), rel=1e-9, abs=1e-300)
