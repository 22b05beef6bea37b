"""Columns of a snapshot as compact JSON data: what a checkpoint of a million pending predictions
is mostly made of.

A plain JSON list costs a Python object per value to write and again to read back, in time and
in the restoring process's memory (docs/performance-history.md). A column
whose values share one type is stored instead as the base64 bytes of a numpy array (integers,
floats, booleans) or, for strings that repeat (versions, classes), as the distinct values and
their codes. Anything else stays a JSON list. Values come back with their exact Python types:
a join compares labels by type as well as value.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from itertools import islice
from operator import itemgetter
from typing import Any

import numpy as np

_DTYPES = {int: "int64", float: "float64", bool: "bool"}


def _pack(array: np.ndarray[Any, Any]) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _unpack(text: str, dtype: str) -> np.ndarray[Any, Any]:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def encode_column(values: Sequence[Any]) -> dict[str, Any]:
    """One column as JSON data: {"int64" | "float64" | "bool": base64}, {"strings", "codes"} or
    {"list"} when the values are of mixed or other types."""
    types = set(map(type, values))
    if len(types) == 1:
        kind = types.pop()
        dtype = _DTYPES.get(kind)
        if dtype is not None:
            try:
                return {dtype: _pack(np.array(values, dtype=dtype))}
            except OverflowError:  # an int beyond 64 bits: kept as JSON, which has no such limit
                return {"list": list(values)}
        if kind is str and len(set(islice(values, 1024))) * 4 <= min(len(values), 1024):
            # The first values repeat (versions, classes; not ids): a dictionary likely pays off.
            distinct = list(dict.fromkeys(values))
            if len(distinct) * 4 <= len(values):
                code = {s: i for i, s in enumerate(distinct)}
                return {"strings": distinct, "codes": _pack(np.fromiter(map(code.__getitem__, values), dtype=np.int32,
                                                                        count=len(values)))}
    return {"list": list(values)}


def decode_column(data: dict[str, Any]) -> list[Any]:
    if "list" in data:
        return list(data["list"])
    if "strings" in data:
        strings = data["strings"]
        return [strings[i] for i in _unpack(data["codes"], "int32").tolist()]
    for dtype in _DTYPES.values():
        if dtype in data:
            return _unpack(data[dtype], dtype).tolist()  # type: ignore[no-any-return]
    raise ValueError(f"not an encoded column: keys {sorted(data)}")


def encode_rows(rows: Sequence[Any]) -> dict[str, Any]:
    """Tuples of one length column by column ({"columns": [...]}); anything else as a list."""
    if rows and set(map(type, rows)) == {tuple}:
        widths = set(map(len, rows))
        if len(widths) == 1:
            # itemgetter per column, not zip(*rows): that makes an iterator per row.
            return {"columns": [encode_column(list(map(itemgetter(k), rows))) for k in range(widths.pop())]}
    return {"list": list(rows)}


def decode_rows(data: dict[str, Any]) -> list[Any]:
    """The rows encode_rows was given (tuples as tuples where they were stored as columns)."""
    if "columns" in data:
        return list(zip(*decode_row_columns(data)))
    return list(data["list"])


def decode_row_columns(data: dict[str, Any]) -> list[list[Any]]:
    """The columns of what encode_rows was given, without building the rows."""
    if "columns" in data:
        return [decode_column(column) for column in data["columns"]]
    return [list(column) for column in zip(*data["list"])]


__all__ = ["decode_column", "decode_row_columns", "decode_rows", "encode_column", "encode_rows"]
