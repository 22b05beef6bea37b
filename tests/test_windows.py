import pytest

from mle_stream.core.windows import WindowTable


def test_window_assignment_and_closing_by_event_time() -> None:
    w = WindowTable(size_ms=1000, grace_ms=500, retention_ms=5000)
    assert w.start_of(12_345) == 12_000
    w.observe(10_100)
    w.metrics_for("1", 10_100).add_prediction(1.0, False)
    w.observe(11_400)  # window [10000, 11000) needs event time >= 11500 to close
    assert w.close_ready() == []
    w.observe(11_500)
    assert w.close_ready() == [10_000]
    assert w.close_ready() == []  # each window closes once
    w.observe(14_600)  # [11000,12000), [12000,13000), [13000,14000) close, even the empty ones
    assert w.close_ready() == [11_000, 12_000, 13_000]


def test_late_records_update_retained_windows_and_are_dropped_after_retention() -> None:
    w = WindowTable(size_ms=1000, grace_ms=0, retention_ms=2000)
    w.observe(1_000)
    w.metrics_for("1", 1_000).add_prediction(None, False)
    w.observe(3_500)
    late = w.metrics_for("1", 1_200)  # window [1000, 2000) ends 2000 + 2000 retention > 3500: kept
    assert late is not None and late.predictions == 1
    w.observe(4_000)
    assert w.metrics_for("1", 1_200) is None and w.late_dropped == 1
    assert w.retire() == 1 and len(w) == 0


def test_bad_sizes_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="window size"):
        WindowTable(0, 0, 0)
    with pytest.raises(ValueError, match="grace"):
        WindowTable(1000, 5000, 1000)
