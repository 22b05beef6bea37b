"""The one retry policy: how long it waits, what it retries, what it says when it gives up."""

import pytest

from mle_stream.retry import Backoff, RetriesExhausted, retrying


def test_delays_double_up_to_the_cap_and_add_up() -> None:
    b = Backoff(attempts=6, base_delay_s=0.5, max_delay_s=3.0)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.total_delay_s == 9.5
    assert Backoff(1, 5.0, 120.0).delay(10_000) == 120.0  # no overflow after days of failures


@pytest.mark.parametrize("bad", [dict(attempts=0), dict(attempts=True), dict(base_delay_s=-1.0),
                                 dict(base_delay_s=2.0, max_delay_s=1.0)])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Backoff(**bad)


def test_retries_transient_failures_then_succeeds_and_lets_others_through() -> None:
    calls, waits, told = [], [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    def transient(exc: Exception) -> str | None:
        return str(exc) if isinstance(exc, ConnectionError) else None

    assert retrying(flaky, Backoff(5, 0.1, 1.0), transient, lambda *a: told.append(a), waits.append) == "ok"
    assert waits == [0.1, 0.2] and told == [(1, "refused", 0.1), (2, "refused", 0.2)]

    def broken() -> None:
        raise KeyError("not transient")

    with pytest.raises(KeyError):
        retrying(broken, Backoff(5, 0.1, 1.0), transient, sleep=waits.append)
    assert waits == [0.1, 0.2]  # no wait for an error that is not transient


def test_gives_up_after_the_attempts_with_the_count_and_the_last_cause() -> None:
    def down() -> None:
        raise ConnectionError("refused")

    with pytest.raises(RetriesExhausted) as caught:
        retrying(down, Backoff(3, 0.0, 0.0), lambda e: f"{type(e).__name__}: {e}", sleep=lambda s: None)
    assert caught.value.attempts == 3 and caught.value.last == "ConnectionError: refused"
    assert "3 attempts failed" in str(caught.value) and isinstance(caught.value.__cause__, ConnectionError)
