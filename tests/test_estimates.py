"""Label-free performance estimates (CBPE, core/metrics/estimated.py): the expected confusion
matrix against a hand-computed case and against NannyML's formulas, estimates against realized
metrics on a calibrated stream (within a tolerance from the binomial standard error) and on a
stream whose calibration drifted (off, as docs/estimates.md warns), checkpoints (an old one
without estimates restores), checks on estimates, and the wire carrying the new keys."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import auc

from mle_stream import wire
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import CommandKind, Label, Prediction
from mle_stream.core.metrics.estimated import Calibration, ScoreBins, isotonic, score_bins
from mle_stream.core.metrics.outcomes import BinaryOutcomes
from mle_stream.core.topology import parse_topology
from mle_stream.errors import ConfigError
from test_metrics_contract import SETTINGS, binary_batches

NOW = 10**12
TOPOLOGY = ('model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
            'windows: {size: 1s, grace: 0s, retention: 1s}\nlabels: {max_delay: 5s}\n')
ESTIMATES = 'estimates: {reference_labels: 4000, bins: 64}\n'


def calibration(p: list[float], counts: int = 1000) -> Calibration:
    """A frozen calibration whose bin b reads p[b] (the reference: `counts` labels per bin)."""
    state = ScoreBins(len(p))
    # Reference rows straight into the counts: their scores only need to fall in their bin.
    state._labeled[0] = counts
    state._positives[0] = np.rint(np.array(p) * counts).astype(np.int64)
    cal = Calibration(len(p), reference_labels=counts * len(p))
    cal.add(state)
    assert cal.frozen and np.allclose(cal.probabilities(), p)
    return cal


def test_the_expected_confusion_matrix_of_a_hand_computed_case() -> None:
    # Two bins: scores below 0.5 fall in bin 0, above in bin 1; calibrated 0.2 and 0.7.
    assert score_bins(np.array([0.2, 0.8]), 2).tolist() == [0, 1]
    cal = calibration([0.2, 0.7])
    state = ScoreBins(2)
    # 3 decided negative at 0.2, 2 decided positive at 0.8, 1 decided positive at 0.2 (the pod's label).
    state.serve(np.array([0.2, 0.2, 0.2, 0.8, 0.8, 0.2]), np.array([False, False, False, True, True, True]))
    values = state.values(cal, {})
    tp, fp, fn, tn = 2 * 0.7 + 0.2, 3 - (2 * 0.7 + 0.2), 3 * 0.2, 3 - 3 * 0.2  # 1.6, 1.4, 0.6, 2.4
    assert values["estimated_accuracy"] == pytest.approx((tp + tn) / 6) == pytest.approx(4 / 6)
    assert values["estimated_precision"] == pytest.approx(tp / (tp + fp)) == pytest.approx(1.6 / 3)
    assert values["estimated_recall"] == pytest.approx(tp / (tp + fn)) == pytest.approx(1.6 / 2.2)
    assert values["estimated_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) == pytest.approx(3.2 / 5.2)
    # Bin 0: 4 rows, 0.8 expected positives, 3.2 negatives; bin 1: 2 rows, 1.4 and 0.6. Pairs
    # within a bin count one half: (0.8 * 1.6 + 1.4 * (3.2 + 0.3)) / (2.2 * 3.8).
    assert values["estimated_roc_auc"] == pytest.approx(6.18 / 8.36)
    assert values["estimated_coverage"] == 1.0
    assert all(values[f"estimated_{m}_error"] is None for m in ("accuracy", "roc_auc"))  # no labels yet


def nannyml_estimates(p: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """NannyML's CBPE formulas (nannyml/performance_estimation/confidence_based/metrics.py), per
    row: expected TP, FP, FN, TN from the calibrated probabilities, and ROC AUC as the area under
    the expected ROC curve over the distinct calibrated probabilities."""
    tp = np.where(y_pred, p, 0).sum()
    fp = np.where(y_pred, 1 - p, 0).sum()
    fn = np.where(~y_pred, p, 0).sum()
    tn = np.where(~y_pred, 1 - p, 0).sum()
    thresholds = np.unique(p)[::-1]  # a point per distinct probability, highest first
    tps = np.array([p[p >= t].sum() for t in thresholds])
    fps = np.array([(1 - p[p >= t]).sum() for t in thresholds])
    tpr, fpr = np.r_[0, tps / p.sum()], np.r_[0, fps / (1 - p).sum()]
    return {"accuracy": (tp + tn) / len(p), "precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn), "roc_auc": auc(fpr, tpr)}


def test_estimates_equal_nannymls_formulas_on_the_calibrated_probabilities() -> None:
    rng = np.random.default_rng(3)
    bins = 16
    # A calibration learned from reference data, compared with scikit-learn's isotonic regression.
    ref_score = rng.beta(2, 3, 5000)
    ref_y = rng.random(5000) < ref_score ** 1.5  # not calibrated: the map has work to do
    reference = ScoreBins(bins)
    reference.update(ref_score, ref_score >= 0.5, ref_y)
    cal = Calibration(bins, reference_labels=5000)
    cal.add(reference)
    b = score_bins(ref_score, bins)
    counts = np.bincount(b, minlength=bins)
    sk = IsotonicRegression().fit(np.flatnonzero(counts), np.bincount(b, weights=ref_y, minlength=bins)[counts > 0]
                                  / counts[counts > 0], sample_weight=counts[counts > 0])
    assert np.allclose(cal.probabilities()[counts > 0], sk.predict(np.flatnonzero(counts)))

    score = rng.beta(2, 3, 3000)
    decision = score >= 0.4
    state = ScoreBins(bins)
    state.serve(score, decision)
    ours = state.values(cal, {})
    theirs = nannyml_estimates(cal.probabilities()[score_bins(score, bins)], decision)
    for name, value in theirs.items():
        assert ours[f"estimated_{name}"] == pytest.approx(value, abs=1e-12), name


def test_isotonic_fills_bins_the_reference_never_saw_from_their_neighbours() -> None:
    fit = isotonic(np.array([0, 3, 0, 1, 0, 9]), np.array([0, 10, 0, 10, 0, 10]))
    # 0.3 then 0.1 violate monotony: pooled to 0.2; empty bins take the bin below (the first: above).
    assert fit.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.2, 0.9])


def stream(n_windows: int, per_window: int, seed: int, truth: Any = None) -> list[tuple[str, list[Any]]]:
    """Batches of predictions (scores Beta(2, 3), decision at 0.5) and their labels, one window of
    event time (1 s) at a time; a label is positive with probability truth(window, score)
    (default: the score, a calibrated model)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, list[Any]]] = []
    for w in range(n_windows):
        score = rng.beta(2, 3, per_window)
        p = score if truth is None else truth(w, score)
        y = rng.random(per_window) < p
        ts = w * 1000 + np.sort(rng.integers(0, 1000, per_window))
        version = np.where(rng.random(per_window) < 0.5, "1", "2")
        ids = [f"w{w}-{i}" for i in range(per_window)]
        out.append(("p", [Prediction(prediction_id=ids[i], model="m", version=str(version[i]), timestamp=int(ts[i]),
                                     score=float(score[i])) for i in range(per_window)]))
        out.append(("l", [Label(ids[i], "m", int(ts[i]) + 1, bool(y[i])) for i in range(per_window)]))
    return out


def run(ev: ModelEvaluator, batches: list[tuple[str, list[Any]]]) -> list[Any]:
    windows = []
    for kind, records in batches:
        rejects = ev.add_predictions(records, NOW) if kind == "p" else ev.add_labels(records, NOW)
        assert rejects == []
        windows += ev.advance(NOW).windows
    return windows + ev.close_all(NOW).windows


def closed(windows: list[Any], version: str) -> list[Any]:
    return [w for w in windows if w.status == "CLOSED" and w.version == version and w.segment is None]


def standard_error(window: Any, reference_labels: int) -> float:
    """The binomial standard error of a realized accuracy over the window's labeled predictions,
    each right with probability q (q(1 - q) <= 1/4 summed), combined with the calibration's own
    (the reference's labels, spread over the same score range)."""
    return float(np.sqrt(0.25 / window.labeled + 0.25 / reference_labels))


def test_on_a_calibrated_stream_the_estimates_follow_the_realized_metrics() -> None:
    ev = ModelEvaluator(parse_topology(TOPOLOGY + ESTIMATES))
    windows = run(ev, stream(12, 2000, seed=1))
    assert ev.calibration is not None and ev.calibration.frozen
    # The baseline's first labeled panes (about 1000 labels each) until they hold 4000 labels.
    assert ev.calibration.reference_panes in (4, 5) and ev.calibration.labels >= 4000
    early = closed(windows, "1")[:2]
    assert all(w.metrics["estimated_accuracy"] is None for w in early)  # before the calibration froze
    late = [w for v in ("1", "2") for w in closed(windows, v)[-5:]]
    assert len(late) == 10
    for w in late:
        m, se = w.metrics, standard_error(w, 4000)
        assert w.labeled > 0.98 * w.predictions  # labels of the window's last milliseconds come after it closed
        for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
            # Precision and recall rest on about half the rows: twice the tolerance.
            tolerance = 4 * se * (1 if name in ("accuracy", "roc_auc") else 2)
            assert abs(m[f"estimated_{name}"] - m[name]) < tolerance, (name, m)
            assert abs(m[f"estimated_{name}_error"]) < tolerance, (name, m)
        assert m["estimated_coverage"] == 1.0


def test_when_calibration_drifts_the_estimate_is_wrong_and_its_error_says_so() -> None:
    # After the reference (windows 0-3) the same scores mean half the risk: concept drift.
    def truth(w: int, score: np.ndarray) -> np.ndarray:
        return score if w < 5 else score / 2

    ev = ModelEvaluator(parse_topology(TOPOLOGY + ESTIMATES))
    windows = run(ev, stream(10, 2000, seed=2, truth=truth))
    late = closed(windows, "1")[-3:]
    for w in late:
        m, se = w.metrics, standard_error(w, 4000)
        # The scores did not move, so the estimate did not either; the realized precision fell.
        assert m["estimated_precision"] - m["precision"] > 8 * se, m
        assert m["estimated_precision_error"] > 8 * se, m


def test_a_checkpoint_restores_the_calibration_and_carries_on_as_if_never_stopped() -> None:
    topology = parse_topology(TOPOLOGY + 'estimates: {reference_labels: 1500, bins: 32}\n')
    batches = stream(8, 600, seed=4)
    uninterrupted = ModelEvaluator(topology)
    first = run_part(uninterrupted, batches[:9])
    data = json.loads(json.dumps(uninterrupted.snapshot()))
    assert data["calibration"]["reference_panes"] > 0 and "estimate" in data["panes"]["panes"][0][3]
    restored = ModelEvaluator.restore(topology, data)
    assert restored.snapshot() == uninterrupted.snapshot()
    assert first and run(restored, batches[9:]) == run(uninterrupted, batches[9:])


def run_part(ev: ModelEvaluator, batches: list[tuple[str, list[Any]]]) -> list[Any]:
    windows = []
    for kind, records in batches:
        ev.add_predictions(records, NOW) if kind == "p" else ev.add_labels(records, NOW)
        windows += ev.advance(NOW).windows
    return windows


def test_predictions_held_back_at_a_checkpoint_keep_their_scores_and_other_bins_start_the_estimates_afresh() -> None:
    from test_tasks import CUT, TOPOLOGIES, events, feed

    # Labels lag the predictions here: at the cut, served rows wait for the labels' event time.
    topology = parse_topology(TOPOLOGIES["binary-shadow-segments"] + "estimates: {reference_labels: 20, bins: 8}\n")
    batches = events("binary-shadow-segments")
    uninterrupted = ModelEvaluator(topology)
    feed(uninterrupted, batches[:CUT])
    data = json.loads(json.dumps(uninterrupted.snapshot()))
    served = data["deferred"]["served"]
    assert served and all("score" in part and "classes" not in part for part in served)
    restored = ModelEvaluator.restore(topology, data)
    assert restored.snapshot() == uninterrupted.snapshot()
    assert feed(restored, batches[CUT:]) == feed(uninterrupted, batches[CUT:])
    assert restored.close_all(NOW) == uninterrupted.close_all(NOW)
    # Under other bins the counts mean something else: the calibration (at the end, with reference
    # panes) and the panes' estimate states start empty; the held-back rows keep their scores,
    # which do not depend on the bins.
    assert uninterrupted.calibration is not None and uninterrupted.calibration.labels > 0
    other = parse_topology(TOPOLOGIES["binary-shadow-segments"] + "estimates: {reference_labels: 20, bins: 4}\n")
    for snapshot in (data, json.loads(json.dumps(uninterrupted.snapshot()))):
        moved = ModelEvaluator.restore(other, snapshot)
        assert isinstance(moved.calibration, Calibration) and moved.calibration.labels == 0
        assert moved.calibration.bins == 4
        assert all(isinstance(s.estimate, ScoreBins) and s.estimate.bins == 4 and s.estimate.count == 0
                   for _, s in moved.panes)
    moved, kept = ModelEvaluator.restore(other, data), ModelEvaluator.restore(topology, data)
    assert len(moved._served) == len(kept._served) > 0
    for a, b in zip(moved._served, kept._served):
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.decision, b.decision)
    feed(moved, batches[CUT:])
    assert all("estimated_accuracy" in w.metrics for w in moved.close_all(NOW).windows)


def test_an_old_checkpoint_without_estimates_restores_under_a_topology_with_them() -> None:
    from test_tasks import CHECKPOINTS, CUT, TOPOLOGIES, events, feed

    stored = json.loads(CHECKPOINTS.read_text())["binary-shadow-segments"]
    topology = parse_topology(TOPOLOGIES["binary-shadow-segments"] + "estimates: {reference_labels: 20}\n")
    restored = ModelEvaluator.restore(topology, json.loads(json.dumps(stored)))
    assert restored.calibration is not None and not restored.calibration.frozen
    feed(restored, events("binary-shadow-segments")[CUT:])
    last = restored.close_all(NOW).windows
    assert last and all("estimated_accuracy" in w.metrics for w in last)
    again = ModelEvaluator.restore(topology, json.loads(json.dumps(restored.snapshot())))
    assert again.snapshot() == restored.snapshot()


def test_a_metric_snapshot_carries_the_estimates_in_its_metrics_map_without_a_schema_change() -> None:
    ev = ModelEvaluator(parse_topology(TOPOLOGY + 'estimates: {reference_labels: 500}\n'))
    snapshot = closed(run(ev, stream(6, 400, seed=5)), "2")[-1]
    assert snapshot.metrics["estimated_f1"] is not None
    assert wire.decode_metric_snapshot(wire.encode_metric_snapshot(snapshot)) == snapshot


CHECK = 'checks: [{name: est, metric: estimated_f1, max_degradation: 0.05%s}]\n'


def test_a_check_on_an_estimate_holds_unless_the_topology_allows_a_rollback_without_labels() -> None:
    held = parse_topology(TOPOLOGY + ESTIMATES + CHECK % "")
    assert held.checks[0].action == "hold" and held.checks[0].worse == "lower"
    allowed = parse_topology(TOPOLOGY + ESTIMATES + CHECK % ", action: rollback, allow_rollback_without_labels: true")
    assert allowed.checks[0].action == "rollback"
    with pytest.raises(ConfigError, match=r"checks\[0\]\.action: estimated_f1 is estimated from scores, without "
                                          r"labels: .* set allow_rollback_without_labels: true"):
        parse_topology(TOPOLOGY + ESTIMATES + CHECK % ", action: rollback")
    with pytest.raises(ConfigError, match="check 'est' reads estimated_f1: add an estimates section"):
        parse_topology(TOPOLOGY + CHECK % "")
    with pytest.raises(ConfigError, match="allow_rollback_without_labels: only applies to checks on estimated_"):
        parse_topology(TOPOLOGY + "checks: [{name: f, metric: f1, min: 0.5, allow_rollback_without_labels: true}]\n")
    with pytest.raises(ConfigError, match="estimates: label-free estimates are for binary and multiclass models, "
                                          "not regression"):
        parse_topology(TOPOLOGY.replace("binary", "regression") + ESTIMATES)


@SETTINGS
@given(st.lists(binary_batches(), min_size=3, max_size=3), st.sampled_from([2, 7, 64]))
def test_score_bins_follow_the_metric_state_contract(parts: list[BinaryOutcomes], bins: int) -> None:
    def state(batch: BinaryOutcomes) -> ScoreBins:
        s = ScoreBins(bins)
        s.serve(batch.score, batch.predicted)
        s.update(batch.score, batch.predicted, batch.y_true, batch.weight)
        return s

    a, b, c = map(state, parts)
    union = BinaryOutcomes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("y_true", "score", "predicted")))
    whole = state(union)
    assert a.merge(b).merge(c).snapshot() == a.merge(b.merge(c)).snapshot() == whole.snapshot()
    assert ScoreBins.restore(json.loads(json.dumps(whole.snapshot()))).snapshot() == whole.snapshot()
    whole.update(parts[0].score, parts[0].predicted, parts[0].y_true, -np.ones(len(parts[0].y_true)))
    assert whole.reference_counts()[0].tolist() == b.merge(c).reference_counts()[0].tolist()
    with pytest.raises(ValueError, match="different hyperparameters"):
        a.merge(ScoreBins(bins + 1))


def test_a_check_on_an_estimate_holds_a_worse_candidate_before_any_of_its_labels_come() -> None:
    # The candidate's scores are the baseline's squeezed below the threshold: it decides fewer
    # positives, and the baseline's calibration says how many it misses. None of its labels come.
    topology = parse_topology(TOPOLOGY + ESTIMATES + 'checks: [{name: est, metric: estimated_f1, '
                              'max_degradation: 0.1, consecutive: 1, min_samples: 500}]\n')
    ev = ModelEvaluator(topology)
    commands, candidate = [], set()
    for kind, records in stream(10, 2000, seed=6):
        if kind == "p":
            candidate |= {r.prediction_id for r in records if r.version == "2"}
            ev.add_predictions([dataclasses.replace(r, score=r.score * 0.6) if r.version == "2" else r
                                for r in records], NOW)
        else:
            ev.add_labels([r for r in records if r.prediction_id not in candidate], NOW)
        commands += ev.advance(NOW).commands
    assert commands and {c.kind for c in commands} == {CommandKind.HOLD}, commands
    assert commands[0].rule == "est" and "estimated_f1" in commands[0].reason


def test_a_window_estimates_from_every_served_prediction_once_with_the_pods_own_decisions() -> None:
    ev = ModelEvaluator(parse_topology(TOPOLOGY + 'estimates: {reference_labels: 2000, bins: 64}\n'))
    run_part(ev, stream(6, 2000, seed=7))
    assert ev.calibration is not None and ev.calibration.frozen
    rng = np.random.default_rng(8)
    score = rng.beta(2, 3, 300)
    given = [None if i % 3 else bool(i % 2) for i in range(300)]  # the pod's own label on every third
    preds = [Prediction(prediction_id=f"late-{i}", model="m", version="2", timestamp=10_000 + i, score=float(s),
                        predicted_label=given[i]) for i, s in enumerate(score)]
    failed = [Prediction(prediction_id=f"failed-{i}", model="m", version="2", timestamp=10_500 + i, error="timeout",
                         score=0.9 if i % 2 else None) for i in range(20)]
    assert ev.add_predictions(preds + failed + preds[:50], NOW) == []  # 50 delivered twice
    window = next(w for w in ev.close_all(NOW).windows
                  if w.window_start == 10_000 and w.version == "2" and w.segment is None)
    assert window.predictions == 320 and window.labeled == 0
    decision = np.array([s >= 0.5 if g is None else g for s, g in zip(score, given)])
    expected = nannyml_estimates(ev.calibration.probabilities()[score_bins(score, 64)], decision)
    for name, value in expected.items():
        assert window.metrics[f"estimated_{name}"] == pytest.approx(value, abs=1e-12), name
    assert window.metrics["estimated_accuracy_error"] is None  # no labels to compare with


def test_a_window_closed_before_its_labels_is_revised_with_the_error_of_its_estimate() -> None:
    topology = parse_topology(TOPOLOGY.replace("retention: 1s", "retention: 10s")
                              + 'estimates: {reference_labels: 1000}\n')
    ev = ModelEvaluator(topology)
    run_part(ev, stream(16, 1000, seed=9))
    assert ev.calibration is not None and ev.calibration.frozen
    (_, p20), (_, l20), (_, p21), (_, l21) = stream(2, 1000, seed=10)  # windows 0 and 1

    def later(records: list[Any]) -> list[Any]:  # windows 20 and 21, under ids not seen before
        return [dataclasses.replace(r, prediction_id=f"late-{r.prediction_id}", timestamp=r.timestamp + 20_000)
                for r in records]

    ev.add_predictions(later(p20 + p21), NOW)
    ev.add_labels(later(l21), NOW)
    first = [w for w in ev.advance(NOW).windows if w.window_start == 20_000 and w.segment is None]
    assert {w.status for w in first} == {"CLOSED"} and all(w.labeled == 0 for w in first)
    assert all(w.metrics["estimated_accuracy"] is not None and w.metrics["estimated_accuracy_error"] is None
               for w in first)
    ev.add_labels(later(l20), NOW)
    revised = [w for w in ev.advance(NOW, updates=True).windows if w.window_start == 20_000 and w.segment is None]
    assert {w.status for w in revised} == {"REVISED"} and len(revised) == 2
    for w in revised:
        m = w.metrics
        assert w.labeled == w.predictions  # every prediction labeled: the labeled estimate is the estimate
        assert m["estimated_accuracy"] == next(f for f in first if f.version == w.version).metrics["estimated_accuracy"]
        for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
            assert m[f"estimated_{name}_error"] == pytest.approx(m[f"estimated_{name}"] - m[name], abs=1e-12)
