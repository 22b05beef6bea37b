import random

import pytest
from sklearn.metrics import accuracy_score

from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import Label, Prediction
from mle_stream.core.policy import Verdict
from mle_stream.core.topology import parse_topology

TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, grace: 2s, retention: 1m}\n"
    "rollback: {max_increase: 0.05, consecutive_windows: 2, min_samples: 50}\n"
)
NOW = 10**12  # the worker's clock, far beyond every event time used here


def simulate(rng: random.Random, n: int, t0: int, accuracy: dict[str, float]):
    preds, labels = [], []
    for i in range(n):
        version = "2" if i % 4 == 0 else "1"
        truth = rng.random() < 0.3
        predicted = truth if rng.random() < accuracy[version] else not truth
        ts = t0 + rng.randrange(10_000)
        preds.append(Prediction(prediction_id=f"{t0}-{i}", model="fraud", version=version, timestamp=ts,
                                score=0.8 if predicted else 0.2, latency_ms=rng.uniform(1, 50)))
        labels.append(Label(prediction_id=f"{t0}-{i}", model="fraud", timestamp=ts + 500, label=int(truth)))
    return preds, labels


def test_window_metrics_equal_sklearn_whatever_the_arrival_order() -> None:
    rng = random.Random(1)
    ev = ModelEvaluator(TOPOLOGY)
    preds, labels = simulate(rng, 800, 0, {"1": 0.9, "2": 0.9})
    # Half the labels arrive before their predictions, and 10% never arrive.
    early, late = labels[: len(labels) // 2], labels[len(labels) // 2:]
    kept_late = [lab for lab in late if rng.random() > 0.1]
    assert ev.add_labels(early) == []
    assert ev.add_predictions(preds, NOW) == []
    assert ev.add_labels(kept_late) == []
    tick(ev, 12_000)
    out = ev.advance(NOW)
    assert [j.window_start for j in out.judgements] == [0]
    labeled = {lab.prediction_id: lab for lab in early + kept_late}
    assert {w.status for w in out.windows} == {"CLOSED"}
    for snap in out.windows:
        mine = [p for p in preds if p.version == snap.version]
        joined = [p for p in mine if p.prediction_id in labeled]
        truth = [bool(labeled[p.prediction_id].label) for p in joined]
        predicted = [p.score >= 0.5 for p in joined]
        assert snap.predictions == len(mine)
        assert snap.labeled == len(joined)
        assert abs(snap.metrics["accuracy"] - accuracy_score(truth, predicted)) < 1e-12
        assert abs(snap.metrics["label_coverage"] - len(joined) / len(mine)) < 1e-12
        assert snap.role == {"1": "baseline", "2": "candidate"}[snap.version]


def test_a_degraded_candidate_is_rolled_back_after_two_failing_windows() -> None:
    rng = random.Random(2)
    ev = ModelEvaluator(TOPOLOGY)
    verdicts, commands = [], []
    for w, acc in enumerate([0.92, 0.92, 0.6, 0.6, 0.6]):
        preds, labels = simulate(rng, 1200, w * 10_000, {"1": 0.92, "2": acc})
        ev.add_predictions(preds, NOW)
        ev.add_labels(labels)
        out = ev.advance(NOW)
        verdicts += [j.verdict for j in out.judgements]
        commands += out.commands
    # Windows 0..3 are closed (window 4 waits for event time 52s): PASS PASS FAIL FAIL -> rollback.
    assert verdicts == [Verdict.PASS, Verdict.PASS, Verdict.FAIL, Verdict.FAIL]
    assert len(commands) == 1 and commands[0].window_start == 20_000 and commands[0].window_end == 40_000


def test_unusable_records_come_back_as_rejects_naming_the_field() -> None:
    ev = ModelEvaluator(TOPOLOGY)
    future = Prediction(prediction_id="f", model="fraud", version="1", timestamp=NOW + 3_600_000, score=0.5)
    wrong_task = Prediction(prediction_id="w", model="fraud", version="1", timestamp=1, value=3.0)
    batch = [future, wrong_task]
    rejects = ev.add_predictions(batch, NOW)
    assert [(r.field, batch[r.index].prediction_id) for r in rejects] == [("timestamp", "f"), ("score", "w")]
    assert ev.panes.watermark == -1  # the far-future timestamp did not move event time
    ev.add_predictions([Prediction(prediction_id="p", model="fraud", version="1", timestamp=5, score=0.9)], NOW)
    rejects = ev.add_labels([Label(prediction_id="p", model="fraud", timestamp=6, label="cat")])  # refused on arrival
    assert len(rejects) == 1 and rejects[0].field == "label" and "binary label" in rejects[0].reason


@pytest.mark.parametrize("ids", [["p0", "p1", "p2"], ["p0", "p1", "p-two"]])  # one length (a shortcut), or not
def test_a_refused_label_leaves_the_rest_of_its_batch_joined(ids: list[str]) -> None:
    ev = ModelEvaluator(TOPOLOGY)
    ev.add_predictions([Prediction(prediction_id=i, model="fraud", version="1", timestamp=5, score=0.9) for i in ids],
                       NOW)
    rejects = ev.add_labels([Label(ids[0], "fraud", 6, True), Label(ids[1], "fraud", 6, "cat"),
                             Label(ids[2], "fraud", 6, False)])
    assert [(r.index, r.field) for r in rejects] == [(1, "label")]
    assert (ev.join.joined, ev.join.pending) == (2, (1, 0))  # pending: (predictions, labels)
    assert ev.join.labels_of(ids) == [True, None, False]


def test_multiclass_uses_argmax_unless_the_pod_says_otherwise() -> None:
    t = parse_topology(
        'model: m\ntask: multiclass\nbaseline: {version: "1"}\ncandidate: {version: "2"}\nwindows: {size: 1s, grace: '
        '0s}\n')
    ev = ModelEvaluator(t)
    ev.add_predictions([
        Prediction(prediction_id="a", model="m", version="1", timestamp=0, scores={"cat": 0.7, "dog": 0.3}),
        Prediction(prediction_id="b", model="m", version="1", timestamp=0, scores={"cat": 0.7, "dog": 0.3},
                   predicted_label="dog"),
        Prediction(prediction_id="c", model="m", version="1", timestamp=2_000, scores={"cat": 1.0}),
    ], NOW)
    ev.add_labels([Label("a", "m", 1, "cat"), Label("b", "m", 1, "cat"), Label("c", "m", 2_000, "cat")])
    snap = next(s for s in ev.advance(NOW).windows if s.version == "1")
    assert snap.labeled == 2 and snap.metrics["accuracy"] == 0.5


def tick(ev: ModelEvaluator, ts: int) -> None:
    """Move both inputs' clocks to `ts` (windows close once predictions and labels have passed)."""
    ev.add_predictions([Prediction(prediction_id=f"tick-{ts}", model="fraud", version="1", timestamp=ts, score=0.5)],
                       NOW)
    ev.add_labels([Label(prediction_id=f"tick-label-{ts}", model="fraud", timestamp=ts, label=True)], NOW)


def test_a_corrected_label_replaces_the_outcome_and_duplicates_change_nothing() -> None:
    ev = ModelEvaluator(TOPOLOGY)
    preds = [Prediction(prediction_id=str(i), model="fraud", version="1", timestamp=100 + i, score=0.9)
             for i in range(10)]
    ev.add_predictions(preds, NOW)
    ev.add_predictions(preds[:3], NOW)  # delivered twice
    ev.add_labels([Label(str(i), "fraud", 1000, i < 5) for i in range(10)])  # 5 right, 5 wrong
    ev.add_labels([Label(str(i), "fraud", 1000, i < 5) for i in range(10)])  # the same labels again
    ev.add_labels([Label("7", "fraud", 2000, True)])  # a correction: 7 was wrong, now right
    tick(ev, 12_000)
    v1 = next(w for w in ev.advance(NOW).windows if w.version == "1" and w.window_start == 0)
    assert (v1.predictions, v1.labeled) == (10, 10)
    assert v1.metrics["accuracy"] == 0.6
    assert ev.join.corrections == 1 and ev.join.duplicates == 13


def test_late_labels_revise_a_closed_window_and_open_windows_report_updates() -> None:
    ev = ModelEvaluator(TOPOLOGY)
    ev.add_predictions([Prediction(prediction_id="a", model="fraud", version="1", timestamp=100, score=0.9)], NOW)
    tick(ev, 12_000)
    closed = ev.advance(NOW, updates=True).windows
    assert [(w.window_start, w.status,
             w.labeled) for w in closed if w.version == "1"] == [(0, "CLOSED", 0), (10_000, "OPEN", 0)]
    ev.add_labels([Label("a", "fraud", 12_500, True)])
    assert ev.advance(NOW).windows == []  # without updates, only closing windows are reported
    revised = [w for w in ev.advance(NOW, updates=True).windows if w.version == "1"]
    assert [(w.window_start, w.status, w.labeled, w.verdict) for w in revised] == [(0, "REVISED", 1, None)]


def test_segments_are_capped_with_an_other_bucket() -> None:
    t = parse_topology(
        'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
        "windows: {size: 10s, grace: 0s}\nsegments: {dimensions: [country], max_values: 2}\n")
    ev = ModelEvaluator(t)
    countries = ["DE", "FR", "US", "DE", "BR", "FR"]
    ev.add_predictions([Prediction(prediction_id=str(i), model="fraud", version="1", timestamp=i, score=0.9,
                                   segment={"country": c}) for i, c in enumerate(countries)], NOW)
    tick(ev, 10_000)
    counts = {w.segment: w.predictions for w in ev.advance(NOW).windows if w.version == "1" and w.window_start == 0}
    assert counts == {None: 6, "country=DE": 2, "country=FR": 2, "country=__other__": 2}


def test_a_prediction_delivered_again_within_retention_changes_nothing_after_it_left_the_join() -> None:
    """Labeled: the pair leaves the join after its pane's retention, so a redelivery is late.
    Unlabeled: with max_delay shorter than retention it expires while its pane is retained, and
    only the join's tombstone keeps the redelivery from being served (and joined) again."""
    short = parse_topology('model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
                           "windows: {size: 10s, grace: 0s, retention: 1m}\nlabels: {max_delay: 5s}\n")
    ev = ModelEvaluator(short)
    a, b = (Prediction(prediction_id=i, model="fraud", version="1", timestamp=100, score=0.9) for i in "ab")
    ev.add_predictions([a, b], NOW)
    ev.add_labels([Label("b", "fraud", 200, True)])
    tick(ev, 12_000)  # window 0 closes; a expires unlabeled (its pane is kept 60 s more)
    first = next(w for w in ev.advance(NOW, updates=True).windows if w.version == "1" and w.window_start == 0)
    assert (first.predictions, first.labeled, ev.join.expired_predictions) == (2, 1, 1)
    ev.add_predictions([a, b], NOW)  # both again: a after expiry, b still joined
    ev.add_labels([Label("a", "fraud", 12_500, False)])  # a's label, too late to join
    ev.add_predictions([a], NOW)  # and a once more, with its label waiting
    revised = [w for w in ev.advance(NOW, updates=True).windows if w.version == "1" and w.window_start == 0]
    assert revised == [] and ev.join.duplicates == 3
    tick(ev, 100 + 5_000 + 10_000 + 60_000 + 1)  # the pair of b (ts 100) leaves the join, long after its pane
    ev.advance(NOW)
    assert ev.join.joined == 0  # (a's tombstone may stay a little longer: its bucket holds the later tick)
    late = ev.panes.late_dropped
    ev.add_predictions([a, b], NOW)
    ev.add_labels([Label("b", "fraud", 80_000, False)])
    # Waiting: the tick's prediction and label, and b's label, alone.
    assert ev.panes.late_dropped == late + 2 and ev.join.pending == (1, 2)
    assert [w for w in ev.advance(NOW, updates=True).windows if w.window_start == 0] == []
