"""The evaluator's label join, on numpy columns: no Python object per pending prediction. Its rules
are those of LabelJoin, the record-by-record reference model in tests/label_join_reference.py
(the evaluator's join until this one; tests/test_column_join.py checks the two agree).

Same rules as LabelJoin, batch for batch: either arrival order; expiry by event time from the
front in insertion order; joined pairs kept `correction_ms` more, so a different second label is
CORRECTED (the old outcome out with weight -1, the new one in with +1) and the same label or the
same prediction twice is a DUPLICATE; a newer waiting label replaces an older one; a batch is
exactly as if its records were added one by one, the same id twice included. The joined rows
come back in LabelJoin's order too (add_labels: the labels that met a waiting prediction, then
the corrections in batch order).

How it is kept:
- An id is its UTF-8 bytes in a numpy `S` array, hashed a batch at once to 64 bits (`id_array`,
  `hash_ids`: core/id_hash.py). Ids must not contain NUL: an `S` array pads with it.
- One entry per id in an arena of columns (key, id, ts, state, log position, table slot, label,
  and the caller's payload columns: pane, version code, output, decision, and an object column
  only where the task needs one), whether the id waits as a prediction, as a label or is joined.
  Freed entries are reused; the arena grows by half.
- An open-addressing table (core/id_table.py) finds the entries of a batch, a window of 8 slots
  per id in one numpy call; the id itself is kept and compared on every hit. Deleted slots are
  tombstones; when live slots and tombstones pass half of the table, the join rebuilds it from
  the arena's keys at a load of 1/8 to 1/4.
- Insertion order (what expiry walks) is one log of entry indices per state; an entry knows its
  position in its log, so a log record is live while the entry still has that state and
  position. A joined or replaced entry leaves a dead record behind, which expiry skips.
- A prediction that expires unlabeled leaves a tombstone, its 64-bit key, so that delivered again
  it is a duplicate (also with a late label waiting for it), as a joined pair's would be: sorted
  uint64 chunks, one per bucket of event time (correction_ms / 4), merged in one pass as expiry
  adds keys, each dropped when expiry passes its newest timestamp by max_delay + correction_ms
  (a key outlives its own horizon by less than a bucket). 8 B per key, ~11 in a snapshot
  (base64); add_predictions looks the batch's new ids up (a binary search per chunk) only while
  tombstones exist. The key is an unkeyed hash: two ids that collide are one to a tombstone.

benchmarks/bench_join.py measures it against LabelJoin, the dict-of-tuples join it replaced (the
reference model in tests/label_join_reference.py): faster per prediction and less than half the
memory per entry held (the figures: docs/performance-history.md). What is left at small batches is
numpy's fixed cost per call: joining once per worker batch rather than once per Kafka message is
where most of the gain is.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.events import LabelValue
from mle_stream.core.id_hash import hash_ids, id_array
from mle_stream.core.id_table import IdTable
from mle_stream.core.snapshot_columns import decode_column, encode_column

IntArray = npt.NDArray[np.int64]
HashIds = Callable[[np.ndarray], npt.NDArray[np.uint64]]

_FREE, _PRED, _LABEL, _JOINED = 0, 1, 2, 3  # entry states


def label_array(labels: Sequence[LabelValue] | np.ndarray) -> np.ndarray:
    """Labels as a typed column (bool, int64, float64) when they share one of those types, else
    as objects; either way each value reads back (tolist) as the Python value it was."""
    if isinstance(labels, np.ndarray):
        kind = labels.dtype.kind
        if kind == "b":
            return labels
        if kind == "i":
            return labels.astype(np.int64, copy=False)
        if kind == "f":
            return labels.astype(np.float64, copy=False)
        if kind == "O":
            return labels
        labels = labels.tolist()
    types = set(map(type, labels))
    if len(types) == 1:
        kind_type = types.pop()
        if kind_type is bool:
            return np.array(labels, dtype=np.bool_)
        if kind_type is float:
            return np.array(labels, dtype=np.float64)
        if kind_type is int:
            try:
                return np.array(labels, dtype=np.int64)
            except OverflowError:
                pass
    return np.fromiter(labels, dtype=object, count=len(labels))


def _same(a: np.ndarray, b: np.ndarray) -> npt.NDArray[np.bool_]:
    """LabelJoin's _same per row: same type and equal."""
    if a.dtype == b.dtype and a.dtype != object:
        return np.asarray(a == b)
    if a.dtype != object and b.dtype != object:
        return np.zeros(len(a), dtype=np.bool_)  # bool, int and float are never the same label
    return np.fromiter(map(lambda x, y: type(x) is type(y) and x == y, a.tolist(), b.tolist()),
                       dtype=np.bool_, count=len(a))


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Label arrays of possibly different dtypes as one, objects where they differ."""
    parts = [p for p in parts if len(p)] or list(parts[:1])
    if len({p.dtype for p in parts}) == 1:
        return np.concatenate(parts)
    return np.concatenate([p.astype(object) for p in parts])


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(2 * len(a), dtype=a.dtype if a.dtype == b.dtype else object)
    out[0::2] = a if out.dtype == a.dtype else a.astype(object)
    out[1::2] = b if out.dtype == b.dtype else b.astype(object)
    return out


def _object_column(values: Any, n: int) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    return np.fromiter(values, dtype=object, count=n)  # element by element: tuples stay tuples


@dataclass(slots=True)
class ColumnJoined:
    """What a batch changed, as columns: per joined row, the record of the batch it came from
    (the prediction for add_predictions, the label for add_labels), the prediction's payload
    columns, the label and the weight (+1 a new pair; a correction is -1 with the old label, then
    +1 with the new). `duplicates`: positions in the batch that changed nothing. `at`: per row,
    the later of the two records' timestamps as they were given to the join: when the pair came to
    be in event time."""

    rows: IntArray
    predictions: dict[str, np.ndarray]
    labels: np.ndarray
    weights: npt.NDArray[np.float64]
    duplicates: IntArray
    at: IntArray

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def concat(cls, parts: Sequence[ColumnJoined]) -> ColumnJoined:
        """Several batches' rows as one set of columns (what the evaluator scores at once);
        `rows` and `duplicates` lose their meaning, since they index different batches."""
        parts = [p for p in parts if len(p)] or list(parts[:1])
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(np.concatenate([p.rows for p in parts]),
                   {k: np.concatenate([p.predictions[k] for p in parts]) for k in first.predictions},
                   _concat([p.labels for p in parts]), np.concatenate([p.weights for p in parts]),
                   np.zeros(0, dtype=np.int64), np.concatenate([p.at for p in parts]))

    def select(self, keep: npt.NDArray[np.bool_] | IntArray) -> ColumnJoined:
        """The given rows (a mask or indices); `duplicates` kept as they were."""
        return ColumnJoined(self.rows[keep], {k: v[keep] for k, v in self.predictions.items()}, self.labels[keep],
                            self.weights[keep], self.duplicates, self.at[keep])


class _Log:
    """Entry indices in insertion order; positions are absolute (they survive compaction)."""

    __slots__ = ("entries", "base", "head", "size")

    def __init__(self) -> None:
        self.entries = np.zeros(256, dtype=np.int32)
        self.base = self.head = self.size = 0  # entries[head:size] are at base+head ... base+size

    def append(self, entries: np.ndarray) -> IntArray:
        k = len(entries)
        if self.size + k > len(self.entries):
            live = self.size - self.head
            if live + k <= len(self.entries) // 2:  # mostly consumed: move what is left to the front
                self.entries[:live] = self.entries[self.head:self.size]
            else:
                grown = np.zeros(max(3 * len(self.entries) // 2, 3 * (live + k) // 2), dtype=np.int32)
                grown[:live] = self.entries[self.head:self.size]
                self.entries = grown
            self.base += self.head
            self.size, self.head = live, 0
        self.entries[self.size:self.size + k] = entries
        positions = np.arange(self.base + self.size, self.base + self.size + k, dtype=np.int64)
        self.size += k
        return positions


class ColumnJoin:
    def __init__(self, max_delay_ms: int, correction_ms: int, columns: Mapping[str, npt.DTypeLike],
                 hash_ids: HashIds = hash_ids) -> None:
        """`columns`: the payload kept per prediction, by name and numpy dtype (object where the
        values are irregular: segment tuples, multiclass score maps). `hash_ids` is replaceable
        so that tests can force collisions."""
        if max_delay_ms <= 0 or correction_ms < 0:
            raise ValueError(f"need max_delay_ms > 0 and correction_ms >= 0, got {max_delay_ms}, {correction_ms}")
        self.max_delay_ms = max_delay_ms
        self.correction_ms = correction_ms
        self.columns = {name: np.dtype(dtype) for name, dtype in columns.items()}
        self._hash = hash_ids
        self.expired_predictions = 0
        self.expired_labels = 0
        self.corrections = 0
        self.duplicates = 0
        self._counts = [0, 0, 0, 0]  # entries per state
        # The table.
        self._table = IdTable(64)  # id hash -> entry index
        # The arena: one entry per id held.
        cap = 64
        self._key = np.zeros(cap, dtype=np.uint64)
        self._id = np.zeros(cap, dtype="S1")
        self._ts = np.zeros(cap, dtype=np.int64)
        self._state = np.zeros(cap, dtype=np.int8)
        self._pos = np.zeros(cap, dtype=np.int64)  # position in its state's log
        self._slot = np.zeros(cap, dtype=np.int32)  # where the table points at it
        self._label: np.ndarray | None = None  # typed after the first labels, objects if they mix
        self._payload = {name: np.zeros(cap, dtype=dtype) if dtype != object else np.full(cap, None, dtype=object)
                         for name, dtype in self.columns.items()}
        self._top = 0  # entries [0, top) have been used
        self._free = np.zeros(0, dtype=np.int64)
        self._logs = {_PRED: _Log(), _LABEL: _Log(), _JOINED: _Log()}
        # Tombstones: the keys of predictions that expired unlabeled, so that a redelivery stays a
        # duplicate. By bucket of event time (ts // width): (sorted distinct keys, newest ts).
        self._tomb_width = max(1, correction_ms // 4)
        self._tombs: dict[int, tuple[npt.NDArray[np.uint64], int]] = {}

    # -- batches -------------------------------------------------------------------------------

    def add_predictions(self, ids: Sequence[str] | np.ndarray, timestamps: Sequence[int] | np.ndarray,
                        columns: Mapping[str, Any]) -> ColumnJoined:
        """A batch of predictions, exactly as if added one by one; what they joined with.
        `columns`: the payload columns of the batch (numpy arrays, or lists for object columns)."""
        sids = id_array(ids)
        n = len(sids)
        ts = np.asarray(timestamps, dtype=np.int64)
        payload = self._payload_batch(columns, n)
        h = np.asarray(self._hash(sids), dtype=np.uint64)
        first, _ = self._first_occurrences(h, sids)
        rows = np.arange(n, dtype=np.int64) if first is None else np.flatnonzero(first)
        entries, free_slot = self._find(h[rows], sids[rows])
        state = self._state_of(entries)
        # An id that expired unlabeled is seen, whether or not a label waits for it: a duplicate.
        buried = np.zeros(len(rows), dtype=np.bool_)
        if self._tombs:
            unseen = np.flatnonzero((state == _FREE) | (state == _LABEL))
            if len(unseen):
                buried[unseen[self._buried(h[rows[unseen]])]] = True
                state[buried] = _PRED
        # Only a label waiting for it: another prediction of the id makes this one a duplicate.
        released, dead = self._meet_expired(entries, state, ts[rows], (_LABEL,))
        if released:
            entries, free_slot = self._find(h[rows], sids[rows])
            state = self._state_of(entries)
            state[buried] = _PRED
        gone = rows[dead]
        if len(gone):
            # Past the horizon of the label waiting for their id: unlabeled at once, and buried
            # (after the batch: as if one by one) so that a redelivery stays a duplicate. Served all
            # the same: they are not duplicates.
            self.expired_predictions += len(gone)
            rows, entries, state = rows[~dead], entries[~dead], state[~dead]
            free_slot = None if free_slot is None else free_slot[~dead]
        meet = state == _LABEL
        new = state == _FREE
        dup_rows = rows[(state == _PRED) | (state == _JOINED)]
        if first is not None:  # an id's later predictions in the batch are duplicates of its first
            dup = ~first
            dup[dup_rows] = True
            dup_rows = np.flatnonzero(dup)
        self.duplicates += len(dup_rows)
        if new.any():
            new_rows = rows[new] if not new.all() else rows
            e = self._insert(h[new_rows], sids[new_rows], None if free_slot is None else free_slot[new])
            self._ts[e] = ts[new_rows]
            self._write_payload(e, payload, new_rows)
            self._set_state(e, _PRED)
        meet_rows = rows[meet]
        labels: np.ndarray = np.zeros(0, dtype=np.bool_)
        if len(meet_rows):
            e = entries[meet]
            assert self._label is not None
            labels = self._label[e]
            at = np.maximum(self._ts[e], ts[meet_rows])
            self._ts[e] = ts[meet_rows]  # a joined pair ages from its prediction's timestamp
            self._write_payload(e, payload, meet_rows)
            self._set_state(e, _JOINED)
        else:
            at = np.zeros(0, dtype=np.int64)
        if len(gone):
            self._bury(h[gone], ts[gone])
        return ColumnJoined(meet_rows, {k: v[meet_rows] for k, v in payload.items()}, labels,
                            np.ones(len(meet_rows)), dup_rows, at)

    def add_labels(self, ids: Sequence[str] | np.ndarray, timestamps: Sequence[int] | np.ndarray,
                   labels: Sequence[LabelValue] | np.ndarray) -> ColumnJoined:
        """A batch of labels, exactly as if added one by one; the joins and corrections they make."""
        sids = id_array(ids)
        n = len(sids)
        ts = np.asarray(timestamps, dtype=np.int64)
        values = label_array(labels)
        h = np.asarray(self._hash(sids), dtype=np.uint64)
        first, group = self._first_occurrences(h, sids)
        cuts = self._cuts(h, sids, ts, group)
        if cuts:
            return self._in_parts(self.add_labels, cuts, sids, ts, values)
        rows = np.arange(n, dtype=np.int64) if first is None else np.flatnonzero(first)
        entries, free_slot = self._find(h[rows], sids[rows])
        state = self._state_of(entries)
        released, dead = self._meet_expired(entries, state, ts[rows], (_PRED, _LABEL, _JOINED))
        if released:
            entries, free_slot = self._find(h[rows], sids[rows])
            state = self._state_of(entries)
        if dead.any():
            # Older than the horizon of the prediction held for their id: expired on arrival, as if
            # they never came (the batch's later labels of those ids are judged on their own).
            self.expired_labels += int(dead.sum())
            kept = np.setdiff1d(np.arange(n, dtype=np.int64), rows[dead])
            out = self.add_labels(sids[kept], ts[kept], values[kept])
            out.rows, out.duplicates = kept[out.rows], kept[out.duplicates]
            return out
        hit = state == _PRED
        hit_rows, hit_entries = rows[hit], entries[hit]
        if len(hit_rows):
            self._write_labels(hit_entries, values[hit_rows])
            self._set_state(hit_entries, _JOINED)
        out = ColumnJoined(hit_rows, self._take(hit_entries), values[hit_rows], np.ones(len(hit_rows)),
                           np.zeros(0, dtype=np.int64), np.maximum(self._ts[hit_entries], ts[hit_rows]))
        if len(hit_rows) == n:
            return out
        if first is None and not state[~hit].any():  # the usual misses: labels that came first, all new
            self._store_waiting(h, sids, ts, values, rows[~hit], None,
                                None if free_slot is None else free_slot[~hit])
            return out
        return self._label_misses(out, h, sids, ts, values, rows, entries, state, first, group)

    def _label_misses(self, out: ColumnJoined, h: npt.NDArray[np.uint64], sids: np.ndarray, ts: IntArray,
                      values: np.ndarray, rows: IntArray, entries: IntArray, state: npt.NDArray[np.int8],
                      first: npt.NDArray[np.bool_] | None, group: IntArray | None) -> ColumnJoined:
        """Every label that did not meet a waiting prediction, as LabelJoin takes them one by one
        after the batch's joins. What each one meets: for an id's first label in the batch, what
        the join held; for a later one, the label before it in the batch (a duplicate leaves an
        equal label behind, anything else its own)."""
        n = len(sids)
        if group is None:
            group = np.arange(n, dtype=np.int64)
        # Per group (indexed by its first row): what the join held for it.
        g_state = np.zeros(n, dtype=np.int8)
        g_state[rows] = state
        g_entry = np.full(n, -1, dtype=np.int64)
        g_entry[rows] = entries
        row_state = g_state[group]
        is_first = np.zeros(n, dtype=np.bool_)
        is_first[rows] = True
        miss = ~(is_first & (row_state == _PRED))
        joined_kind = (row_state == _PRED) | (row_state == _JOINED)
        # The previous row of the same id, in batch order.
        order = np.argsort(group, kind="stable")
        prev = np.full(n, -1, dtype=np.int64)
        same_group = group[order][1:] == group[order][:-1]
        prev[order[1:][same_group]] = order[:-1][same_group]
        held = is_first & ((row_state == _LABEL) | (row_state == _JOINED))
        has_prev = (prev >= 0) | held
        m = np.flatnonzero(miss & has_prev)
        stored = m[is_first[m]]
        prev_labels = values[np.maximum(prev[m], 0)]
        if len(stored):
            assert self._label is not None
            store = self._label[g_entry[stored]]
            if store.dtype != prev_labels.dtype:
                prev_labels = prev_labels.astype(object)
                store = store.astype(object)
            prev_labels[is_first[m]] = store
        same = np.zeros(n, dtype=np.bool_)
        same[m] = _same(prev_labels, values[m])
        previous = np.zeros(n, dtype=np.int64)  # where a row's previous label is in prev_labels
        previous[m] = np.arange(len(m))
        dup = miss & same
        corrected = np.flatnonzero(miss & ~same & joined_kind)
        waiting = np.flatnonzero(miss & ~same & ~joined_kind)
        self.duplicates += int(dup.sum())
        self.corrections += len(corrected)
        out.duplicates = np.flatnonzero(dup)
        if len(corrected):
            ce = g_entry[group[corrected]]
            fixed = ColumnJoined(np.repeat(corrected, 2), self._take(np.repeat(ce, 2)),
                                 _interleave(prev_labels[previous[corrected]], values[corrected]),
                                 np.tile(np.array([-1.0, 1.0]), len(corrected)), out.duplicates,
                                 np.repeat(np.maximum(self._ts[ce], ts[corrected]), 2))
            out = ColumnJoined(np.concatenate([out.rows, fixed.rows]),
                               {k: np.concatenate([out.predictions[k],
                                                   fixed.predictions[k]]) for k in fixed.predictions},
                               _concat([out.labels, fixed.labels]), np.concatenate([out.weights, fixed.weights]),
                               out.duplicates, np.concatenate([out.at, fixed.at]))
            last = _last_per_group(corrected, group)
            self._write_labels(g_entry[group[last]], values[last])
        if len(waiting):
            self._store_waiting(h, sids, ts, values, _last_per_group(waiting, group), g_entry[group])
        return out

    def _store_waiting(self, h: npt.NDArray[np.uint64], sids: np.ndarray, ts: IntArray, values: np.ndarray,
                       rows: IntArray, held: IntArray | None, free_slot: IntArray | None = None) -> None:
        """Labels that wait for their predictions (rows in batch order, one per id), in new
        entries or, where `held` names one, replacing a waiting label (moved to the log's end)."""
        e = np.full(len(rows), -1, dtype=np.int64) if held is None else held[rows]
        new = e < 0
        if new.any():
            e[new] = self._insert(h[rows[new]], sids[rows[new]], None if free_slot is None else free_slot[new])
        self._ts[e] = ts[rows]
        self._write_labels(e, values[rows])
        self._set_state(e, _LABEL)

    @staticmethod
    def _first_occurrences(h: npt.NDArray[np.uint64], sids: np.ndarray
                           ) -> tuple[npt.NDArray[np.bool_] | None, IntArray | None]:
        """(None, None) when the batch's ids are distinct (the usual case, told by a sort of the
        hashes); else per row whether it is its id's first in the batch, and the row of that first."""
        n = len(h)
        if n < 2:
            return None, None
        ordered = np.sort(h)
        if not (ordered[1:] == ordered[:-1]).any():
            return None, None
        _, index, inverse = np.unique(sids, return_index=True, return_inverse=True)
        if len(index) == n:
            return None, None  # equal hashes of different ids
        first = np.zeros(n, dtype=np.bool_)
        first[index] = True
        return first, index[inverse.ravel()].astype(np.int64)

    def _cuts(self, h: npt.NDArray[np.uint64], sids: np.ndarray, ts: IntArray, group: IntArray | None) -> list[int]:
        """Where to cut a batch of labels so that it is exactly as if they came one by one, when an
        id it holds more than once spans more than max_delay (with the entry held for it): records
        that far apart never meet, which the batch path judges only for an id's first label in the
        batch. Each later label of such an id then starts a part of its own (rare: the same id
        twice in a batch, and far apart). [] when the batch needs no cut."""
        if group is None:
            return []
        repeated = np.flatnonzero(group != np.arange(len(group)))
        firsts = np.unique(group[repeated])
        entries = self._find(h[firsts], sids[firsts])[0]
        held = np.where(entries >= 0, self._ts[np.maximum(entries, 0)], ts[firsts])
        cuts: list[int] = []
        for g, entry_ts in zip(firsts.tolist(), held.tolist()):
            rows = np.flatnonzero(group == g)
            span = ts[rows]
            if max(int(span.max()), entry_ts) - min(int(span.min()), entry_ts) > self.max_delay_ms:
                cuts.extend(rows[1:].tolist())
        return sorted(set(cuts))

    @staticmethod
    def _in_parts(add: Callable[[np.ndarray, IntArray, Any], ColumnJoined], cuts: list[int], sids: np.ndarray,
                  ts: IntArray, third: Any) -> ColumnJoined:
        """add() of the batch's parts between the cuts, one after the other, as one result."""
        bounds = [0, *cuts, len(ts)]
        parts = []
        for lo, hi in zip(bounds, bounds[1:]):
            rows = slice(lo, hi)
            out = add(sids[rows], ts[rows], {k: v[rows] for k, v in third.items()} if isinstance(third, dict)
                      else third[rows])
            parts.append((lo, out))
        first = parts[0][1]
        return ColumnJoined(np.concatenate([p.rows + lo for lo, p in parts]),
                            {k: np.concatenate([p.predictions[k] for _, p in parts]) for k in first.predictions},
                            _concat([p.labels for _, p in parts]), np.concatenate([p.weights for _, p in parts]),
                            np.concatenate([p.duplicates + lo for lo, p in parts]),
                            np.concatenate([p.at for _, p in parts]))

    def _meet_expired(self, entries: IntArray, state: npt.NDArray[np.int8], ts: IntArray, against: tuple[int, ...]
                      ) -> tuple[bool, npt.NDArray[np.bool_]]:
        """Whether two records of an id pair depends on their timestamps alone (the keys the caller
        passes), not on when the caller last ran `expire`: records further apart than the horizon
        (`max_delay_ms`; `+ correction_ms` for a joined pair) never meet. Of such a record and the
        entry it finds, the older one has expired, as expiry by event time would have had it:
        - the entry, when the record is newer: released here (True: the caller finds its ids again);
        - the record itself, when the entry is newer (it comes from the other input, which has
          passed on): returned as a mask of the rows that expired on arrival."""
        held = np.isin(state, against)
        if not held.any():
            return False, np.zeros(len(entries), dtype=np.bool_)
        age = ts - self._ts[np.where(held, entries, 0)]
        limit = np.where(state == _JOINED, self.max_delay_ms + self.correction_ms, self.max_delay_ms)
        stale = held & (age > limit)
        dead = held & (-age > limit)
        if stale.any():
            released = entries[stale]
            kinds = np.bincount(state[stale], minlength=4)
            self.expired_predictions += int(kinds[_PRED])
            self.expired_labels += int(kinds[_LABEL])
            unlabeled = released[state[stale] == _PRED]
            self._release(released)
            if len(unlabeled):
                self._bury(self._key[unlabeled], self._ts[unlabeled])  # expired unlabeled, as by expire
        return bool(stale.any()), dead

    # -- expiry --------------------------------------------------------------------------------

    def expire(self, watermark: int) -> None:
        horizon = watermark - self.max_delay_ms
        unlabeled: list[IntArray] = []
        self.expired_predictions += self._expire(_PRED, horizon, unlabeled)
        if unlabeled:
            gone = np.concatenate(unlabeled)
            self._bury(self._key[gone], self._ts[gone])
        self.expired_labels += self._expire(_LABEL, horizon)
        self._expire(_JOINED, horizon - self.correction_ms)
        if self._tombs:
            for bucket in [b for b, (_, newest) in self._tombs.items() if newest < horizon - self.correction_ms]:
                del self._tombs[bucket]

    def _expire(self, state: int, horizon: int, released: list[IntArray] | None = None) -> int:
        """Pop the log's front up to its first live entry that is still young; the entries that
        go are appended to `released` (valid until the next insert)."""
        log, expired, chunk = self._logs[state], 0, 1024
        while log.head < log.size:
            end = min(log.size, log.head + chunk)
            e = log.entries[log.head:end]
            live = (self._state[e] == state) & (self._pos[e] == np.arange(log.base + log.head, log.base + end))
            young = live & (self._ts[e] >= horizon)
            stop = int(young.argmax()) if young.any() else len(e)
            old = e[:stop][live[:stop]]
            if len(old):
                self._release(old)
                expired += len(old)
                if released is not None:
                    released.append(old)
            log.head += stop
            if stop < len(e):
                break
            chunk *= 2
        return expired

    def _bury(self, keys: npt.NDArray[np.uint64], ts: IntArray) -> None:
        """Tombstones for predictions gone unlabeled: their keys, into the chunk of their ts bucket.
        A chunk goes when expiry passes its newest ts, as a joined pair of that ts would: a key
        outlives its own horizon by less than one bucket (correction_ms / 4)."""
        buckets = ts // self._tomb_width
        if buckets[0] == buckets[-1] and (buckets == buckets[0]).all():
            groups = [(int(buckets[0]), keys, ts)]
        else:
            order = np.argsort(buckets, kind="stable")
            cuts = np.flatnonzero(np.diff(buckets[order])) + 1
            groups = [(int(buckets[g[0]]), keys[g], ts[g]) for g in np.split(order, cuts)]
        for bucket, k, t in groups:
            k = np.unique(k)  # sorted and distinct (two ids can share a key)
            newest = int(t.max())
            held = self._tombs.get(bucket)
            if held is not None:
                k, newest = _merge_sorted(held[0], k), max(held[1], newest)
            self._tombs[bucket] = (k, newest)

    def _buried(self, keys: npt.NDArray[np.uint64]) -> IntArray:
        """Positions of the keys that a tombstone holds: a binary search per chunk, of the keys in
        order (each search starts where the last one ended: 2-4 times faster than in batch order)."""
        order = np.argsort(keys)
        ordered = keys[order]
        found = np.zeros(len(keys), dtype=np.bool_)
        for chunk, _ in self._tombs.values():
            at = np.searchsorted(chunk, ordered)
            np.minimum(at, len(chunk) - 1, out=at)
            found |= chunk[at] == ordered
        return np.sort(order[found])

    @property
    def tombstones(self) -> int:
        """Keys of predictions that expired unlabeled, still held (8 bytes each)."""
        return sum(len(k) for k, _ in self._tombs.values())

    # -- questions -----------------------------------------------------------------------------

    @property
    def pending(self) -> tuple[int, int]:
        """(predictions waiting for a label, labels waiting for a prediction)."""
        return self._counts[_PRED], self._counts[_LABEL]

    @property
    def joined(self) -> int:
        return self._counts[_JOINED]

    def holds(self, ids: Sequence[str] | np.ndarray) -> npt.NDArray[np.bool_]:
        """Per id: is a prediction with it held (waiting for its label, or joined and correctable)?"""
        state = self._lookup_state(ids)[1]
        return (state == _PRED) | (state == _JOINED)

    def labels_of(self, ids: Sequence[str] | np.ndarray) -> list[LabelValue | None]:
        """Per id: the label this join holds for it (joined, or waiting for its prediction), else None."""
        entries, state = self._lookup_state(ids)
        has = (state == _LABEL) | (state == _JOINED)
        out: list[LabelValue | None] = [None] * len(entries)
        if has.any():
            assert self._label is not None
            for i, value in zip(np.flatnonzero(has).tolist(), self._label[entries[has]].tolist()):
                out[i] = value
        return out

    def _lookup_state(self, ids: Sequence[str] | np.ndarray) -> tuple[IntArray, npt.NDArray[np.int8]]:
        sids = id_array(ids)
        entries = self._find(np.asarray(self._hash(sids), dtype=np.uint64), sids)[0]
        return entries, self._state_of(entries)

    @property
    def nbytes(self) -> int:
        """Bytes of the numpy arrays this join holds (objects in object columns not counted)."""
        arrays = [self._key, self._id, self._ts, self._state, self._pos, self._slot, self._free,
                  *self._payload.values(), *(log.entries for log in self._logs.values()),
                  *(k for k, _ in self._tombs.values())]
        return self._table.nbytes + sum(a.nbytes for a in arrays) + (0 if self._label is None else self._label.nbytes)

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data, column by column and in each state's insertion order (expiry relies
        on that order), packed by core/snapshot_columns.py."""
        def part(state: int, payload: bool, label: bool) -> dict[str, Any]:
            e = self._ordered(state)
            out: dict[str, Any] = {"id": encode_column([i.decode() for i in self._id[e].tolist()]),
                                   "ts": encode_column(self._ts[e].tolist())}
            if payload:
                out["columns"] = {k: encode_column(v[e].tolist()) for k, v in self._payload.items()}
            if label:
                out["label"] = encode_column([] if self._label is None else self._label[e].tolist())
            return out

        return {
            "kind": "column_join", "v": 1, "max_delay_ms": self.max_delay_ms, "correction_ms": self.correction_ms,
            "columns": {k: v.str if v != object else "object" for k, v in self.columns.items()},
            "predictions": part(_PRED, True, False), "labels": part(_LABEL, False, True),
            "joined": part(_JOINED, True, True),
            "tombstones": [{"bucket": b, "newest": newest, "keys": base64.b64encode(k.astype("<u8").tobytes()).decode()}
                           for b, (k, newest) in sorted(self._tombs.items())],
            "counters": {"expired_predictions": self.expired_predictions, "expired_labels": self.expired_labels,
                         "corrections": self.corrections, "duplicates": self.duplicates},
        }

    @classmethod
    def restore(cls, data: dict[str, Any], decoders: Mapping[str, Callable[[list[Any]], Sequence[Any]]] | None = None,
                hash_ids: HashIds = hash_ids) -> ColumnJoin:
        """The join a snapshot was taken of. `decoders` turn an object column's JSON values back
        into what was stored (JSON has no tuples: segments come back as lists without one)."""
        if not isinstance(data, dict) or data.get("kind") != "column_join" or data.get("v") != 1:
            got = (data.get("kind"), data.get("v")) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a column_join v1 snapshot: {got!r}")
        columns = {k: np.dtype(object if v == "object" else v) for k, v in data["columns"].items()}
        join = cls(data["max_delay_ms"], data["correction_ms"], columns, hash_ids)
        decoders = decoders or {}

        def payload(part: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, dtype in columns.items():
                values = decode_column(part["columns"][k])
                if dtype == object:
                    out[k] = decoders.get(k, list)(values)
                else:
                    out[k] = np.array(values, dtype=dtype)
            return out

        for name, state in (("predictions", _PRED), ("labels", _LABEL), ("joined", _JOINED)):
            part = data[name]
            sids = id_array(decode_column(part["id"]))
            if not len(sids):
                continue
            e = join._insert(np.asarray(join._hash(sids), dtype=np.uint64), sids)
            join._ts[e] = decode_column(part["ts"])
            if "columns" in part:
                join._write_payload(e, join._payload_batch(payload(part), len(e)), np.arange(len(e)))
            if "label" in part:
                join._write_labels(e, label_array(decode_column(part["label"])))
            join._set_state(e, state)
        for tomb in data.get("tombstones", ()):  # absent from checkpoints written before tombstones
            keys = np.frombuffer(base64.b64decode(tomb["keys"]), dtype="<u8").astype(np.uint64)
            join._tombs[int(tomb["bucket"])] = (keys, int(tomb["newest"]))
        counters = data["counters"]
        join.expired_predictions, join.expired_labels = counters["expired_predictions"], counters["expired_labels"]
        join.corrections, join.duplicates = counters["corrections"], counters["duplicates"]
        return join

    def _ordered(self, state: int) -> IntArray:
        log = self._logs[state]
        e = log.entries[log.head:log.size]
        live = (self._state[e] == state) & (self._pos[e] == np.arange(log.base + log.head, log.base + log.size))
        return e[live]

    # -- entries -------------------------------------------------------------------------------

    def _payload_batch(self, columns: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
        if columns.keys() != self.columns.keys():
            raise ValueError(f"payload columns {sorted(columns)} are not the join's {sorted(self.columns)}")
        out = {}
        for k, dtype in self.columns.items():
            column = _object_column(columns[k], n) if dtype == object else np.asarray(columns[k], dtype=dtype)
            if len(column) != n:
                raise ValueError(f"payload column {k!r} has {len(column)} values for {n} ids")
            out[k] = column
        return out

    def _write_payload(self, entries: IntArray, payload: Mapping[str, np.ndarray], rows: IntArray) -> None:
        for k, column in payload.items():
            self._payload[k][entries] = column[rows]

    def _take(self, entries: IntArray) -> dict[str, np.ndarray]:
        return {k: v[entries] for k, v in self._payload.items()}

    def _write_labels(self, entries: IntArray, values: np.ndarray) -> None:
        if self._label is None:
            self._label = np.zeros(len(self._ts), dtype=values.dtype)
        elif self._label.dtype != values.dtype:
            if self._label.dtype != object:
                self._label = self._label.astype(object)  # Python bools, ints, floats: types kept
            values = values.astype(object)
        self._label[entries] = values

    def _state_of(self, entries: IntArray) -> npt.NDArray[np.int8]:
        return np.where(entries >= 0, self._state[entries], np.int8(_FREE)).astype(np.int8)

    def _set_state(self, entries: IntArray, state: int) -> None:
        """Move entries (distinct) to the end of `state`'s log."""
        before = np.bincount(self._state[entries], minlength=4)
        for s in (1, 2, 3):
            self._counts[s] -= int(before[s])
        self._counts[state] += len(entries)
        self._state[entries] = state
        self._pos[entries] = self._logs[state].append(entries)

    def _release(self, entries: IntArray) -> None:
        for s, count in enumerate(np.bincount(self._state[entries], minlength=4).tolist()):
            self._counts[s] -= count
        self._state[entries] = _FREE
        self._table.delete(self._slot[entries])
        for k, dtype in self.columns.items():
            if dtype == object:
                self._payload[k][entries] = None
        if self._label is not None and self._label.dtype == object:
            self._label[entries] = None
        self._free = np.concatenate([self._free, entries])

    def _alloc(self, k: int) -> IntArray:
        reuse = min(k, len(self._free))
        taken = self._free[len(self._free) - reuse:]
        self._free = self._free[:len(self._free) - reuse]
        fresh = k - reuse
        if self._top + fresh > len(self._ts):
            self._grow(max(3 * len(self._ts) // 2, self._top + fresh))
        out = np.concatenate([taken, np.arange(self._top, self._top + fresh, dtype=np.int64)])
        self._top += fresh
        return out

    def _grow(self, cap: int) -> None:
        def grown(a: np.ndarray) -> np.ndarray:
            b = np.full(cap, None, dtype=object) if a.dtype == object else np.zeros(cap, dtype=a.dtype)
            b[:len(a)] = a
            return b

        self._key, self._id, self._ts = grown(self._key), grown(self._id), grown(self._ts)
        self._state, self._pos, self._slot = grown(self._state), grown(self._pos), grown(self._slot)
        self._payload = {k: grown(v) for k, v in self._payload.items()}
        if self._label is not None:
            self._label = grown(self._label)

    # -- the table -----------------------------------------------------------------------------

    def _insert(self, h: npt.NDArray[np.uint64], sids: np.ndarray, free_slot: IntArray | None = None) -> IntArray:
        """New entries for ids the join does not hold (distinct), in the table and the arena.
        `free_slot`: per id, a free slot _find saw in its first window (or -1), if the table has
        not changed since."""
        e = self._alloc(len(h))
        if sids.dtype.itemsize > self._id.dtype.itemsize:
            self._id = self._id.astype(sids.dtype)
        self._id[e] = sids
        self._key[e] = h
        table = self._table
        need = sum(self._counts) + len(h)
        if table.crowded(len(h)):
            table.rebuild(need, self._key, self._live(), self._slot)
            free_slot = None
        placed = table.insert(h, e, self._slot, free_slot)
        while not placed:  # a run reached the end of the tail: a larger table, all of them again
            table.rebuild(2 * need, self._key, self._live(), self._slot)
            placed = table.insert(h, e, self._slot)
        return e

    def _live(self) -> IntArray:
        """The entries the table holds; new ones are not among them until their state is set."""
        return np.flatnonzero(self._state[:self._top] != _FREE)

    def _find(self, h: npt.NDArray[np.uint64], sids: np.ndarray) -> tuple[IntArray, IntArray | None]:
        """The entry of each id, -1 where the join holds none; and where the first window of
        each id has a free slot, that slot (else -1), for _insert while the table is unchanged."""
        if sum(self._counts) == 0:  # nothing held: no probing (the table may hold tombstones)
            return np.full(len(h), -1, dtype=np.int64), None
        return self._table.find(h, sids, self._key, self._id)


def _merge_sorted(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Two sorted arrays of distinct keys as one, in one pass (np.union1d sorts again)."""
    at = np.searchsorted(a, b)
    if len(a):
        new = a[np.minimum(at, len(a) - 1)] != b
        b, at = b[new], at[new]
    return np.insert(a, at, b)


def _last_per_group(rows: IntArray, group: IntArray) -> IntArray:
    """Of rows (in batch order), the last one of each id, in batch order."""
    g = group[rows][::-1]
    _, index = np.unique(g, return_index=True)
    return np.sort(rows[::-1][index])


__all__ = ["ColumnJoin", "ColumnJoined", "hash_ids", "id_array", "label_array"]
