"""Shadow mode's state in a model evaluator (core/shadow.py says what shadow mode is): the
shadow's own label join beside production's, the pairing of the two sides by prediction_id,
and the pairs not yet in the pane states, each with the event time it came to be (its key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.column_join import ColumnJoin, ColumnJoined
from mle_stream.core.columns import IntArray
from mle_stream.core.events import LabelValue
from mle_stream.core.segments import WHOLE, segments_from_json
from mle_stream.core.shadow import Pending, ShadowPairing
from mle_stream.core.snapshot_columns import decode_column, decode_row_columns, encode_column, encode_rows

Pair = tuple[Pending, Pending]  # (shadow, production)


class ShadowMode:
    """The shadow's predictions share their ids with production's, so they wait for the same
    labels in a join of their own (`join`), and are paired with production's (`pairing`)."""

    def __init__(self, join: ColumnJoin, pairing: ShadowPairing) -> None:
        self.join = join
        self.pairing = pairing
        self._pairs: list[Pair] = []  # not yet in the pane states
        self._keys: list[int] = []  # per pair, when it came to be in event time

    def __len__(self) -> int:
        """Pairs held back from the pane states."""
        return len(self._pairs)

    def add_predictions(self, production: ColumnJoin, ids: Sequence[str] | np.ndarray, ts: IntArray,
                        payload: dict[str, np.ndarray], shadow: npt.NDArray[np.bool_],
                        versions: Sequence[str]) -> ColumnJoined:
        """Predictions into the label joins: production's into `production`, the shadow's
        (`shadow`) into this one's, with the label production's join already holds for the id;
        both sides into the pairing. `versions`: version names by the payload's codes."""

        def rows_of(rows: IntArray) -> tuple[list[str], IntArray, dict[str, np.ndarray]]:
            return [ids[i] for i in rows.tolist()], ts[rows], {k: v[rows] for k, v in payload.items()}

        main, mirrored = np.flatnonzero(~shadow), np.flatnonzero(shadow)
        joined = production.add_predictions(*rows_of(main))
        parts, duplicates = [joined], [main[joined.duplicates]]
        if len(mirrored):
            shadow_joined = self.join.add_predictions(*rows_of(mirrored))
            parts.append(shadow_joined)
            duplicates.append(mirrored[shadow_joined.duplicates])
            new = np.setdiff1d(mirrored, duplicates[-1])
            labels = production.labels_of([ids[i] for i in new.tolist()])
            known = [(i, label) for i, label in zip(new.tolist(), labels) if label is not None]
            if known:  # the label came first: production's join has it
                rows = np.array([i for i, _ in known], dtype=np.int64)
                parts.append(self.join.add_labels([ids[i] for i, _ in known], ts[rows],
                                                  [label for _, label in known]))
        out = ColumnJoined.concat(parts)
        out.duplicates = np.sort(np.concatenate(duplicates))
        fresh = np.setdiff1d(np.arange(len(shadow)), out.duplicates)
        self._pairs.extend(self.pairing.add([ids[i] for i in fresh.tolist()], ts[fresh].tolist(),
                                            _pending(payload, fresh, versions), shadow[fresh].tolist(), self._keys))
        return out

    def add_labels(self, ids: Sequence[str], keys: IntArray, truths: list[LabelValue]) -> ColumnJoined | None:
        """Labels, of which only those of shadow predictions this join holds: a label that comes
        before its shadow prediction is found in production's join when the shadow prediction
        comes (add_predictions), so mirrors that sample a few requests do not keep every other
        label for max_delay."""
        held = np.flatnonzero(self.join.holds(ids))
        if not len(held):
            return None
        return self.join.add_labels([ids[i] for i in held.tolist()], keys[held], [truths[i] for i in held.tolist()])

    def held(self) -> tuple[IntArray, IntArray] | None:
        """The held-back pairs' panes (the shadow side's) and keys, if any."""
        if not self._pairs:
            return None
        return (np.fromiter((pane for (pane, *_), _ in self._pairs), dtype=np.int64, count=len(self._pairs)),
                np.array(self._keys, dtype=np.int64))

    def take_ready(self, ready: Callable[[IntArray, IntArray], npt.NDArray[np.bool_]]) -> tuple[list[Pair], list[int]]:
        """The held-back pairs (and their keys) that `ready(panes, keys)` lets go into the pane
        states now; the others stay."""
        held = self.held()
        if held is None:
            return [], []
        go = ready(*held).tolist()
        out = [pair for pair, ok in zip(self._pairs, go) if ok], [k for k, ok in zip(self._keys, go) if ok]
        self._pairs = [pair for pair, ok in zip(self._pairs, go) if not ok]
        self._keys = [k for k, ok in zip(self._keys, go) if not ok]
        return out

    def expire(self, watermark: int) -> None:
        self.join.expire(watermark)
        self.pairing.expire(watermark)

    def snapshot(self) -> dict[str, Any]:
        """The join and the pairing, under the keys of the model evaluator's snapshot."""
        return {"shadow_join": self.join.snapshot(), "pairing": self.pairing.snapshot()}

    def deferred_snapshot(self) -> dict[str, Any] | None:
        """The held-back pairs, as the evaluator's snapshot keeps them under deferred.pairs."""
        if not self._pairs:
            return None
        return {"shadow": encode_rows([s for s, _ in self._pairs]),
                "production": encode_rows([p for _, p in self._pairs]), "keys": encode_column(self._keys)}

    @classmethod
    def restore(cls, data: Mapping[str, Any],
                decoders: Mapping[str, Callable[[list[Any]], Sequence[Any]]]) -> ShadowMode:
        """From the evaluator's snapshot (its shadow_join and pairing); the pairs held back come
        with restore_deferred."""
        return cls(ColumnJoin.restore(data["shadow_join"], decoders),
                   ShadowPairing.restore(data["pairing"], pending_from_json))

    def restore_deferred(self, data: Mapping[str, Any] | None) -> None:
        if data:
            self._pairs = list(zip(pending_from_json(data["shadow"]), pending_from_json(data["production"])))
            self._keys = [int(k) for k in decode_column(data["keys"])]


def _pending(payload: dict[str, np.ndarray], rows: IntArray, versions: Sequence[str]) -> list[Pending]:
    """Rows of a join payload as shadow pairing keeps them."""
    return list(zip(payload["pane"][rows].tolist(), [versions[c] for c in payload["version"][rows].tolist()],
                    payload["segments"][rows].tolist() if "segments" in payload else repeat(WHOLE),
                    payload["output"][rows].tolist(),
                    payload["decision"][rows].tolist() if "decision" in payload else repeat(None)))


def pending_from_json(data: dict[str, Any]) -> list[Pending]:
    """Stored Pending rows back from JSON data, column by column. Pane starts and version names
    come back as one shared object each, as the evaluator keeps them (JSON data has a new one
    per entry), and a whole-version record's segments as WHOLE itself."""
    columns = decode_row_columns(data)
    if not columns:
        return []
    panes, versions, segments, outputs, decisions = columns
    if all(len(s) == 1 for s in segments):
        segs: Any = repeat(WHOLE)
    else:
        segs = segments_from_json(segments)
    return list(zip(map({p: p for p in set(panes)}.__getitem__, panes),
                    map({v: v for v in set(versions)}.__getitem__, versions), segs, outputs, decisions))


__all__ = ["Pair", "ShadowMode", "pending_from_json"]
