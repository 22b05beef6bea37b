"""Event-time windows per model version and segment, built from panes.

Records are counted in tumbling *panes* of length `hop`; a window of length `size` (a multiple of
`hop`) is the merge of its size/hop consecutive panes. Tumbling windows are the case hop == size.
Storing panes, not windows, means a record updates one state however many hopping windows hold
it, and a window's state is exact because the states merge (counts, sketches), never average.

A record belongs to the pane of its prediction's timestamp, whenever it arrives. The watermark is
the largest prediction timestamp seen; a window is closed (ready to judge) once the watermark has
passed its end by `grace_ms`, and a pane is forgotten once every window holding it is older than
`retention_ms` past its end (late labels still update it until then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

S = TypeVar("S", bound="Mergeable")


class Mergeable(Protocol):
    def merge(self: S, other: S) -> S: ...


Segment = tuple[str, str] | None  # (dimension, value); None is the whole version


@dataclass(frozen=True)
class WindowSpec:
    size_ms: int
    hop_ms: int
    grace_ms: int
    retention_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.hop_ms <= 0:
            raise ValueError(f"window size ({self.size_ms} ms) and hop ({self.hop_ms} ms) must be > 0")
        if self.size_ms % self.hop_ms:
            raise ValueError(f"window size ({self.size_ms} ms) must be a multiple of the hop ({self.hop_ms} ms)")
        if self.grace_ms < 0 or self.retention_ms < self.grace_ms:
            raise ValueError(f"need 0 <= grace ({self.grace_ms} ms) <= retention ({self.retention_ms} ms)")


@dataclass(frozen=True, order=True)
class PaneKey:
    start: int
    version: str
    segment: Segment


class PaneTable(Generic[S]):
    def __init__(self, spec: WindowSpec, new_state: Callable[[], S]) -> None:
        self.spec = spec
        self._new_state = new_state
        self.watermark = -1
        self._panes: dict[PaneKey, S] = {}
        self._next_window: int | None = None  # start of the next window to close
        self._last_data: int | None = None  # start of the last window closed with data
        self.late_dropped = 0  # records whose panes were already forgotten

    @property
    def next_window(self) -> int | None:
        """Start of the next window to close; None before the first data. Windows before it are closed."""
        return self._next_window

    def pane_start(self, timestamp: int) -> int:
        return timestamp - timestamp % self.spec.hop_ms

    def observe(self, timestamp: int) -> None:
        self.watermark = max(self.watermark, timestamp)

    def is_retained(self, pane_start: int) -> bool:
        """False once the last window holding this pane is past retention."""
        return self.watermark < 0 or pane_start + self.spec.size_ms + self.spec.retention_ms > self.watermark

    def retained(self, pane_starts: npt.NDArray[np.int64], keys: npt.NDArray[np.int64] | int) -> npt.NDArray[np.bool_]:
        """Whether records of these panes, keyed so (event time as each arrived), still count: while
        every window holding the pane is within retention, the oldest of them included. (A record
        some of its windows no longer take would be in their results or not depending on when
        they were last published.) For tumbling windows, is_retained at the key."""
        return pane_starts + (self.spec.hop_ms + self.spec.retention_ms) > keys  # type: ignore[no-any-return]

    def state(self, pane_start: int, version: str, segment: Segment = None, checked: bool = False) -> S | None:
        """The pane's state (created on first use), or None once it is forgotten. With `checked`,
        the caller has checked retention when the records arrived, and they count even if event
        time has moved on since: their windows close only after this update (ModelEvaluator
        applies a whole worker batch at once)."""
        if not checked and not self.is_retained(pane_start):
            self.late_dropped += 1
            return None
        key = PaneKey(pane_start, version, segment)
        state = self._panes.get(key)
        if state is None:
            state = self._panes[key] = self._new_state()
        return state

    def peek(self, pane_start: int, version: str, segment: Segment = None) -> S | None:
        """The pane's state if it has one; never creates it."""
        return self._panes.get(PaneKey(pane_start, version, segment))

    def close_ready(self, held: Mapping[int, int] | None = None) -> list[int]:
        """Starts of the windows that became closed since the last call, oldest first.

        Every window start from the first data on is returned, windows without data included: a gap
        in the data must reach the policy (as INCONCLUSIVE), not vanish. Only in a gap longer than a
        window and its retention (a record stamped long before the others, or data back after a long
        silence), the empty windows more than that after the last window with data are skipped, so a
        gap still shows and the work stays bounded by the retention, whatever the timestamps. Which
        windows are skipped depends on the data alone, not on how far event time moved per call.

        `held`: data taken but not in the table yet (the caller holds it back until a window
        closes), as its panes and the smallest key of each (the caller's event time when it came):
        it counts for where the first window is, and as data of a window it is keyed before the cut
        (end + grace) of.
        """
        due = self._closable(held)
        if due is None:
            return []
        starts, self._next_window, self._last_data = due
        return starts

    def closing_due(self, held: Mapping[int, int] | None = None) -> bool:
        """Whether close_ready() would return a window now; changes nothing."""
        due = self._closable(held)
        return due is not None and len(due[0]) > 0

    def _closable(self, held: Mapping[int, int] | None = None) -> tuple[list[int], int | None, int | None] | None:
        """The starts close_ready would return now, from the next window to close on, where the
        next call starts and the last window with data then; None before event time has passed
        the end of any window."""
        spec = self.spec
        held = held or {}
        if self.watermark < 0 or not self._panes and self._next_window is None and not held:
            return None
        last = self.watermark - spec.grace_ms - spec.size_ms
        if last < 0:
            return None
        last -= last % spec.hop_ms
        first = self._next_window
        if first is None:
            first = self._first_window(held)
        if last < first:
            # Nothing to close yet; the first window stays undecided until one closes (data of an
            # earlier pane may still come).
            return [], first if self._next_window is not None else None, self._last_data
        cut = spec.size_ms + spec.grace_ms
        with_data = sorted({w for k in self._panes for w in self.windows_holding(k.start) if first <= w <= last}
                           | {w for p, key in held.items() for w in self.windows_holding(p)
                              if first <= w <= last and key < w + cut})
        reach = spec.size_ms + spec.retention_ms  # how far past data an empty window is still reported
        starts: list[int] = []
        previous = self._last_data
        expected = first
        for w in with_data + [last + spec.hop_ms]:
            end = w if previous is None else min(w, previous + reach + 1)
            starts.extend(range(expected, max(end, expected), spec.hop_ms))
            if w <= last:
                starts.append(w)
                previous = w
            expected = w + spec.hop_ms
        return starts, last + spec.hop_ms, previous

    def _first_window(self, held: Mapping[int, int]) -> int:
        """The oldest window with data in time for it: a pane state (rows go in before the first
        closing only in time for the oldest window holding their pane) or a held row keyed before
        the window's cut. A held row keyed past the cuts of every window holding it (read long
        after newer data) is no window's first data: as it must not be when it comes after the
        first closing, so that which window is first does not depend on how the input was
        batched. Without any row in time (not met: an input's first row is in time for its own
        window), the oldest window holding data."""
        spec = self.spec
        cut = spec.size_ms + spec.grace_ms
        candidates = [self.windows_holding(k.start)[0] for k in self._panes]
        for pane, key in held.items():
            earliest = key - cut + 1  # the oldest window start the row is keyed before the cut of
            earliest += -earliest % spec.hop_ms
            window = max(earliest, self.windows_holding(pane)[0])
            if window <= pane:
                candidates.append(window)
        if candidates:
            return min(candidates)
        return self.windows_holding(min(held))[0]

    def windows_holding(self, pane_start: int) -> range:
        """Starts of the windows that hold this pane, oldest first."""
        spec = self.spec
        return range(max(0, pane_start - spec.size_ms + spec.hop_ms), pane_start + 1, spec.hop_ms)

    def panes_of(self, window_start: int) -> range:
        return range(window_start, window_start + self.spec.size_ms, self.spec.hop_ms)

    def keys_in(self, window_start: int) -> set[tuple[str, Segment]]:
        """(version, segment) pairs with data in the window."""
        panes = set(self.panes_of(window_start))
        return {(k.version, k.segment) for k in self._panes if k.start in panes}

    def window(self, window_start: int, version: str, segment: Segment = None) -> S:
        """The merged state of the window's panes; an empty state when it holds no data."""
        merged = self._new_state()
        for start in self.panes_of(window_start):
            pane = self._panes.get(PaneKey(start, version, segment))
            if pane is not None:
                merged = merged.merge(pane)
        return merged

    def retire(self) -> int:
        """Forget panes past retention; returns how many."""
        old = [k for k in self._panes if not self.is_retained(k.start)]
        for key in old:
            del self._panes[key]
        return len(old)

    def __iter__(self) -> Iterator[tuple[PaneKey, S]]:
        return iter(self._panes.items())

    def __len__(self) -> int:
        return len(self._panes)

    # -- snapshot / restore -----------------------------------------------------------------------

    def snapshot(self, state_snapshot: Callable[[S], dict[str, Any]]) -> dict[str, Any]:
        """Everything the table knows, as plain JSON-able data; `state_snapshot` turns one pane's
        state into a dict. Panes keep their insertion order, so a restored table iterates alike."""
        return {
            "hop_ms": self.spec.hop_ms,
            "watermark": self.watermark,
            "next_window": self._next_window,
            "last_data": self._last_data,
            "late_dropped": self.late_dropped,
            "panes": [[k.start, k.version, None if k.segment is None else list(k.segment), state_snapshot(s)]
                      for k, s in self._panes.items()],
        }

    @classmethod
    def restore(cls, spec: WindowSpec, new_state: Callable[[], S], data: dict[str, Any],
                state_restore: Callable[[dict[str, Any]], S]) -> PaneTable[S]:
        """The table `snapshot` described, under `spec`. Size, grace and retention may differ from the
        spec the snapshot was taken under (they only decide which panes make a window and when); the
        hop may not, since it is the length of every stored pane."""
        if data["hop_ms"] != spec.hop_ms:
            raise ValueError(f"cannot restore panes of {data['hop_ms']} ms into windows with a hop of "
                             f"{spec.hop_ms} ms: the pane length (windows.hop) changed since the snapshot")
        table = cls(spec, new_state)
        table.watermark = int(data["watermark"])
        table._next_window = None if data["next_window"] is None else int(data["next_window"])
        table._last_data = None if data.get("last_data") is None else int(data["last_data"])  # absent before
        table.late_dropped = int(data["late_dropped"])
        for start, version, segment, state in data["panes"]:
            key = PaneKey(int(start), str(version), None if segment is None else (str(segment[0]), str(segment[1])))
            table._panes[key] = state_restore(state)
        return table
