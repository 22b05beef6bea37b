"""Which REVISED results are worth publishing: only those whose numbers changed.

After a window closed, any pane update (a late label, a correction, a late prediction) makes the
evaluator report every version and segment of every window holding that pane as REVISED; most of
them are the very numbers already published (another version's pane changed, or a correction gave
the same outcome back). `Revisions` keeps a short digest of the last published CLOSED or REVISED
result per (window, version, segment), from its closing until the window leaves retention, and
lets a REVISED one through only when its digest differs. A digest is 8 bytes of BLAKE2b over the
result's numbers as canonical JSON (what a consumer sees, not status, verdict or emission time):
at 1-minute hops over a 7-day retention with a dozen versions and segments, about 120,000 of them
(their memory and cost: docs/performance-history.md).
The digests are in the evaluator's checkpoint, so a restarted worker does not publish again what it
had published; a checkpoint without them only means one more REVISED per window, as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mle_stream.core.events import DriftTable, MetricSnapshot

__all__ = ["Revisions", "digest"]

Result = MetricSnapshot | DriftTable
# Within a window: (what the result is, version, segment); "metrics" or "drift", segment None for
# a whole version (drift tables are per whole version only).
Key = tuple[str, str, str | None]
_SIZE = 8  # bytes of a digest: a false "unchanged" needs two different results to collide, 2**-64


def _plain(value: Any) -> Any:
    """JSON for what json cannot take as is (numpy scalars in drift statistics)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def digest(result: Result) -> bytes:
    """8 bytes that change when the result's published numbers do."""
    if isinstance(result, MetricSnapshot):
        numbers: Any = [result.predictions, result.labeled, dict(result.metrics)]
    else:
        numbers = [result.reference, {k: dict(v) for k, v in result.features.items()}, list(result.drifted),
                   result.drifted_share, [dict(a) for a in result.concept_drift]]
    # sort_keys and fixed separators: the same numbers give the same bytes after a restart too.
    text = json.dumps(numbers, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.blake2b(text.encode(), digest_size=_SIZE).digest()


def _key(result: Result) -> Key:
    if isinstance(result, MetricSnapshot):
        return ("metrics", result.version, result.segment)
    return ("drift", result.version, None)


class Revisions:
    """Digests of the last published CLOSED / REVISED result per (window start, version, segment)."""

    def __init__(self) -> None:
        # Every window has much the same keys, so a key has one slot for all windows, and a window
        # holds its digests in one bytearray, 8 bytes a slot (zeros: none known): a fraction of the
        # memory of a dict per window (docs/performance-history.md).
        self._slots: dict[Key, int] = {}
        # window start -> digests by slot. Windows close in order, so starts come in rising order
        # and `forget_before` pops from the front; `_sorted` is False after one came out of order
        # (a REVISED window whose CLOSED digest this process never had): the next forget sorts.
        self._windows: dict[int, bytearray] = {}
        self._sorted = True

    def publish(self, result: Result) -> bool:
        """Whether to publish `result`: OPEN always (a window still filling is not tracked), CLOSED
        always, REVISED only when its numbers differ from the last published CLOSED / REVISED of
        the same window, version and segment (or none is known). What is published is remembered."""
        if result.status == "OPEN":
            return True
        key = _key(result)
        slot = self._slots.setdefault(key, len(self._slots))
        digests = self._windows.get(result.window_start)
        if digests is None:
            if self._windows and result.window_start < next(reversed(self._windows)):
                self._sorted = False
            digests = self._windows[result.window_start] = bytearray()
        at = slot * _SIZE
        if len(digests) < at + _SIZE:
            digests.extend(bytes(at + _SIZE - len(digests)))
        new = digest(result)
        if result.status == "REVISED" and digests[at:at + _SIZE] == new:
            return False
        digests[at:at + _SIZE] = new
        return True

    def forget_before(self, start: int) -> None:
        """Drop the digests of windows starting before `start`: no update can reach them any more."""
        if not self._sorted:
            self._windows, self._sorted = dict(sorted(self._windows.items())), True
        windows = self._windows
        while windows:
            first = next(iter(windows))
            if first >= start:
                break
            del windows[first]

    def __len__(self) -> int:
        """How many digests are known."""
        return sum(1 for digests in self._windows.values() for at in range(0, len(digests), _SIZE)
                   if any(digests[at:at + _SIZE]))

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data: the keys in slot order, and per window its digests as hex."""
        return {"v": 1, "keys": [list(key) for key in self._slots],
                "windows": [[start, digests.hex()] for start, digests in self._windows.items()]}

    @classmethod
    def restore(cls, data: Mapping[str, Any] | None) -> Revisions:
        """The digests `snapshot` gave; None (a checkpoint from before them) gives none."""
        out = cls()
        if not data:
            return out
        if data.get("v") != 1:
            raise ValueError(f"not a revisions v1 snapshot: v={data.get('v')!r}")
        for kind, version, segment in data["keys"]:
            out._slots[(str(kind), str(version), None if segment is None else str(segment))] = len(out._slots)
        for start, hexdigests in sorted(data["windows"], key=lambda w: int(w[0])):
            out._windows[int(start)] = bytearray.fromhex(hexdigests)
        return out
