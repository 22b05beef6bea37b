"""Prediction ids as the column join keeps them (core/column_join.py): a numpy `S` array of their
UTF-8 bytes, and one 64-bit hash per id for the id table (core/id_table.py).

- An id is its UTF-8 bytes in a numpy `S` array (the decoder can hand one over as it is; a list
  of str is converted: ~0.03 us an id for ASCII ids of one length, else ~0.17). Ids must not
  contain NUL: an `S` array pads with it.
- `hash_ids` hashes a whole batch at once: each 8-byte chunk is multiplied by an odd constant of
  its position and avalanched (murmur3's fmix64), the chunks are summed and mixed again, ~0.06 us
  an id. Two ids that differ in one chunk never collide; the join keeps the id itself and the
  table compares it on every hit, so a collision only costs a lookup one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import numpy.typing as npt

# The longest id the worker's label join holds, in bytes of UTF-8: ids are kept as wide as the
# longest one held, so one very long id would widen every entry (the evaluator rejects longer ones).
MAX_ID_BYTES = 128

_POSITION_FACTOR = np.arange(1, 129, 2, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) | np.uint64(1)


def _fmix64(k: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """murmur3's finalizer, in place: every input bit flips each output bit with probability ~1/2."""
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xFF51AFD7ED558CCD)
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xC4CEB9FE1A85EC53)
    k ^= k >> np.uint64(33)
    return k


def hash_ids(ids: np.ndarray) -> npt.NDArray[np.uint64]:
    """64-bit hashes of an `S` array of ids. Each 8-byte chunk is multiplied by an odd constant of
    its position and avalanched, the chunks are summed and mixed again. A chunk of padding (zero)
    adds zero, so the hash of an id does not depend on the width of the array it came in."""
    n, width = len(ids), ids.dtype.itemsize
    words = -(-width // 8)
    if width == words * 8:
        chunks = np.ascontiguousarray(ids).view(np.uint64).reshape(n, words).copy()
    else:
        padded = np.zeros((n, words * 8), dtype=np.uint8)
        padded[:, :width] = np.ascontiguousarray(ids).view(np.uint8).reshape(n, width)
        chunks = padded.view(np.uint64)
    chunks *= _POSITION_FACTOR[:words] if words <= len(_POSITION_FACTOR) else np.resize(_POSITION_FACTOR, words)
    _fmix64(chunks)
    return _fmix64(chunks.sum(axis=1, dtype=np.uint64))


def holdable_id_array(ids: Sequence[str]) -> np.ndarray | None:
    """The ids as an `S` array if a shortcut proves every one holdable: ASCII, of one length of at
    most MAX_ID_BYTES, without NUL (ids of one format, the usual case); else None, and
    `unholdable_ids` tells which cannot be held, if any. One pass instead of the two of
    `unholdable_ids` then `id_array`."""
    fixed = _fixed_width_ascii(ids)
    return fixed if fixed is not None and fixed.dtype.itemsize <= MAX_ID_BYTES else None


def unholdable_ids(ids: Sequence[str]) -> list[tuple[int, str]]:
    """(row, why) for each id the join cannot hold: one with a NUL (padding would make "a" and
    "a\\0" one id) or of more than MAX_ID_BYTES. C-level scans of the whole column first; rows
    one by one only when one may be such an id."""
    text = "".join(ids)
    longest = max(map(len, ids), default=0)
    if "\x00" not in text and (longest * 4 <= MAX_ID_BYTES or (longest <= MAX_ID_BYTES and text.isascii())):
        return []
    out = []
    for i, pid in enumerate(ids):
        if "\x00" in pid:
            out.append((i, f"prediction_id {pid!r} contains a NUL character, which the label join cannot keep "
                           "apart from padding"))
        elif len(pid) * 4 > MAX_ID_BYTES and len(pid.encode()) > MAX_ID_BYTES:
            out.append((i, f"prediction_id {pid[:40]!r}... is {len(pid.encode())} bytes of UTF-8; the worker "
                           f"holds ids of at most {MAX_ID_BYTES}"))
    return out


def id_array(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Ids as an `S` array: as they are if they already are one, else their UTF-8 bytes."""
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind == "S":
            return ids
        if ids.dtype.kind != "U":
            raise TypeError(f"prediction ids must be str or an S/U numpy array, got dtype {ids.dtype}")
        ids = cast(list[str], ids.tolist())
    fixed = _fixed_width_ascii(ids)
    if fixed is not None:
        return fixed
    text = "".join(ids)
    if "\x00" in text:
        bad = next(i for i in ids if "\x00" in i)
        raise ValueError(f"prediction_id {bad!r} contains a NUL character, which the column join "
                         "cannot keep apart from padding: reject the record before the join (unholdable_ids)")
    if text.isascii():
        return np.array(ids, dtype="S") if ids else np.zeros(0, dtype="S1")
    return np.array([i.encode() for i in ids], dtype="S")


def _fixed_width_ascii(ids: Sequence[str]) -> np.ndarray | None:
    """The ids as an `S` array, if all are ASCII, non-empty, of one length and without NUL (ids of
    one format, the usual case); else None. ~0.03 us an id, against ~0.17 for numpy's conversion
    of a list of str, in C-level passes over one text: the ids joined with a NUL after each. Exactly
    n NULs in it, one at the end of every (width + 1)-th character, leave no room for an id of
    another length or with a NUL of its own."""
    n = len(ids)
    if n == 0:
        return None
    text = "\x00".join(ids) + "\x00"
    width, rest = divmod(len(text), n)
    if rest or width < 2 or not text.isascii() or text.count("\x00") != n:
        return None
    rows = np.frombuffer(text.encode("ascii"), dtype=np.uint8).reshape(n, width)
    if rows[:, -1].any():
        return None
    return rows[:, :-1].copy().view(f"S{width - 1}").ravel()


__all__ = ["MAX_ID_BYTES", "hash_ids", "holdable_id_array", "id_array", "unholdable_ids"]
