"""The evaluator works on whole batches (columns, the column join), with per-record paths only for
the irregular cases. These tests hold it to the one-by-one semantics: whatever the
batch boundaries, duplicates, early labels and corrections, every window equals what a plain
sequential reading of the same events gives, and a snapshot taken anywhere restores to an
evaluator that carries on identically."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score

from mle_stream.core.evaluator import ModelEvaluator, _groups
from mle_stream.core.events import Label, Prediction
from mle_stream.core.topology import parse_topology

TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, grace: 0s, retention: 1h}\nlabels: {max_delay: 1h}\n"
)
SEGMENTED = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, hop: 5s, grace: 0s, retention: 1h}\nlabels: {max_delay: 1h}\n"
    "segments: {dimensions: [country], max_values: 2}\n"
)
NOW = 10**12

# An event: ("p", id, version, ts, score, country) or ("l", id, truth). Ids come from a small pool
# so that duplicates, labels before predictions and corrections all happen.
prediction = st.tuples(st.just("p"), st.integers(0, 30), st.sampled_from(["1", "2"]), st.integers(0, 39_999),
                       st.sampled_from([0.1, 0.4, 0.6, 0.9]), st.sampled_from(["DE", "FR", "US", None]))
label = st.tuples(st.just("l"), st.integers(0, 30), st.booleans())
events = st.lists(st.one_of(prediction, label), min_size=1, max_size=120)


def feed(ev: ModelEvaluator, stream: list[tuple], cuts: list[int]) -> None:
    """The events in order, in batches of one kind that also end at every cut."""
    batch: list[tuple] = []

    def flush() -> None:
        if not batch:
            return
        if batch[0][0] == "p":
            ev.add_predictions([Prediction(prediction_id=str(e[1]), model="fraud", version=e[2], timestamp=e[3],
                                           score=e[4], segment=None if e[5] is None else {"country": e[5]})
                                for e in batch], NOW)
        else:
            ev.add_labels([Label(str(e[1]), "fraud", 0, e[2]) for e in batch])
        batch.clear()

    for i, e in enumerate(stream):
        if batch and (batch[0][0] != e[0] or i in cuts):
            flush()
        batch.append(e)
    flush()


def closed_windows(ev: ModelEvaluator) -> dict[tuple, tuple]:
    return {(w.window_start, w.version, w.segment): (w.predictions, w.labeled, w.metrics)
            for w in ev.close_all(NOW).windows}


@settings(max_examples=150, deadline=None)
@given(events, st.lists(st.integers(0, 120), max_size=10))
def test_windows_equal_a_sequential_reading_whatever_the_batches(stream: list[tuple], cuts: list[int]) -> None:
    ev = ModelEvaluator(TOPOLOGY)
    feed(ev, stream, cuts)
    got = closed_windows(ev)

    # The truth, read one event at a time: the first delivery of a prediction counts, the last
    # label of an id is its truth, a label with no prediction counts nowhere.
    first: dict[int, tuple] = {}
    last_label: dict[int, bool] = {}
    for e in stream:
        if e[0] == "p":
            first.setdefault(e[1], e)
        else:
            last_label[e[1]] = e[2]
    for start in range(0, 40_000, 10_000):
        for version in ("1", "2"):
            mine = [p for p in first.values() if p[2] == version and start <= p[3] < start + 10_000]
            key = (start, version, None)
            if not mine:
                assert key not in got or got[key][0] == 0
                continue
            joined = [p for p in mine if p[1] in last_label]
            predictions, labeled, metrics = got[key]
            assert (predictions, labeled) == (len(mine), len(joined))
            if joined:
                truth = [last_label[p[1]] for p in joined]
                assert abs(metrics["accuracy"] - accuracy_score(truth, [p[4] >= 0.5 for p in joined])) < 1e-12


@settings(max_examples=60, deadline=None)
@given(events, st.lists(st.integers(0, 120), max_size=10), st.integers(0, 120))
def test_a_snapshot_restores_an_evaluator_that_carries_on_identically(
        stream: list[tuple], cuts: list[int], at: int) -> None:
    whole = ModelEvaluator(SEGMENTED)
    feed(whole, stream, cuts)
    expected = closed_windows(whole)

    first = ModelEvaluator(SEGMENTED)
    feed(first, stream[:at], cuts)
    data = json.loads(json.dumps(first.snapshot()))  # what a checkpoint stores
    restored = ModelEvaluator.restore(SEGMENTED, data)
    feed(restored, stream[at:], [c - at for c in cuts if c > at])
    assert closed_windows(restored) == expected
    assert restored.join.pending == whole.join.pending
    assert (restored.join.corrections, restored.join.duplicates) == (whole.join.corrections, whole.join.duplicates)


def test_a_snapshot_of_another_topology_is_refused_naming_the_difference() -> None:
    ev = ModelEvaluator(TOPOLOGY)
    data = ev.snapshot()
    try:
        ModelEvaluator.restore(SEGMENTED, data)
    except ValueError as exc:
        assert "window_hop_ms" in str(exc) and "segment_dimensions" in str(exc)
    else:
        raise AssertionError("restored a snapshot taken under other windows")


def test_a_worker_batch_longer_than_retention_loses_nothing() -> None:
    """The worker applies a whole batch of messages at once; the batch may span more event time
    than the retention. Every record was retained when it arrived, so every one counts."""
    t = parse_topology(
        'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
        "windows: {size: 10s, grace: 0s, retention: 20s}\nlabels: {max_delay: 1m}\n")
    ev = ModelEvaluator(t)
    for second in range(300):  # 300 s of event time, one message per second, no advance between
        ids = [f"{second}-{i}" for i in range(4)]
        ev.add_predictions([Prediction(prediction_id=p, model="fraud", version="1", timestamp=second * 1000 + 10 * i,
                                       score=0.9) for i, p in enumerate(ids)], NOW)
        ev.add_labels([Label(p, "fraud", second * 1000 + 500, i % 2 == 0) for i, p in enumerate(ids)])
    windows = [w for w in ev.close_all(NOW).windows if w.version == "1"]
    assert [w.window_start for w in windows] == list(range(0, 300_000, 10_000))
    assert all((w.predictions, w.labeled, w.metrics["accuracy"]) == (40, 40, 0.5) for w in windows)
    assert ev.panes.late_dropped == 0


class _Names(Sequence[str]):
    """Version names v0, v1, ... without holding them."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        return f"v{i}"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 199), st.sampled_from([None, "de", "fr"])), min_size=1),
       st.sampled_from([200, 1000, 2**62]))
def test_groups_are_the_rows_of_each_pane_version_and_segment(rows: list[tuple[int, int, str | None]],
                                                              seen: int) -> None:
    """Against a dict built record by record. `seen`: how many versions the evaluator has
    numbered; at 2**62, pane * versions wraps around int64 and panes 5000 ms apart would share a
    key, unless the batch's versions are renumbered first."""
    names = _Names(seen)
    panes = np.array([1_800_000_000_000 + 5_000 * p for p, _, _ in rows], dtype=np.int64)
    codes = np.array([c for _, c, _ in rows], dtype=np.int32)
    segments = [(None,) if s is None else (None, ("country", s)) for _, _, s in rows]
    expected: dict[tuple[int, str, object], list[int]] = {}
    for i, (pane, code, segs) in enumerate(zip(panes.tolist(), codes.tolist(), segments)):
        for segment in segs:
            expected.setdefault((pane, names[code], segment), []).append(i)
    got = {key: sorted(idx.tolist()) for key, idx in _groups(panes, codes, names, segments)}
    assert got == expected
