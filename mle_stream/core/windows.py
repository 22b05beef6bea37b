"""Event-time tumbling windows per model version.

A record belongs to the window of its prediction's timestamp, whenever it arrives. The watermark is
the largest prediction timestamp seen; a window is closed (ready to judge) once the watermark has
passed its end by `grace_ms` (time for its labels to arrive), and forgotten once it has passed it
by `retention_ms` (late labels still update it until then).
"""

from __future__ import annotations

from dataclasses import dataclass

from mle_stream.core.window_metrics import WindowMetrics


@dataclass(frozen=True, order=True)
class WindowKey:
    start: int
    version: str


class WindowTable:
    def __init__(self, size_ms: int, grace_ms: int, retention_ms: int) -> None:
        if size_ms <= 0:
            raise ValueError(f"window size must be > 0 ms, got {size_ms}")
        if grace_ms < 0 or retention_ms < grace_ms:
            raise ValueError(f"need 0 <= grace ({grace_ms} ms) <= retention ({retention_ms} ms)")
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        self.retention_ms = retention_ms
        self.watermark = -1
        self._windows: dict[WindowKey, WindowMetrics] = {}
        self._closed_through = -1  # every window starting at or before this has been closed
        self.late_dropped = 0  # records whose window was already forgotten

    def start_of(self, timestamp: int) -> int:
        return timestamp - timestamp % self.size_ms

    def observe(self, timestamp: int) -> None:
        self.watermark = max(self.watermark, timestamp)

    def metrics_for(self, version: str, timestamp: int) -> WindowMetrics | None:
        """The state of the window holding `timestamp`, or None once that window is forgotten."""
        start = self.start_of(timestamp)
        if self.watermark >= 0 and start + self.size_ms + self.retention_ms <= self.watermark:
            self.late_dropped += 1
            return None
        key = WindowKey(start, version)
        state = self._windows.get(key)
        if state is None:
            state = self._windows[key] = WindowMetrics()
        return state

    def close_ready(self) -> list[int]:
        """Starts of windows that became closed since the last call, oldest first.

        Every window start between the previous close and now is returned, including windows with no
        data at all: a gap in the data must reach the policy (as INCONCLUSIVE), not vanish.
        """
        if self.watermark < 0:
            return []
        last_closable = self.start_of(self.watermark - self.grace_ms) - self.size_ms
        if last_closable < 0 or last_closable <= self._closed_through:
            return []
        if self._closed_through < 0:
            # Start from the first window we hold data for, not from the epoch.
            first = min((k.start for k in self._windows), default=last_closable)
        else:
            first = self._closed_through + self.size_ms
        self._closed_through = last_closable
        return list(range(first, last_closable + 1, self.size_ms))

    def get(self, version: str, start: int) -> WindowMetrics:
        return self._windows.get(WindowKey(start, version)) or WindowMetrics()

    def retire(self) -> int:
        """Forget windows past retention; returns how many were dropped."""
        horizon = self.watermark - self.retention_ms
        old = [k for k in self._windows if k.start + self.size_ms <= horizon]
        for key in old:
            del self._windows[key]
        return len(old)

    def __len__(self) -> int:
        return len(self._windows)
