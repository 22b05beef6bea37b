"""Packed snapshot columns give back exactly what they were given, Python types included (the
join tells a label True from 1), through JSON as a checkpoint stores them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mle_stream.core.snapshot_columns import decode_column, decode_row_columns, decode_rows, encode_column, encode_rows

# Mixed columns stay JSON lists, and the contract keeps their floats finite (labels, scores).
scalar = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                   st.none())
columns = st.one_of(
    st.lists(st.booleans()), st.lists(st.integers(-(2**70), 2**70)), st.lists(st.floats(allow_nan=False)),
    st.lists(st.sampled_from(["1", "2", "canary"]), min_size=0, max_size=300), st.lists(st.text(max_size=8)),
    st.lists(scalar),
)


def through_json(data: Any) -> Any:
    return json.loads(json.dumps(data, allow_nan=False))


def same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(type(x) is type(y) and x == y for x, y in zip(a, b))


@settings(max_examples=300, deadline=None)
@given(columns)
def test_a_column_round_trips_with_its_types(values: list[Any]) -> None:
    assert same(decode_column(through_json(encode_column(values))), values)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**13), st.sampled_from(["1", "2"]), st.floats(0, 1), st.booleans())))
def test_rows_round_trip_as_rows_and_as_columns(rows: list[tuple[Any, ...]]) -> None:
    data = through_json(encode_rows(rows))
    assert decode_rows(data) == rows
    assert decode_row_columns(data) == ([list(c) for c in zip(*rows)] if rows else [])


def test_columns_of_one_type_are_packed_and_repeating_strings_get_a_dictionary() -> None:
    assert set(encode_column([1, 2, 3])) == {"int64"}
    assert set(encode_column([0.5, 1.5])) == {"float64"}
    assert set(encode_column([True, False])) == {"bool"}
    assert set(encode_column(["1", "2"] * 50)) == {"strings", "codes"}
    assert set(encode_column([f"id-{i}" for i in range(100)])) == {"list"}  # unique ids: no dictionary
    assert set(encode_column([True, 1])) == {"list"}  # mixed types keep their types as JSON
    assert set(encode_column([2**64])) == {"list"}  # beyond int64
    assert set(encode_rows([(1, "a"), (2,)])) == {"list"}  # rows of different lengths
