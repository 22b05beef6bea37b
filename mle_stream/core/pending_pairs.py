"""The halves of request/response pairs still waiting for their other half, bounded in count and bytes.

KServe's logger sends the request and the response of one call as two HTTP posts from a pool of
workers, so either may arrive first, and a response is never sent for a failed call. A half waits
here at most `timeout_ms`; when the table is full the oldest half makes room. Both drops are
returned to the caller to count. The clock is the caller's (milliseconds), so this is pure.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Dropped:
    kind: str  # "request" or "response": the half that never found its counterpart
    why: str  # "expired" (timeout) or "evicted" (the table was full)


class PendingPairs(Generic[T]):
    """offer() a half; it returns (request, response) once both are in, else None."""

    def __init__(self, max_entries: int, max_bytes: int, timeout_ms: int) -> None:
        if max_entries < 1 or max_bytes < 1 or timeout_ms < 1:
            raise ValueError(f"max_entries, max_bytes and timeout_ms must be >= 1, got "
                             f"{max_entries}, {max_bytes}, {timeout_ms}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.timeout_ms = timeout_ms
        self._waiting: OrderedDict[Hashable, tuple[str, T, int, int]] = OrderedDict()  # kind, half, size, since
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def bytes(self) -> int:
        return self._bytes

    def waiting(self, key: Hashable) -> str | None:
        """The kind of the half waiting under `key`, if any."""
        entry = self._waiting.get(key)
        return entry[0] if entry else None

    def offer(self, key: Hashable, kind: str, half: T, size: int,
              now_ms: int) -> tuple[tuple[T, T] | None, list[Dropped]]:
        """Pair `half` with its waiting counterpart, or keep it. The caller checks duplicates first
        (waiting(key) == kind): a second half of the same kind replaces the first here."""
        dropped = self.expire(now_ms)
        entry = self._waiting.get(key)
        if entry is not None and entry[0] != kind:
            del self._waiting[key]
            self._bytes -= entry[2]
            other = entry[1]
            return ((other, half) if kind == "response" else (half, other)), dropped
        if entry is not None:
            del self._waiting[key]
            self._bytes -= entry[2]
        while self._waiting and (len(self._waiting) >= self.max_entries or self._bytes + size > self.max_bytes):
            _, (old_kind, _, old_size, _) = self._waiting.popitem(last=False)
            self._bytes -= old_size
            dropped.append(Dropped(old_kind, "evicted"))
        self._waiting[key] = (kind, half, size, now_ms)
        self._bytes += size
        return None, dropped

    def expire(self, now_ms: int) -> list[Dropped]:
        """Drop the halves that waited longer than timeout_ms."""
        dropped = []
        while self._waiting:
            key, (kind, _, size, since) = next(iter(self._waiting.items()))
            if now_ms - since <= self.timeout_ms:
                break
            del self._waiting[key]
            self._bytes -= size
            dropped.append(Dropped(kind, "expired"))
        return dropped
