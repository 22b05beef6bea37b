"""When the demo stops: the rollback timeout bounds the wait for the rollback only; --keep-running
comes on top of it. (tests/test_demo_e2e.py runs the whole demo.)"""

from __future__ import annotations

from mle_stream.demo import next_step


def test_keep_running_after_a_late_rollback_does_not_count_toward_the_timeout() -> None:
    # The README's `--keep-running 120` with the default --timeout 150, the rollback seen at 47 s.
    timing = {"timeout_s": 150.0, "after_rollback_s": 120.0}
    assert next_step(151.0, 47.0, **timing) is None  # past the timeout, still keeping things running
    assert next_step(166.9, 47.0, **timing) is None
    assert next_step(167.0, 47.0, **timing) == "done"


def test_without_a_rollback_the_demo_gives_up_after_the_timeout() -> None:
    timing = {"timeout_s": 150.0, "after_rollback_s": 3.0}
    assert next_step(150.0, None, **timing) is None
    assert next_step(150.1, None, **timing) == "timeout"
    assert next_step(149.0, 148.0, **timing) is None  # a rollback just in time gets its 3 s
    assert next_step(151.0, 148.0, **timing) == "done"
