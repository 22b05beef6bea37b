import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_a_record_stamped_long_before_the_rest_closes_its_window_and_the_gap_once_not_every_window_between() -> None:
    t = table(1000, 1000, grace=0, retention=3000)
    add(t, 5)  # an ancient timestamp first, then event time jumps 10**7 ms on
    add(t, 10_000_000)
    # The record's window, then the empty windows up to a window and its retention (4 s) after it.
    assert t.close_ready() == [0, 1_000, 2_000, 3_000, 4_000]
    assert t.window(0, "1").items == (5,)


def reference_close(t: PaneTable[Count], first: int, last: int, last_data: int | None) -> tuple[list[int], int | None]:
    """Every window from `first` to `last` (as close_ready returned them before it skipped any),
    keeping those with data and the empty ones at most a window and its retention after the last
    window with data; and the last window with data then."""
    spec, kept = t.spec, []
    for s in range(first, last + 1, spec.hop_ms):
        has_data = any(k.start in t.panes_of(s) for k, _ in t)
        if has_data or last_data is None or s - last_data <= spec.size_ms + spec.retention_ms:
            kept.append(s)
        if has_data:
            last_data = s
    return kept, last_data


@settings(max_examples=200, deadline=None)
@given(stamps=st.lists(st.integers(0, 200_000), min_size=1, max_size=12), hop=st.sampled_from([500, 1000]),
       panes_per_window=st.integers(1, 3), grace=st.sampled_from([0, 500]),
       retention=st.sampled_from([500, 2000, 7000]))
def test_windows_of_a_long_gap_are_skipped_only_when_empty_and_further_than_retention_from_data(
        stamps, hop, panes_per_window, grace, retention) -> None:
    t = table(hop * panes_per_window, hop, grace=grace, retention=max(grace, retention))
    last_data = None
    for ts in stamps:
        first = t.next_window
        add(t, ts)
        if first is None and len(t):
            first = t.windows_holding(min(k.start for k, _ in t))[0]
        last = t.watermark - t.spec.grace_ms - t.spec.size_ms
        want: list[int] = []
        if first is not None and last >= 0:
            want, last_data = reference_close(t, first, last - last % hop, last_data)
        assert t.close_ready() == want


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


# -- snapshot / restore ---------------------------------------------------------------------------

def count_snapshot(c: Count) -> dict:
    return {"items": list(c.items)}


def count_restore(data: dict) -> Count:
    return Count(tuple(data["items"]))


def roundtrip(t: PaneTable[Count]) -> PaneTable[Count]:
    """Through JSON text, as a checkpoint stores it."""
    data = json.loads(json.dumps(t.snapshot(count_snapshot)))
    return PaneTable.restore(t.spec, Count, data, count_restore)


def observable(t: PaneTable[Count]) -> tuple:
    """Everything a caller can see of a table (panes in iteration order)."""
    return (t.watermark, t.next_window, t.late_dropped, len(t),
            [(k, s.items) for k, s in t])


def test_a_restored_table_is_the_same_table() -> None:
    t = table(3000, 1000, grace=500, retention=4000)
    for ts in (1_000, 1_500, 2_200, 3_700):
        add(t, ts)
    t.state(2_000, "2", ("country", "DE")).items += (2_100,)
    add(t, 6_000)
    assert t.close_ready() == [0, 1_000, 2_000]
    add(t, 900)  # late, into a closed window: pane 0 is kept until 0 + 3000 + 4000
    r = roundtrip(t)
    assert observable(r) == observable(t)
    assert r.keys_in(2_000) == t.keys_in(2_000) == {("1", None), ("2", ("country", "DE"))}
    # ... and both go on alike: the same windows close, the same panes are forgotten.
    for x in (t, r):
        add(x, 12_000)
    assert r.close_ready() == t.close_ready() == list(range(3_000, 9_000, 1_000))
    assert r.retire() == t.retire()
    assert observable(r) == observable(t)


def test_an_empty_table_round_trips() -> None:
    t = table(1000, 1000)
    r = roundtrip(t)
    assert observable(r) == observable(t) and r.next_window is None
    add(t, 100)
    add(r, 100)
    assert observable(r) == observable(t)


def test_restore_refuses_another_pane_length() -> None:
    t = table(2000, 1000)
    add(t, 100)
    data = t.snapshot(count_snapshot)
    with pytest.raises(ValueError, match="hop of 500 ms"):
        PaneTable.restore(WindowSpec(2000, 500, 0, 10_000), Count, data, count_restore)
    # Grace and retention are only read, not stored in panes: a new value applies from now on.
    r = PaneTable.restore(WindowSpec(4000, 1000, 100, 20_000), Count, data, count_restore)
    assert r.window(0, "1").items == (100,)


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 20_000), st.sampled_from(["1", "2"])),
    st.tuples(st.just("close"), st.just(0), st.just("")),
    st.tuples(st.just("retire"), st.just(0), st.just("")),
), max_size=40)


def apply(t: PaneTable[Count], op: tuple[str, int, str]) -> object:
    kind, ts, version = op
    if kind == "add":
        add(t, ts, version)
        return None
    if kind == "close":
        starts = t.close_ready()
        return [(s, sorted(t.keys_in(s)), [t.window(s, v, g).items for v, g in sorted(t.keys_in(s), key=str)])
                for s in starts]
    return t.retire()


@settings(max_examples=200, deadline=None)
@given(before=ops, after=ops, hop=st.sampled_from([500, 1000]), panes_per_window=st.integers(1, 3),
       grace=st.integers(0, 2000), extra_retention=st.integers(0, 5000))
def test_restore_of_snapshot_behaves_identically(before, after, hop, panes_per_window, grace, extra_retention) -> None:
    t = PaneTable(WindowSpec(hop * panes_per_window, hop, grace, grace + extra_retention), Count)
    for op in before:
        apply(t, op)
    r = roundtrip(t)
    assert observable(r) == observable(t)
    for op in after:
        assert apply(r, op) == apply(t, op)
    assert observable(r) == observable(t)
