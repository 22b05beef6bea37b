"""REVISED results only when a closed window's numbers changed (core/revisions.py in the evaluator):
an A/A run's late labels, corrections and duplicates, across a snapshot and restore, the drift
tables, and the digests' lifetime (closing to retention)."""

from __future__ import annotations

import json

import numpy as np

from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import DriftTable, Label, MetricSnapshot, Prediction
from mle_stream.core.revisions import Revisions, digest
from mle_stream.core.topology import parse_topology

NOW = 10**12  # the worker's clock, far beyond every event time used here
TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, hop: 5s, grace: 0s, retention: 1m}\n"
    "segments: {dimensions: [country]}\n")


def aa_predictions(n: int = 40) -> list[Prediction]:
    """An A/A run: both versions score alike, every prediction in the panes [0, 5 s) and [5 s, 10 s)."""
    return [Prediction(prediction_id=f"p{i}", model="fraud", version="1" if i % 2 else "2", timestamp=100 + i * 200,
                       score=0.9 if i % 3 else 0.1, segment={"country": "DE" if i % 4 < 2 else "FR"})
            for i in range(n)]


def tick(ev: ModelEvaluator, ts: int) -> None:
    """Both inputs' clocks to `ts`: windows close once predictions and labels have passed them."""
    ev.add_predictions([Prediction(prediction_id=f"tick-{ts}", model="fraud", version="1", timestamp=ts, score=0.5,
                                   segment={"country": "DE"})], NOW)
    ev.add_labels([Label(f"tick-label-{ts}", "fraud", ts, True)], NOW)


def closed_aa() -> ModelEvaluator:
    """Windows 0 and 5 s closed with half their labels in."""
    ev = ModelEvaluator(TOPOLOGY)
    ev.add_predictions(aa_predictions(), NOW)
    ev.add_labels([Label(f"p{i}", "fraud", 1_000, True) for i in range(0, 40, 2)])  # version 2's only
    tick(ev, 15_000)
    closing = ev.advance(NOW, updates=True).windows
    assert {(w.window_start, w.status) for w in closing if w.status != "OPEN"} == {(0, "CLOSED"), (5_000, "CLOSED")}
    return ev


def revised(ev: ModelEvaluator) -> list[tuple[int, str, str, int]]:
    """The REVISED snapshots `advance` reports: (window start, version, segment or "", labeled)."""
    out = ev.advance(NOW, updates=True)
    return sorted((w.window_start, w.version, w.segment or "", w.labeled) for w in out.windows if w.status == "REVISED")


def test_only_the_results_whose_numbers_changed_are_revised() -> None:
    ev = closed_aa()
    # A late label of version 1 in the pane [0, 5 s): every version and segment of the window
    # holding that pane was sent again before; now only version 1's whole and DE results (p1 is DE).
    ev.add_labels([Label("p1", "fraud", 16_000, True)])
    assert revised(ev) == [(0, "1", "", 1), (0, "1", "country=DE", 1)]
    # One in the pane [5 s, 10 s) (p27, FR): both windows holding it, version 1's FR results only.
    ev.add_labels([Label("p27", "fraud", 16_000, True)])
    assert revised(ev) == [(0, "1", "", 2), (0, "1", "country=FR", 1), (5_000, "1", "", 1),
                           (5_000, "1", "country=FR", 1)]
    # The same label again and a label of an unknown prediction change nothing: nothing is sent.
    ev.add_labels([Label("p1", "fraud", 16_500, True), Label("nobody", "fraud", 16_500, True)])
    assert revised(ev) == []
    # A correction (p2 was right, now wrong) changes version 2's numbers: revised, and then the
    # correction back too, though its numbers are the CLOSED ones again (consumers hold the last).
    ev.add_labels([Label("p2", "fraud", 17_000, False)])
    assert {(s, v, seg) for s, v, seg, _ in revised(ev)} == {(0, "2", ""), (0, "2", "country=FR")}
    ev.add_labels([Label("p2", "fraud", 17_500, True)])
    assert len(revised(ev)) == 2


def test_the_digests_survive_a_snapshot_and_restore_and_older_snapshots_revise_as_before() -> None:
    ev = closed_aa()
    data = json.loads(json.dumps(ev.snapshot()))
    restored = ModelEvaluator.restore(TOPOLOGY, data)
    assert len(restored.revisions) == len(ev.revisions) > 0
    for e in (ev, restored):
        e.add_labels([Label("p1", "fraud", 16_000, True)])
    assert revised(restored) == revised(ev) == [(0, "1", "", 1), (0, "1", "country=DE", 1)]
    # A snapshot from before the digests: the first time, every result of a touched window is
    # sent, as before; from then on only the changed ones.
    del data["revisions"]
    old = ModelEvaluator.restore(TOPOLOGY, data)
    old.add_labels([Label("p1", "fraud", 16_000, True)])
    assert {(s, v, seg) for s, v, seg, _ in revised(old)} == {
        (0, "1", ""), (0, "1", "country=DE"), (0, "1", "country=FR"),
        (0, "2", ""), (0, "2", "country=DE"), (0, "2", "country=FR")}
    old.add_labels([Label("p3", "fraud", 16_000, True)])
    assert revised(old) == [(0, "1", "", 2), (0, "1", "country=FR", 1)]


def test_digests_are_kept_from_closing_until_the_window_leaves_retention() -> None:
    ev = closed_aa()
    assert {start for start, _ in ev.revisions.snapshot()["windows"]} == {0, 5_000}
    tick(ev, 70_000)  # pane [0, 5 s) retired with the retention of 1 minute; pane [5 s, 10 s) not yet
    ev.advance(NOW, updates=True)
    assert min(start for start, _ in ev.revisions.snapshot()["windows"]) == 0  # window 0 still holds 5 s
    tick(ev, 200_000)
    ev.advance(NOW, updates=True)
    assert min(start for start, _ in ev.revisions.snapshot()["windows"]) > 5_000


def test_a_drift_table_is_revised_only_when_it_changed() -> None:
    t = parse_topology(
        'model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
        "windows: {size: 60s, grace: 0s, retention: 1h}\ndrift: {warmup: 10}\n")
    ev = ModelEvaluator(t)
    rng = np.random.default_rng(3)
    ev.add_predictions([Prediction(prediction_id=f"d{i}", model="m", version="1" if i % 2 else "2",
                                   timestamp=100 + i * 100, score=float(rng.beta(2, 5)),
                                   features={"x": float(rng.normal())}) for i in range(400)], NOW)
    ev.add_predictions([Prediction(prediction_id="tick", model="m", version="1", timestamp=61_000, score=0.5,
                                   features={"x": 0.0})], NOW)
    ev.labels_idle = True  # no labels yet: the worker closes by the predictions alone
    first = ev.advance(NOW, updates=True)
    assert [(d.version, d.status) for d in first.drift if d.window_start == 0] == [("2", "CLOSED")]
    # Labels change the metrics, not the features: the metrics are revised, the drift table is not.
    ev.add_labels([Label(f"d{i}", "m", 70_000, True) for i in range(0, 40, 2)])
    out = ev.advance(NOW, updates=True)
    assert [(w.version, w.status) for w in out.windows if w.window_start == 0] == [("2", "REVISED")]
    assert [d for d in out.drift if d.status == "REVISED"] == []


def test_the_digest_covers_the_numbers_not_status_verdict_or_time() -> None:
    snap = MetricSnapshot(model="m", version="1", role="baseline", segment=None, window_start=0, window_end=10,
                          predictions=10, labeled=5, metrics={"accuracy": 0.8, "roc_auc": float("nan"), "f1": None},
                          verdict="PASS", status="CLOSED", emitted_at=1)
    again = MetricSnapshot(**{**{f: getattr(snap, f) for f in snap.__dataclass_fields__},
                              "verdict": None, "status": "REVISED", "emitted_at": 2,
                              "metrics": {"f1": None, "roc_auc": float("nan"), "accuracy": 0.8}})
    assert digest(again) == digest(snap) and len(digest(snap)) == 8
    revisions = Revisions()
    assert revisions.publish(snap) and not revisions.publish(again)
    changed = MetricSnapshot(**{**{f: getattr(again, f) for f in again.__dataclass_fields__}, "labeled": 6})
    assert revisions.publish(changed) and not revisions.publish(changed)
    table = DriftTable(model="m", version="2", role="candidate", window_start=0, window_end=10, status="CLOSED",
                       reference="baseline window", features={"x": {"psi": np.float64(0.1), "n": np.int64(3)}},
                       drifted=(), drifted_share=0.0)
    assert revisions.publish(table) and not revisions.publish(
        DriftTable(**{**{f: getattr(table, f) for f in table.__dataclass_fields__}, "status": "REVISED"}))
    # A REVISED window this process never saw closing (a restart from an older snapshot) goes out,
    # and forgetting still drops windows in start order.
    assert revisions.publish(MetricSnapshot(**{**{f: getattr(changed, f) for f in changed.__dataclass_fields__},
                                               "window_start": -10}))
    revisions.forget_before(0)
    assert [start for start, _ in revisions.snapshot()["windows"]] == [0]
    assert Revisions.restore(json.loads(json.dumps(revisions.snapshot()))).snapshot() == revisions.snapshot()
    assert len(Revisions.restore(None)) == 0
