"""The column join's id table (core/column_join.py): an open-addressing hash table from the 64-bit
hash of an id (core/id_hash.py) to the index of its entry in the join's arena.

How it works:
- Linear probing over a power of two of 8-byte slots (a 32-bit fingerprint of the hash and the
  entry index), without wrap-around (a tail of 64 slots past the last home slot takes the runs
  that reach it).
- A batch's probes read 8 slots at once (64 bytes) as one row of a sliding-window view: one numpy
  call, ~24 ns an id at 50,000 ids where building the indices and gathering slot by slot took
  ~74 ns. At a load of at most 1/2, 99% of lookups end in their first window; the few that do not
  go on one window at a time, or one by one when only a handful are left (numpy costs ~1 us a
  call, whatever its size).
- A fingerprint match is only a candidate: the entry's id (kept by the arena) is compared on
  every hit, so a fingerprint or hash collision only costs a lookup one by one.
- Deleted slots are tombstones; when live slots and tombstones pass half of the table the join
  rebuilds it from the arena's keys at a load of 1/8 to 1/4, so a rebuild reinserts 1/3 to 1
  entry per insert since the last one.

The table holds no arena array: the arena grows (its columns are replaced), so each call gets
the columns it reads or writes: `keys` (the hash per entry), `ids` (the `S` id per entry) and
`slot_of` (per entry, the slot that points at it; written when an entry is placed, read by the
join to delete it).

Why a hash table rather than sorted runs (2-core machine, numpy 2.4, 1M keys held): a window
lookup of 500 / 50,000 random keys took 0.04 / 0.09 us a key, np.searchsorted into one sorted run
of 1M keys 0.03 / 0.21 us (0.08 with the queries sorted first); sorted runs need a search per run
and merges as keys come and go, the table one window. A Python dict took 0.09 / 0.33 us a key
for `get` alone.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

IntArray = npt.NDArray[np.int64]

_EMPTY, _TOMB = 0, 1  # table slots that hold no entry; a live slot is fingerprint << 32 | entry
_WIDTH = 8  # table slots per probe window: 64 bytes
_TAIL = 64  # slots past the last home slot
_FEW = 4  # rows left after a vectorized pass that go one by one
_LOW = np.uint64(0xFFFFFFFF)


class IdTable:
    """Slots of `fingerprint << 32 | entry`; `used` counts live slots and tombstones."""

    __slots__ = ("capacity", "slots", "used", "_windows")

    def __init__(self, capacity: int = 64) -> None:
        """`capacity`: home slots, a power of two."""
        self._reset(capacity)

    def _reset(self, capacity: int) -> None:
        # Probes do not wrap around: a tail past the last home slot takes the runs that reach it.
        self.capacity = capacity
        self.slots = np.zeros(capacity + _TAIL, dtype=np.uint64)
        self._windows = sliding_window_view(self.slots, _WIDTH)  # window i = slots i .. i+7, one row
        self.used = 0

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes  # the window view shares the slots' memory

    def crowded(self, k: int) -> bool:
        """Would `k` more entries take live slots and tombstones past half of the table?"""
        return self.used + k > self.capacity // 2

    def delete(self, slots: np.ndarray) -> None:
        """Tombstones where entries were: a probe goes on past them, an insert may reuse them."""
        self.slots[slots] = _TOMB

    def rebuild(self, need: int, keys: npt.NDArray[np.uint64], entries: IntArray, slot_of: np.ndarray) -> None:
        """A new table at a load of 1/8 to 1/4 for `need` entries, without tombstones, holding
        `entries` (the arena's live ones)."""
        capacity = 64
        while capacity < 4 * need:
            capacity *= 2
        self._reset(capacity)
        while not self._place(keys[entries], entries, slot_of):
            self._reset(2 * self.capacity)

    def insert(self, h: npt.NDArray[np.uint64], entries: IntArray, slot_of: np.ndarray,
               free_slot: IntArray | None = None) -> bool:
        """New entries (of distinct ids the table does not hold) with their hashes `h`. `free_slot`:
        per entry, a free slot `find` saw in its first window (or -1), if the table has not changed
        since. False if a run reached the end of the tail: then some entries may be in, and the
        caller rebuilds the table larger and inserts them all again."""
        rest = np.arange(len(h))
        if free_slot is not None:  # claim the slots find saw; whoever loses one probes again
            direct = np.flatnonzero(free_slot >= 0)
            slot = free_slot[direct]
            value = (np.maximum(h[direct] >> np.uint64(32),
                                np.uint64(2)) << np.uint64(32)) | entries[direct].astype(np.uint64)
            was_empty = self.slots[slot] == _EMPTY
            self.slots[slot] = value
            won = self.slots[slot] == value
            self.used += int(was_empty[won].sum())
            slot_of[entries[direct[won]]] = slot[won]
            if won.all() and len(direct) == len(h):
                return True
            placed = np.zeros(len(h), dtype=np.bool_)
            placed[direct[won]] = True
            rest = np.flatnonzero(~placed)
            if len(rest) <= _FEW and all(self._place_one(int(h[i]), int(entries[i]), slot_of) for i in rest.tolist()):
                return True  # a few left: one by one costs less than numpy's per-call overhead
        return self._place(h[rest], entries[rest], slot_of)

    def _place(self, h: npt.NDArray[np.uint64], entries: IntArray, slot_of: np.ndarray) -> bool:
        """Entries into the first free slot (empty or tombstone) of their probe sequences; False
        if a run reached the end of the tail (then the table needs rebuilding, larger)."""
        value = (np.maximum(h >> np.uint64(32), np.uint64(2)) << np.uint64(32)) | entries.astype(np.uint64)
        rows = np.arange(len(h), dtype=np.int64)
        start = (h & np.uint64(self.capacity - 1)).astype(np.int64)  # per row: where its window starts
        last = len(self.slots) - _WIDTH
        while len(rows):
            v = self._windows[start]
            free = v < 2
            at = free.argmax(axis=1)
            has = free[np.arange(len(rows)), at]
            hi = np.flatnonzero(has)
            slot = start[hi] + at[hi]
            mine = rows[hi]
            was_empty = v[hi, at[hi]] == _EMPTY
            self.slots[slot] = value[mine]  # several may claim one slot: one of them gets it
            won = self.slots[slot] == value[mine]
            self.used += int(was_empty[won].sum())
            slot_of[entries[mine[won]]] = slot[won]
            # Losers try the same window again; a window without a free slot moves on by its width.
            lost, full = hi[~won], np.flatnonzero(~has)
            rows = np.concatenate([rows[lost], rows[full]])
            start = np.concatenate([start[lost], start[full] + _WIDTH])
            if len(full) and start.max() > last:
                return False
        return True

    def find(self, h: npt.NDArray[np.uint64], sids: np.ndarray, keys: npt.NDArray[np.uint64],
             ids: np.ndarray) -> tuple[IntArray, IntArray | None]:
        """The entry of each id (`sids`, hashes `h`), -1 where the table holds none; and where the
        first window of each id has a free slot, that slot (else -1), for `insert` while the table
        is unchanged (None when there was nothing to look up)."""
        n = len(h)
        found = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return found, None
        free_slot: IntArray | None = None
        finger = np.maximum(h >> np.uint64(32), np.uint64(2))
        start = (h & np.uint64(self.capacity - 1)).astype(np.int64)
        rows = np.arange(n, dtype=np.int64)
        last = len(self.slots) - _WIDTH
        slow: list[IntArray] = []
        while True:
            v = self._windows[start]
            match = (v >> np.uint64(32)) == finger[:, None]
            at = match.argmax(axis=1)
            ar = np.arange(len(rows))
            if free_slot is None:
                free = v < 2
                free_at = free.argmax(axis=1)
                free_slot = np.where(free[ar, free_at], start + free_at, -1)
            hit = match[ar, at]
            c = np.flatnonzero(hit)
            if len(c):
                e = (v[c, at[c]] & _LOW).astype(np.int64)
                ok = ids[e] == sids[rows[c]]
                found[rows[c[ok]]] = e[ok]
                if not ok.all():
                    slow.append(rows[c[~ok]])  # a fingerprint or hash collision: settled one by one
            # Without a match, a row goes on while its window is full; an empty slot ends its run.
            empty = v == _EMPTY
            go = np.flatnonzero(~hit & ~empty[ar, empty.argmax(axis=1)])
            if len(go) <= _FEW:
                slow.append(rows[go])
                break
            rows, start, finger = rows[go], start[go] + _WIDTH, finger[go]
            inside = start <= last
            if not inside.all():
                rows, start, finger = rows[inside], start[inside], finger[inside]
                if not len(rows):
                    break
        for i in np.concatenate(slow).tolist() if slow else []:
            found[i] = self._find_one(int(h[i]), sids[i], keys, ids)
        return found, free_slot

    def _place_one(self, h: int, entry: int, slot_of: np.ndarray) -> bool:
        for slot in range(h & (self.capacity - 1), len(self.slots)):
            if int(self.slots[slot]) < 2:
                self.used += int(self.slots[slot]) == _EMPTY
                self.slots[slot] = (max(h >> 32, 2) << 32) | entry
                slot_of[entry] = slot
                return True
        return False

    def _find_one(self, h: int, sid: bytes, keys: npt.NDArray[np.uint64], ids: np.ndarray) -> int:
        for slot in range(h & (self.capacity - 1), len(self.slots)):
            v = int(self.slots[slot])
            if v == _EMPTY:
                return -1
            if v != _TOMB:
                e = v & 0xFFFFFFFF
                if int(keys[e]) == h and ids[e] == sid:
                    return e
        return -1


__all__ = ["IdTable"]
