"""Exact sums against Python's fractions (the exact rational sum) and math.fsum (the correctly
rounded one), over every kind of double: subnormals, huge values, zeros of both signs, cancellation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mle_stream.core.exact_sum import (
    SCALE_BITS,
    exact_column_sums,
    exact_sum,
    exact_sums,
    pack,
    square_parts,
    to_float,
    unpack,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
# Values of one scale with their negations and tiny ones: sums that cancel to almost nothing.
clustered = st.one_of(finite, st.floats(-1e3, 1e3), st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.0**-1022,
                                                                      1.7976931348623157e308, -1.7976931348623157e308]))
batches = st.lists(clustered, max_size=60)


def exact(values: list[float]) -> Fraction:
    return sum((Fraction(v) for v in values), Fraction(0))


@settings(max_examples=300, deadline=None)
@given(batches)
def test_the_sum_is_the_exact_rational_sum_and_reads_back_correctly_rounded(values: list[float]) -> None:
    total = exact_sum(np.array(values, dtype=np.float64))
    assert Fraction(total, 1 << SCALE_BITS) == exact(values)
    try:
        rounded = float(exact(values))  # int / int: correctly rounded
    except OverflowError:  # the exact sum rounds past the largest double: so does to_float
        with pytest.raises(OverflowError):
            to_float(total)
    else:
        assert to_float(total) == rounded
        if all(abs(v) < 1e300 for v in values):  # fsum overflows in between near the largest doubles
            assert rounded == math.fsum(values)
    assert unpack(pack(total)) == total


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_grouped_sums_equal_the_sums_of_each_group_and_any_split_gives_the_same(data: st.DataObject) -> None:
    values = data.draw(batches)
    k = data.draw(st.integers(1, 5))
    groups = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=len(values), max_size=len(values))),
                      dtype=np.int64)
    x = np.array(values, dtype=np.float64)
    sums = exact_sums(x, groups, k)
    assert sums == [exact_sum(x[groups == g]) for g in range(k)]
    cut = data.draw(st.integers(0, len(values)))
    halves = [exact_sums(x[:cut], groups[:cut], k), exact_sums(x[cut:], groups[cut:], k)]
    assert [a + b for a, b in zip(*halves)] == sums


def test_many_values_of_wide_range_and_the_column_paths_agree() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(20_000) * 10.0 ** rng.integers(-30, 30, 20_000)
    groups = rng.integers(0, 7, 20_000)
    want = exact(x.tolist())
    assert Fraction(exact_sum(x), 1 << SCALE_BITS) == want
    # Large batches go column by column, small ones in one grouped call: the same sums either way.
    assert exact_column_sums([x, -x], grouped=(x, groups, 7)) == [exact_sum(x), exact_sum(-x),
                                                                *exact_sums(x, groups, 7)]
    small = x[:100]
    assert exact_column_sums([small, small * 2], grouped=(small, groups[:100], 7)) == [
        exact_sum(small), exact_sum(small * 2), *exact_sums(small, groups[:100], 7)]


def test_adding_and_taking_back_out_leaves_exactly_nothing() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random(1000) * 1e6, rng.random(1000) * 1e-6
    assert exact_sum(a) + exact_sum(b) - exact_sum(b) == exact_sum(a)
    assert exact_sum(np.concatenate([a, b, -b])) == exact_sum(a)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(0, 30),
              elements=st.floats(-1e150, 1e150).filter(lambda v: v == 0 or abs(v) > 1e-140)))
def test_square_parts_add_up_to_the_exact_squares(x: np.ndarray) -> None:
    hi, lo = square_parts(x)
    for value, h, low in zip(x.tolist(), hi.tolist(), lo.tolist()):
        assert Fraction(h) + Fraction(low) == Fraction(value) ** 2


def test_bad_input_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="finite"):
        exact_sum(np.array([1.0, float("nan")]))
    with pytest.raises(ValueError, match="finite"):
        exact_sum(np.array([float("inf")]))
    with pytest.raises(ValueError, match="group numbers"):
        exact_sums(np.array([1.0, 2.0]), np.array([0]), 1)
    with pytest.raises(ValueError, match="mantissa"):
        unpack([1.5, 2])  # type: ignore[list-item]
