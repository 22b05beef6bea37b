"""The label join's reference model, record by record (was mle_stream/core/join.py until the
evaluator moved to ColumnJoin, core/column_join.py): dicts of tuples, simple enough to read as the
rules themselves. tests/test_column_join.py checks ColumnJoin against it on random batches, and
benchmarks/bench_join.py measures the two.

It pairs each label with its prediction by prediction_id, in either arrival order.

- A prediction waits for its label until event time passes its timestamp by `max_delay_ms`, then
  expires as unlabeled (never as an error). A label that comes first waits the same way.
- A joined pair is kept for `correction_ms` more, so that a second label for the same prediction
  is a *correction*: the caller takes the old outcome out and puts the new one in. The same label
  twice, or the same prediction twice, is a duplicate and changes nothing.
- Two records of an id further apart in time than that horizon (`max_delay_ms`, for a joined pair
  `max_delay_ms + correction_ms`) never meet, whether or not `expire` has run in between: the
  older one has expired. When that is the entry a record finds, the entry goes (a prediction
  leaving a tombstone); when it is the record (the entry came from the other input, which has
  passed on), the record expires on arrival: a prediction is then served, unlabeled and buried, a
  label is dropped. A batch: the entries its records find expired go first (a prediction's
  tombstone seen by the whole batch), then its records one by one, then the predictions that
  expired on arrival are buried; a batch holding an id twice, further apart in time than
  `max_delay_ms` (with the entry held for it), goes in parts, each later record of that id
  starting one.
- Expiry pops from the front of insertion-ordered dicts and stops at the first entry still young,
  so it costs O(expired), not O(pending). Entries that arrived out of event-time order may outlive
  their horizon by as much as they were out of order.
- A prediction that expires unlabeled leaves a tombstone: its id's 64-bit hash (`hash_ids`, as
  ColumnJoin keys it), in the set of its timestamp's bucket (ts // (correction_ms / 4)). While the
  hash is held, the same id delivered again is a duplicate, even if a label waits for it. A bucket
  goes when event time passes its newest timestamp by max_delay + correction_ms, as a joined pair
  of that timestamp would.

What is kept per prediction is whatever the caller passes (`P`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from itertools import compress, repeat
from operator import is_not, itemgetter, not_
from typing import Any, Generic, TypeVar

from mle_stream.core.events import LabelValue
from mle_stream.core.id_hash import hash_ids as default_hash
from mle_stream.core.id_hash import id_array
from mle_stream.core.snapshot_columns import decode_column, encode_column, encode_rows

P = TypeVar("P")


class Arrival(Enum):
    WAITING = "waiting"  # stored until its counterpart comes
    JOINED = "joined"  # paired for the first time
    CORRECTED = "corrected"  # a different label for an already joined prediction
    DUPLICATE = "duplicate"  # seen before: no effect


@dataclass(frozen=True, slots=True)
class JoinResult(Generic[P]):
    arrival: Arrival
    prediction: P | None = None
    label: LabelValue | None = None
    previous_label: LabelValue | None = None  # set for CORRECTED


@dataclass(slots=True)
class Joined(Generic[P]):
    """What a batch changed, as scored rows: weight +1 for a new pair, and for a correction -1
    with the old label then +1 with the new one."""

    predictions: list[P] = field(default_factory=list)
    labels: list[LabelValue] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # positions in the batch that changed nothing

    def extend(self, other: Joined[P]) -> None:
        self.predictions.extend(other.predictions)
        self.labels.extend(other.labels)
        self.weights.extend(other.weights)

    def add(self, index: int, result: JoinResult[P]) -> None:
        if result.arrival is Arrival.DUPLICATE:
            self.duplicates.append(index)
        elif result.arrival is Arrival.JOINED:
            self._row(result.prediction, result.label, 1.0)
        elif result.arrival is Arrival.CORRECTED:
            self._row(result.prediction, result.previous_label, -1.0)
            self._row(result.prediction, result.label, 1.0)

    def _row(self, prediction: P | None, label: LabelValue | None, weight: float) -> None:
        assert prediction is not None and label is not None  # set for JOINED and CORRECTED
        self.predictions.append(prediction)
        self.labels.append(label)
        self.weights.append(weight)


class LabelJoin(Generic[P]):
    def __init__(self, max_delay_ms: int, correction_ms: int, hash_ids: Callable[[Any], Any] = default_hash) -> None:
        if max_delay_ms <= 0 or correction_ms < 0:
            raise ValueError(f"need max_delay_ms > 0 and correction_ms >= 0, got {max_delay_ms}, {correction_ms}")
        self.max_delay_ms = max_delay_ms
        self.correction_ms = correction_ms
        self._predictions: dict[str, tuple[int, P]] = {}
        self._labels: dict[str, tuple[int, LabelValue]] = {}
        self._joined: dict[str, tuple[int, P, LabelValue]] = {}
        self._hash = hash_ids
        self._tomb_width = max(1, correction_ms // 4)
        self._tombstones: dict[int, tuple[int, set[int]]] = {}  # bucket -> (newest ts, hashes)
        self.expired_predictions = 0
        self.expired_labels = 0
        self.corrections = 0
        self.duplicates = 0

    def _horizons(self) -> tuple[tuple[dict[str, Any], int], ...]:
        return ((self._predictions, self.max_delay_ms), (self._labels, self.max_delay_ms),
                (self._joined, self.max_delay_ms + self.correction_ms))

    def _meet(self, ids: list[str], timestamps: list[int], of_predictions: bool) -> set[int]:
        """The entries each id's first record in the batch finds past their horizon go; returns
        the positions of the records that are past the horizon of a newer entry. A prediction
        meets only a waiting label: another prediction of its id makes it a duplicate."""
        seen: set[str] = set()
        dead: set[int] = set()
        for i, (prediction_id, ts) in enumerate(zip(ids, timestamps)):
            if prediction_id in seen:
                continue
            seen.add(prediction_id)
            if of_predictions and self._buried([prediction_id]):
                continue  # a duplicate of a prediction that expired unlabeled, whatever waits
            for entries, horizon in self._horizons():
                held = entries.get(prediction_id)
                if held is None or of_predictions and entries is not self._labels:
                    continue
                if ts - held[0] > horizon:
                    del entries[prediction_id]
                    if entries is self._predictions:
                        self.expired_predictions += 1
                        self._bury([(prediction_id, held)])
                    elif entries is self._labels:
                        self.expired_labels += 1
                elif held[0] - ts > horizon:
                    dead.add(i)
        return dead

    def _cuts(self, ids: list[str], timestamps: list[int]) -> list[int]:
        """Where a batch goes in parts: each later record of an id that the batch holds more than
        once, further apart than max_delay_ms (with the entry held for it)."""
        rows: dict[str, list[int]] = {}
        for i, prediction_id in enumerate(ids):
            rows.setdefault(prediction_id, []).append(i)
        cuts: list[int] = []
        for prediction_id, positions in rows.items():
            if len(positions) < 2:
                continue
            times = [timestamps[i] for i in positions]
            for entries, _ in self._horizons():
                if prediction_id in entries:
                    times.append(entries[prediction_id][0])
                    break
            if max(times) - min(times) > self.max_delay_ms:
                cuts += positions[1:]
        return sorted(cuts)

    def _in_parts(self, add: Callable[..., Joined[P]], cuts: list[int], *columns: list[Any]) -> Joined[P]:
        out: Joined[P] = Joined()
        bounds = [0, *cuts, len(columns[0])]
        for lo, hi in zip(bounds, bounds[1:]):
            part = add(*(c[lo:hi] for c in columns))
            out.predictions += part.predictions
            out.labels += part.labels
            out.weights += part.weights
            out.duplicates += [lo + d for d in part.duplicates]
        return out

    def add_prediction(self, prediction_id: str, timestamp: int, prediction: P) -> JoinResult[P]:
        if prediction_id in self._predictions or prediction_id in self._joined or self._buried([prediction_id]):
            self.duplicates += 1
            return JoinResult(Arrival.DUPLICATE)
        waiting = self._labels.pop(prediction_id, None)
        if waiting is None:
            self._predictions[prediction_id] = (timestamp, prediction)
            return JoinResult(Arrival.WAITING)
        self._joined[prediction_id] = (timestamp, prediction, waiting[1])
        return JoinResult(Arrival.JOINED, prediction, waiting[1])

    def add_label(self, prediction_id: str, timestamp: int, label: LabelValue) -> JoinResult[P]:
        pending = self._predictions.pop(prediction_id, None)
        if pending is not None:
            self._joined[prediction_id] = (pending[0], pending[1], label)
            return JoinResult(Arrival.JOINED, pending[1], label)
        joined = self._joined.get(prediction_id)
        if joined is not None:
            ts, prediction, previous = joined
            if _same(previous, label):
                self.duplicates += 1
                return JoinResult(Arrival.DUPLICATE)
            self._joined[prediction_id] = (ts, prediction, label)
            self.corrections += 1
            return JoinResult(Arrival.CORRECTED, prediction, label, previous)
        waiting = self._labels.get(prediction_id)
        if waiting is not None and _same(waiting[1], label):
            self.duplicates += 1
            return JoinResult(Arrival.DUPLICATE)
        # A newer label for a prediction not seen yet simply replaces the older one.
        self._labels.pop(prediction_id, None)
        self._labels[prediction_id] = (timestamp, label)
        return JoinResult(Arrival.WAITING)

    def add_predictions(self, ids: list[str], timestamps: list[int], predictions: list[P]) -> Joined[P]:
        """A batch of predictions, exactly as if added one by one; what they joined with.

        With distinct ids each record meets only its own state, so the batch splits into three
        groups handled with C-level dict calls: new ids (stored), ids whose label came first
        (joined), ids seen before (duplicates). Each dict still receives its entries in batch
        order, which expiry relies on. The same id twice in one batch goes one by one."""
        dead = self._meet(ids, timestamps, of_predictions=True)
        joined: Joined[P] = Joined()
        if dead:
            # Served, never to be labeled; their ids' later records in the batch are duplicates.
            gone = {ids[i] for i in dead}
            for i, prediction_id in enumerate(ids):
                if i in dead:
                    continue
                if prediction_id in gone:
                    self.duplicates += 1
                    joined.duplicates.append(i)
                else:
                    joined.add(i, self.add_prediction(prediction_id, timestamps[i], predictions[i]))
            self.expired_predictions += len(dead)
            self._bury([(ids[i], (timestamps[i], predictions[i])) for i in sorted(dead)])
            return joined
        batch = set(ids)
        if len(batch) < len(ids):
            for i, prediction_id in enumerate(ids):
                joined.add(i, self.add_prediction(prediction_id, timestamps[i], predictions[i]))
            return joined
        seen = (self._predictions.keys() & batch) | (self._joined.keys() & batch) | self._buried(ids)
        waiting = self._labels.keys() & batch - seen
        if not waiting and not seen:
            self._predictions.update(zip(ids, zip(timestamps, predictions)))
            return joined
        # An id is in at most one of the two sets: a label waiting for a seen id stays waiting.
        meets = list(map(waiting.__contains__, ids))  # flags, computed in C like the selections below
        if seen:
            dups = list(map(seen.__contains__, ids))
            joined.duplicates = list(compress(range(len(ids)), dups))
            self.duplicates += len(joined.duplicates)
            new = [not (m or d) for m, d in zip(meets, dups)]
        else:
            new = list(map(not_, meets))
        self._predictions.update(zip(compress(ids, new), zip(compress(timestamps, new), compress(predictions, new))))
        if waiting:
            meet_ids = list(compress(ids, meets))
            labels = list(map(itemgetter(1), map(self._labels.pop, meet_ids)))
            matched = list(compress(predictions, meets))
            self._joined.update(zip(meet_ids, zip(compress(timestamps, meets), matched, labels)))
            joined.predictions, joined.labels, joined.weights = matched, labels, [1.0] * len(matched)
        return joined

    def add_labels(self, ids: list[str], timestamps: list[int], labels: list[LabelValue]) -> Joined[P]:
        """A batch of labels, exactly as if added one by one; the joins and corrections they make.

        The usual label meets a waiting prediction: those are popped in C (map over dict.pop).
        Labels that came first are stored at once when they are all new; anything else (a
        correction, a duplicate, an id twice) takes the per-record path, after the batch's own
        joins so that a label repeated within the batch sees the first one."""
        cuts = self._cuts(ids, timestamps)
        if cuts:
            return self._in_parts(self.add_labels, cuts, ids, timestamps, labels)
        dead = self._meet(ids, timestamps, of_predictions=False)
        if dead:  # dropped; the batch's later labels of those ids are judged on their own
            self.expired_labels += len(dead)
            kept = [i for i in range(len(ids)) if i not in dead]
            part = self.add_labels([ids[i] for i in kept], [timestamps[i] for i in kept], [labels[i] for i in kept])
            part.duplicates = [kept[d] for d in part.duplicates]
            return part
        joined: Joined[P] = Joined()
        found: list[Any] = list(map(self._predictions.pop, ids, repeat(None)))
        hit = list(map(is_not, found, repeat(None)))
        hits = list(compress(found, hit))
        hit_ids, hit_labels = list(compress(ids, hit)), list(compress(labels, hit))
        # (ts, prediction) + (label,): the joined entries, built without a Python-level loop.
        self._joined.update(zip(hit_ids, map(tuple.__add__, hits, zip(hit_labels))))
        joined.predictions, joined.labels = list(map(itemgetter(1), hits)), hit_labels
        joined.weights = [1.0] * len(hits)
        if len(hits) == len(ids):
            return joined
        misses = list(compress(range(len(ids)), map(not_, hit)))
        early = {ids[i] for i in misses}
        if (len(early) == len(misses) and self._labels.keys().isdisjoint(early)
                and self._joined.keys().isdisjoint(early)):
            self._labels.update((ids[i], (timestamps[i], labels[i])) for i in misses)
            return joined
        for i in misses:
            joined.add(i, self.add_label(ids[i], timestamps[i], labels[i]))
        return joined

    def expire(self, watermark: int) -> None:
        unlabeled = _pop_older(self._predictions, watermark - self.max_delay_ms)
        self.expired_predictions += len(unlabeled)
        self._bury(unlabeled)
        self.expired_labels += len(_pop_older(self._labels, watermark - self.max_delay_ms))
        horizon = watermark - self.max_delay_ms - self.correction_ms
        _pop_older(self._joined, horizon)
        self._tombstones = {b: t for b, t in self._tombstones.items() if t[0] >= horizon}

    def _bury(self, unlabeled: list[tuple[str, tuple[int, Any]]]) -> None:
        """Tombstones for predictions that expired unlabeled: (id, (ts, prediction)) pairs."""
        if not unlabeled:
            return
        hashes = self._hash(id_array([pid for pid, _ in unlabeled])).tolist()
        for h, (_, (ts, _)) in zip(hashes, unlabeled):
            newest, held = self._tombstones.get(ts // self._tomb_width, (ts, set()))
            held.add(h)
            self._tombstones[ts // self._tomb_width] = (max(newest, ts), held)

    def _buried(self, ids: list[str]) -> set[str]:
        """The ids whose hash a tombstone holds."""
        if not self._tombstones or not ids:
            return set()
        hashes = self._hash(id_array(ids)).tolist()
        return {pid for pid, h in zip(ids, hashes) if any(h in held for _, held in self._tombstones.values())}

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data, column by column and in insertion order (expiry relies on that order).
        Columns of one type are packed (core/snapshot_columns.py); a stored prediction (P) must
        be JSON data or a tuple of it, and comes back with tuples as lists where a column is one."""
        def columns(entries: dict[str, tuple[Any, ...]], *names: str) -> dict[str, Any]:
            out: dict[str, Any] = {"id": encode_column(list(entries))}
            values = list(entries.values())
            for k, name in enumerate(names):
                column = list(map(itemgetter(k), values))
                out[name] = encode_rows(column) if name == "prediction" else encode_column(column)
            return out

        return {
            "kind": "label_join", "v": 2, "max_delay_ms": self.max_delay_ms, "correction_ms": self.correction_ms,
            "predictions": columns(self._predictions, "ts", "prediction"),
            "labels": columns(self._labels, "ts", "label"),
            "joined": columns(self._joined, "ts", "prediction", "label"),
            "counters": {"expired_predictions": self.expired_predictions, "expired_labels": self.expired_labels,
                         "corrections": self.corrections, "duplicates": self.duplicates},
        }

    @classmethod
    def restore(cls, data: dict[str, Any], predictions: Callable[[dict[str, Any]], list[P]]) -> LabelJoin[P]:
        """The join a snapshot was taken of; `predictions` turns the stored Ps of one dict back
        from what snapshot_columns.encode_rows made of them (decode_rows, or column by column
        with decode_row_columns)."""
        if not isinstance(data, dict) or data.get("kind") != "label_join" or data.get("v") != 2:
            raise ValueError(f"not a label_join v2 snapshot: kind={data.get('kind')!r}, v={data.get('v')!r}")
        join: LabelJoin[P] = cls(data["max_delay_ms"], data["correction_ms"])
        p, lab, j = data["predictions"], data["labels"], data["joined"]
        join._predictions = dict(zip(decode_column(p["id"]), zip(
            decode_column(p["ts"]), predictions(p["prediction"]))))
        join._labels = dict(zip(decode_column(lab["id"]), zip(decode_column(lab["ts"]), decode_column(lab["label"]))))
        join._joined = dict(zip(decode_column(j["id"]), zip(
            decode_column(j["ts"]), predictions(j["prediction"]), decode_column(j["label"]))))
        counters = data["counters"]
        join.expired_predictions, join.expired_labels = counters["expired_predictions"], counters["expired_labels"]
        join.corrections, join.duplicates = counters["corrections"], counters["duplicates"]
        return join

    def holds(self, ids: list[str]) -> list[bool]:
        """Per id: is a prediction with it held (waiting for its label, or joined and correctable)?"""
        return [i in self._predictions or i in self._joined for i in ids]

    def labels_of(self, ids: list[str]) -> list[LabelValue | None]:
        """Per id: the label this join holds for it (joined, or waiting for its prediction), else None."""
        out: list[LabelValue | None] = []
        for i in ids:
            joined, waiting = self._joined.get(i), self._labels.get(i)
            out.append(joined[2] if joined is not None else None if waiting is None else waiting[1])
        return out

    @property
    def pending(self) -> tuple[int, int]:
        """(predictions waiting for a label, labels waiting for a prediction)."""
        return len(self._predictions), len(self._labels)

    @property
    def joined(self) -> int:
        return len(self._joined)


def _same(a: LabelValue, b: LabelValue) -> bool:
    return type(a) is type(b) and a == b


def _pop_older(entries: dict[str, tuple], horizon: int) -> list[tuple[str, tuple]]:  # type: ignore[type-arg]
    # One pass to find the expired prefix, then the deletes: `next(iter(d))` after each delete
    # would rescan the deleted slots at the front of the dict, quadratic in what expires at once.
    expired = []
    for key, entry in entries.items():
        if entry[0] >= horizon:
            break
        expired.append((key, entry))
    for key, _ in expired:
        del entries[key]
    return expired
