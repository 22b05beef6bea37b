import pytest

from mle_stream.core.windows import PaneTable, WindowSpec


class Count:
    """A minimal mergeable state: how many records, from which panes."""

    def __init__(self, items: tuple[int, ...] = ()) -> None:
        self.items = items

    def merge(self, other: "Count") -> "Count":
        return Count(self.items + other.items)


def table(size: int, hop: int, grace: int = 0, retention: int = 10_000) -> PaneTable[Count]:
    return PaneTable(WindowSpec(size, hop, grace, retention), Count)


def add(t: PaneTable[Count], ts: int, version: str = "1") -> None:
    t.observe(ts)
    state = t.state(t.pane_start(ts), version)
    if state is not None:
        state.items += (ts,)


def test_tumbling_windows_close_by_event_time_plus_grace() -> None:
    t = table(1000, 1000, grace=500)
    add(t, 10_100)
    add(t, 11_400)  # [10000, 11000) needs event time >= 11500 to close
    assert t.close_ready() == []
    add(t, 11_500)
    assert t.close_ready() == [10_000]
    assert t.close_ready() == []  # each window closes once
    add(t, 14_600)  # windows without data close too: a gap must reach the policy
    assert t.close_ready() == [11_000, 12_000, 13_000]
    assert t.window(10_000, "1").items == (10_100,)
    assert t.window(12_000, "1").items == ()


def test_hopping_windows_are_merges_of_their_panes() -> None:
    t = table(3000, 1000)
    for ts in (1_000, 1_500, 2_200, 3_700, 4_100, 5_999):
        add(t, ts)
    add(t, 9_000)
    # Windows start every second; the first one that holds the first pane starts at 1000 - 3000 + 1000.
    assert t.close_ready() == [0, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000]
    expected = {0: (1_000, 1_500, 2_200), 1_000: (1_000, 1_500, 2_200, 3_700),
                2_000: (2_200, 3_700, 4_100), 3_000: (3_700, 4_100, 5_999), 4_000: (4_100, 5_999)}
    for start, items in expected.items():
        assert sorted(t.window(start, "1").items) == sorted(items), start
    # Every record is stored once, whatever the number of windows holding it.
    assert sum(len(s.items) for _, s in t) == 7


def test_late_records_update_retained_panes_and_are_dropped_after_retention() -> None:
    t = table(1000, 1000, retention=2000)
    add(t, 1_000)
    add(t, 3_500)
    add(t, 1_200)  # pane 1000's window ends 2000 + 2000 retention > 3500: still kept
    assert t.window(1_000, "1").items == (1_000, 1_200)
    add(t, 4_000)
    assert t.state(1_000, "1") is None and t.late_dropped == 1
    assert t.retire() == 1


def test_versions_and_segments_are_kept_apart() -> None:
    t = table(1000, 1000)
    add(t, 100, "1")
    add(t, 200, "2")
    t.state(0, "2", ("country", "DE")).items += (200,)
    assert t.keys_in(0) == {("1", None), ("2", None), ("2", ("country", "DE"))}
    assert t.window(0, "2", ("country", "DE")).items == (200,)


def test_bad_specs_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        WindowSpec(0, 0, 0, 0)
    with pytest.raises(ValueError, match="multiple of the hop"):
        WindowSpec(1000, 300, 0, 0)
    with pytest.raises(ValueError, match="grace"):
        WindowSpec(1000, 1000, 5000, 1000)
