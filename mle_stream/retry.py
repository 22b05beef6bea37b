"""Retrying transient failures with exponential backoff: one policy for every remote call mle-stream
makes (the Kubernetes API server, the MLflow registry, a webhook).

A caller says which failures are worth another try (`transient` returns a description, or None
to let the exception through at once); `retrying` tries `backoff.attempts` times in all, waiting
`base_delay_s` after the first failure and twice as long after each further one, up to
`max_delay_s`, then raises RetriesExhausted with the count, the time spent and the last cause, the
last exception chained. The caller turns that into its own error, naming what it was doing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be a whole number >= 1, got {self.attempts!r}")
        if not 0 <= self.base_delay_s <= self.max_delay_s:
            raise ValueError(f"need 0 <= base_delay_s <= max_delay_s, got {self.base_delay_s!r} and "
                             f"{self.max_delay_s!r}")

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 for the first)."""
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(failures - 1, 60))  # no float overflow

    @property
    def total_delay_s(self) -> float:
        """How long all the waits take together: the outage the retries ride out."""
        return sum(self.delay(n) for n in range(1, self.attempts))


class RetriesExhausted(Exception):
    def __init__(self, attempts: int, elapsed_s: float, last: str) -> None:
        super().__init__(f"{attempts} attempts failed over {elapsed_s:.1f} s; last error: {last}")
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last = last


def retrying(action: Callable[[], T], backoff: Backoff, transient: Callable[[Exception], str | None],
             on_retry: Callable[[int, str, float], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """`action()`, again after each failure `transient` describes (it may also raise an error of its
    own instead); `on_retry(attempt, description, delay_s)` is told before each wait, e.g. to log it."""
    started = time.monotonic()
    for attempt in range(1, backoff.attempts + 1):
        try:
            return action()
        except Exception as exc:
            why = transient(exc)
            if why is None:
                raise
            if attempt == backoff.attempts:
                raise RetriesExhausted(attempt, time.monotonic() - started, why) from exc
            delay = backoff.delay(attempt)
            if on_retry is not None:
                on_retry(attempt, why, delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
