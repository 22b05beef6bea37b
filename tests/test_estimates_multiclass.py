"""Label-free estimates of a multiclass model (core/metrics/estimated_multiclass.py): the expected
one-vs-rest confusion matrices and macro metrics against a hand-computed 3-class case and against
per-row formulas (NannyML's, with a pairwise Mann-Whitney), the per-class calibration against
scikit-learn's IsotonicRegression, estimates against scikit-learn's realized metrics on a calibrated
stream (within a tolerance from the binomial standard error) and on a stream whose calibration
drifted (off, as docs/estimates.md warns), checkpoints (an old one without estimates restores),
the wire carrying the keys, and the topology's estimates section on a multiclass model."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from mle_stream import wire
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import CommandKind, Label, Prediction
from mle_stream.core.metrics.estimated import score_bins
from mle_stream.core.metrics.estimated_multiclass import (
    ClassCalibration,
    ClassScoreBins,
    class_codes,
    class_scores,
)
from mle_stream.core.topology import parse_topology
from mle_stream.errors import ConfigError

NOW = 10**12
CLASSES = ("a", "b", "c")
TOPOLOGY = ('model: m\ntask: multiclass\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
            'windows: {size: 1s, grace: 0s, retention: 1s}\nlabels: {max_delay: 5s}\n')
ESTIMATES = 'estimates: {reference_labels: 4000, bins: 32, classes: [a, b, c]}\n'


def frozen(p: list[list[float]], counts: int = 1000) -> ClassCalibration:
    """A frozen calibration whose class k reads p[k][b] in bin b (`counts` labels per bin)."""
    cal = ClassCalibration(CLASSES, bins=len(p[0]), reference_labels=1)
    cal._labeled = np.full((3, len(p[0])), counts, dtype=np.int64)
    cal._positives = np.rint(np.array(p) * counts).astype(np.int64)
    assert cal.frozen and np.allclose(cal.probabilities(), p)
    return cal


def served(shares: list[list[float]], decided: list[str], bins: int) -> ClassScoreBins:
    state = ClassScoreBins(CLASSES, bins)
    state.serve(np.array(shares), class_codes(decided, CLASSES))
    return state


def test_the_expected_confusion_matrices_of_a_hand_computed_3_class_case() -> None:
    # Two bins per class: shares below 0.5 in bin 0, above in bin 1.
    assert score_bins(np.array([0.4, 0.6]), 2).tolist() == [0, 1]
    cal = frozen([[0.1, 0.6], [0.2, 0.7], [0.3, 0.9]])
    state = served([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3]], ["a", "b", "c", "a"], 2)
    # Calibrated, then normalised per prediction:
    # row 1 bins (1, 0, 0): (0.6, 0.2, 0.3) / 1.1; row 2 (0, 1, 0): (0.1, 0.7, 0.3) / 1.1;
    # row 3 (0, 0, 1): (0.1, 0.2, 0.9) / 1.2;     row 4 (0, 0, 0): (0.1, 0.2, 0.3) / 0.6.
    q = np.array([[6 / 11, 2 / 11, 3 / 11], [1 / 11, 7 / 11, 3 / 11], [1 / 12, 2 / 12, 9 / 12], [1 / 6, 2 / 6, 3 / 6]])
    values = state.values(cal)
    assert values["estimated_accuracy"] == pytest.approx((6 / 11 + 7 / 11 + 9 / 12 + 1 / 6) / 4)
    tp = {"a": 6 / 11 + 1 / 6, "b": 7 / 11, "c": 9 / 12}
    decided = {"a": 2, "b": 1, "c": 1}
    true = dict(zip(CLASSES, q.sum(axis=0)))  # expected rows of each class
    assert true["a"] == pytest.approx(6 / 11 + 1 / 11 + 1 / 12 + 1 / 6)
    precision = np.mean([tp[c] / decided[c] for c in CLASSES])
    recall = np.mean([tp[c] / true[c] for c in CLASSES])
    f1 = np.mean([2 * tp[c] / (decided[c] + true[c]) for c in CLASSES])
    assert values["estimated_precision"] == pytest.approx(precision)
    assert values["estimated_recall"] == pytest.approx(recall)
    assert values["estimated_f1"] == pytest.approx(f1)
    # Class a: bin 1 holds row 1 (6/11 expected a, 5/11 not), bin 0 rows 2-4 (1/11 + 1/12 + 1/6, the
    # rest not); every a in bin 1 outranks every non-a in bin 0, pairs within a bin count one half.
    pos0, pos1 = 1 / 11 + 1 / 12 + 1 / 6, 6 / 11
    neg0, neg1 = 3 - pos0, 1 - pos1
    auc_a = (pos1 * (neg0 + 0.5 * neg1) + pos0 * 0.5 * neg0) / ((pos0 + pos1) * (neg0 + neg1))
    assert values["estimated_roc_auc"] == pytest.approx(np.mean([auc_a, pairwise_auc(q[:, 1], np.array([0, 1, 0, 0])),
                                                                  pairwise_auc(q[:, 2], np.array([0, 0, 1, 0]))]))
    assert pairwise_auc(q[:, 0], np.array([1, 0, 0, 0])) == pytest.approx(auc_a)
    assert values["estimated_coverage"] == 1.0
    assert values["estimated_accuracy_error"] is None  # no labels yet


def pairwise_auc(q: np.ndarray, b: np.ndarray, n: np.ndarray | None = None) -> float:
    """The expected Mann-Whitney statistic row pair by row pair: row i positive with probability
    q[i], j negative with 1 - q[j], i above j when its bin is higher, one half in the same bin."""
    n = np.ones(len(q)) if n is None else n
    pos, neg = n * q, n * (1 - q)
    above = (b[:, None] > b[None, :]) + 0.5 * (b[:, None] == b[None, :])
    return float(pos @ above @ neg / (pos.sum() * neg.sum()))


def nannyml_multiclass(p: np.ndarray, shares: np.ndarray, decided: np.ndarray, bins: int) -> dict[str, float]:
    """NannyML's multiclass CBPE per row: each class's calibrated probability, normalised over the
    classes; accuracy the mean probability of the predicted class; per class one-vs-rest expected
    TP, FP, FN from the one-hot prediction; macro averages."""
    b = score_bins(shares, bins)
    c = np.stack([p[k][b[:, k]] for k in range(3)], axis=1)
    q = c / c.sum(axis=1, keepdims=True)
    onehot = decided[:, None] == np.arange(3)[None, :]
    tp = (onehot * q).sum(axis=0)
    fp = (onehot * (1 - q)).sum(axis=0)
    fn = (~onehot * q).sum(axis=0)
    return {"accuracy": float(q[np.arange(len(q)), decided].mean()), "precision": float(np.mean(tp / (tp + fp))),
            "recall": float(np.mean(tp / (tp + fn))), "f1": float(np.mean(2 * tp / (2 * tp + fp + fn))),
            "roc_auc": float(np.mean([pairwise_auc(q[:, k], b[:, k]) for k in range(3)]))}


def miscalibrated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shares Dirichlet(1, 1, 1) and labels drawn from the shares sharpened (squared, renormalised):
    the model is under-confident, so the calibration has work to do."""
    shares = rng.dirichlet([1.0, 1.0, 1.0], n)
    sharp = shares ** 2 / (shares ** 2).sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(sharp, axis=1)).sum(axis=1)
    return shares, y


def test_per_class_calibration_is_sklearns_isotonic_regression_and_estimates_nannymls_formulas() -> None:
    rng = np.random.default_rng(3)
    bins = 16
    ref, y = miscalibrated(rng, 6000)
    reference = ClassScoreBins(CLASSES, bins)
    reference.update(ref, ref.argmax(axis=1), y, np.ones(len(y)))
    cal = ClassCalibration(CLASSES, bins, reference_labels=6000)
    cal.add(reference)
    assert cal.frozen and cal.labels == 6000
    p = cal.probabilities()
    assert p is not None
    for k in range(3):
        b = score_bins(ref[:, k], bins)
        counts = np.bincount(b, minlength=bins)
        seen = counts > 0
        fit = IsotonicRegression().fit(np.flatnonzero(seen), np.bincount(b, weights=y == k, minlength=bins)[seen]
                                       / counts[seen], sample_weight=counts[seen])
        assert np.allclose(p[k][seen], fit.predict(np.flatnonzero(seen))), k

    shares, _ = miscalibrated(rng, 2000)
    decided = np.where(rng.random(2000) < 0.8, shares.argmax(axis=1), rng.integers(0, 3, 2000))  # the pod's own
    state = ClassScoreBins(CLASSES, bins)
    state.serve(shares, decided)
    ours = state.values(cal)
    # Served after the calibration froze, the same rows go straight to the dense sums.
    after = ClassScoreBins(CLASSES, bins)
    after.serve(shares, decided, cal)
    assert after.snapshot()["served"] == [] and after.values(cal) == ours
    # q is summed in units of 2**-32: within 1e-9 of the per-row formulas, not to the last bit.
    for name, value in nannyml_multiclass(p, shares, decided, bins).items():
        assert ours[f"estimated_{name}"] == pytest.approx(value, abs=1e-9), name
    # A window of panes from before and after the freeze reads as one of either.
    half = ClassScoreBins(CLASSES, bins)
    half.serve(shares[:1000], decided[:1000])
    rest = ClassScoreBins(CLASSES, bins)
    rest.serve(shares[1000:], decided[1000:], cal)
    assert half.merge(rest).values(cal) == ours


def test_class_score_bins_merge_restore_and_take_rows_back_exactly() -> None:
    rng = np.random.default_rng(4)
    parts = []
    for _ in range(3):
        shares, y = miscalibrated(rng, 300)
        state = ClassScoreBins(CLASSES, 8)
        state.serve(shares, shares.argmax(axis=1))
        state.update(shares, shares.argmax(axis=1), y, np.ones(300))
        parts.append((state, shares, y))
    a, b, c = (s for s, _, _ in parts)
    whole = ClassScoreBins(CLASSES, 8)
    allshares = np.concatenate([s for _, s, _ in parts])
    ally = np.concatenate([y for _, _, y in parts])
    whole.serve(allshares, allshares.argmax(axis=1))
    whole.update(allshares, allshares.argmax(axis=1), ally, np.ones(900))
    assert a.merge(b).merge(c).snapshot() == a.merge(b.merge(c)).snapshot() == whole.snapshot()
    assert ClassScoreBins.restore(json.loads(json.dumps(whole.snapshot()))).snapshot() == whole.snapshot()
    _, s0, y0 = parts[0]
    whole.update(s0, s0.argmax(axis=1), y0, -np.ones(300))
    bc = b.merge(c)
    assert [x.tolist() for x in whole.reference_counts()] == [x.tolist() for x in bc.reference_counts()]
    assert whole.realized() == bc.realized()
    with pytest.raises(ValueError, match="different hyperparameters"):
        a.merge(ClassScoreBins(("a", "b"), 8))
    # Rows labeled before the calibration froze and taken back out after it: nothing is left of them.
    cal = ClassCalibration(CLASSES, 8, reference_labels=900)
    cal.add(a.merge(bc))
    assert cal.frozen
    _, s1, y1 = parts[1]
    bc.update(s1, s1.argmax(axis=1), y1, -np.ones(300), cal)
    assert bc.labeled == c.labeled and bc.realized() == c.realized()
    errors = [f"estimated_{m}_error" for m in ("accuracy", "precision", "recall", "f1", "roc_auc")]
    assert [bc.values(cal)[e] for e in errors] == [c.values(cal)[e] for e in errors]


def test_shares_and_codes_read_the_scores_map_and_leave_unlisted_classes_out() -> None:
    shares = class_scores([{"a": 1.0, "b": 3.0}, None, {"a": 1.0, "b": 1.0, "z": 2.0}], CLASSES)
    assert shares[0].tolist() == [0.25, 0.75, 0.0] and np.isnan(shares[1]).all()
    assert shares[2].tolist() == [0.25, 0.25, 0.0]  # normalised over the whole map
    assert class_codes(["c", "z", None, "a"], CLASSES).tolist() == [2, -1, -1, 0]
    state = ClassScoreBins(CLASSES, 4)
    state.serve(shares, class_codes(["b", "a", "z"], CLASSES))
    assert state.count == 1 and state.unlisted == 1  # the failed row is left out; "z" counted apart
    assert state.values(frozen([[0.1, 0.2, 0.3, 0.4]] * 3))["estimated_coverage"] == 0.5


def stream(n_windows: int, per_window: int, seed: int, drift_from: int | None = None) -> tuple[
        list[tuple[str, list[Any]]], list[dict[str, Any]]]:
    """Batches of predictions (shares Dirichlet(0.7, 1, 1.3), decided by argmax) and labels drawn
    from the shares (a calibrated model), one window of event time (1 s) at a time; from window
    `drift_from` on, half the labels are replaced by a uniformly drawn class (the same shares now
    mean less). Also each window's rows, for the realized metrics."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, list[Any]]] = []
    rows: list[dict[str, Any]] = []
    for w in range(n_windows):
        shares = rng.dirichlet([0.7, 1.0, 1.3], per_window)
        y = (rng.random(per_window)[:, None] > np.cumsum(shares, axis=1)).sum(axis=1).clip(0, 2)
        if drift_from is not None and w >= drift_from:
            y = np.where(rng.random(per_window) < 0.5, rng.integers(0, 3, per_window), y)
        ts = w * 1000 + np.sort(rng.integers(0, 1000, per_window))
        version = np.where(rng.random(per_window) < 0.5, "1", "2")
        ids = [f"w{w}-{i}" for i in range(per_window)]
        out.append(("p", [Prediction(prediction_id=ids[i], model="m", version=str(version[i]), timestamp=int(ts[i]),
                                     scores=dict(zip(CLASSES, shares[i].tolist()))) for i in range(per_window)]))
        out.append(("l", [Label(ids[i], "m", int(ts[i]) + 1, CLASSES[y[i]]) for i in range(per_window)]))
        rows.append({"shares": shares, "y": y, "version": version, "ts": ts})
    return out, rows


def run(ev: ModelEvaluator, batches: list[tuple[str, list[Any]]], close: bool = True) -> list[Any]:
    windows = []
    for kind, records in batches:
        rejects = ev.add_predictions(records, NOW) if kind == "p" else ev.add_labels(records, NOW)
        assert rejects == []
        windows += ev.advance(NOW).windows
    return windows + (ev.close_all(NOW).windows if close else [])


def closed(windows: list[Any], version: str) -> list[Any]:
    return [w for w in windows if w.status == "CLOSED" and w.version == version and w.segment is None]


def realized(rows: dict[str, Any], version: str, labeled_before: int) -> dict[str, float]:
    """scikit-learn's metrics of a window's rows of `version` whose labels came before it closed."""
    keep = (rows["version"] == version) & (rows["ts"] + 1 < labeled_before)
    shares, y = rows["shares"][keep], rows["y"][keep]
    pred = shares.argmax(axis=1)
    labels = [0, 1, 2]
    return {"accuracy": accuracy_score(y, pred),
            "precision": precision_score(y, pred, labels=labels, average="macro", zero_division=0),
            "recall": recall_score(y, pred, labels=labels, average="macro", zero_division=0),
            "f1": f1_score(y, pred, labels=labels, average="macro", zero_division=0),
            "roc_auc": roc_auc_score(y, shares, multi_class="ovr", average="macro", labels=labels)}


def standard_error(window: Any, reference_labels: int) -> float:
    """As the binary test: the binomial standard error of an accuracy over the window's labeled
    predictions, combined with the calibration's (its reference labels)."""
    return float(np.sqrt(0.25 / window.labeled + 0.25 / reference_labels))


# Macro precision, recall and F1 average classes each resting on about a third of the rows: their
# tolerance is twice accuracy's (sqrt 3, rounded up), as the binary test doubles it for half the rows.
FACTOR = {"accuracy": 1, "roc_auc": 1, "precision": 2, "recall": 2, "f1": 2}


def test_on_a_calibrated_stream_the_estimates_follow_sklearns_realized_metrics() -> None:
    ev = ModelEvaluator(parse_topology(TOPOLOGY + ESTIMATES))
    batches, rows = stream(12, 2000, seed=1)
    windows = run(ev, batches)
    assert ev.calibration is not None and ev.calibration.frozen and ev.calibration.labels >= 4000
    assert all(w.metrics["estimated_accuracy"] is None for w in closed(windows, "1")[:2])  # before it froze
    late = [w for v in ("1", "2") for w in closed(windows, v)[-5:]]
    assert len(late) == 10
    for w in late:
        m, se = w.metrics, standard_error(w, 4000)
        index = w.window_start // 1000
        truth = realized(rows[index], w.version, w.window_start + 1000)
        assert w.labeled > 0.98 * w.predictions
        assert m["accuracy"] == pytest.approx(truth["accuracy"])
        assert m["macro_f1"] == pytest.approx(truth["f1"])
        for name, factor in FACTOR.items():
            tolerance = 4 * se * factor
            assert abs(m[f"estimated_{name}"] - truth[name]) < tolerance, (name, m, truth)
            assert abs(m[f"estimated_{name}_error"]) < tolerance, (name, m)
        assert m["estimated_coverage"] == 1.0


def test_when_calibration_drifts_the_estimates_are_wrong_and_their_errors_say_so() -> None:
    ev = ModelEvaluator(parse_topology(TOPOLOGY + ESTIMATES))
    batches, rows = stream(10, 2000, seed=2, drift_from=5)
    windows = run(ev, batches)
    for w in closed(windows, "1")[-3:]:
        m, se = w.metrics, standard_error(w, 4000)
        truth = realized(rows[w.window_start // 1000], w.version, w.window_start + 1000)
        # The shares did not move, so the estimates did not either; half the labels are now noise,
        # which costs accuracy a third of what it was right beyond chance, and the AUC about half
        # its distance from 0.5.
        for name in ("accuracy", "f1", "roc_auc"):
            assert m[f"estimated_{name}"] - truth[name] > 8 * se, (name, m, truth)
            assert m[f"estimated_{name}_error"] > 8 * se, (name, m)


def test_a_checkpoint_restores_the_calibration_and_carries_on_as_if_never_stopped() -> None:
    topology = parse_topology(TOPOLOGY + 'estimates: {reference_labels: 1500, bins: 16, classes: [a, b, c]}\n')
    batches, _ = stream(8, 600, seed=4)
    uninterrupted = ModelEvaluator(topology)
    first = run(uninterrupted, batches[:9], close=False)
    data = json.loads(json.dumps(uninterrupted.snapshot()))
    assert data["calibration"]["kind"] == "class_calibration" and data["calibration"]["reference_panes"] > 0
    assert data["panes"]["panes"][0][3]["estimate"]["kind"] == "class_score_bins"
    restored = ModelEvaluator.restore(topology, data)
    assert restored.snapshot() == uninterrupted.snapshot()
    assert first and run(restored, batches[9:]) == run(uninterrupted, batches[9:])


def test_predictions_held_back_at_a_checkpoint_keep_their_class_shares() -> None:
    from test_tasks import CUT, TOPOLOGIES, events, feed

    # Labels lag the predictions here: at the cut, served rows wait for the labels' event time.
    topology = parse_topology(TOPOLOGIES["multiclass-concept"] + "estimates: {reference_labels: 20, bins: 8, "
                              "classes: [a, b, c]}\n")
    batches = events("multiclass-concept")
    uninterrupted = ModelEvaluator(topology)
    feed(uninterrupted, batches[:CUT])
    data = json.loads(json.dumps(uninterrupted.snapshot()))
    assert data["deferred"]["served"] and all("score" in part for part in data["deferred"]["served"])
    restored = ModelEvaluator.restore(topology, data)
    assert restored.snapshot() == uninterrupted.snapshot()
    assert feed(restored, batches[CUT:]) == feed(uninterrupted, batches[CUT:])
    assert restored.close_all(NOW) == uninterrupted.close_all(NOW)
    # Under other classes the shares mean something else: the calibration, the panes' estimate
    # state and the held-back rows' shares start empty, and the evaluator carries on.
    other = parse_topology(TOPOLOGIES["multiclass-concept"] + "estimates: {reference_labels: 20, bins: 8, "
                           "classes: [a, b, c, d]}\n")
    moved = ModelEvaluator.restore(other, data)
    assert isinstance(moved.calibration, ClassCalibration) and moved.calibration.labels == 0
    assert all(np.isnan(s.score).all() and (s.decision == -1).all() for s in moved._served)
    feed(moved, batches[CUT:])
    assert all("estimated_accuracy" in w.metrics for w in moved.close_all(NOW).windows)


def test_an_old_multiclass_checkpoint_without_estimates_restores_under_a_topology_with_them() -> None:
    from test_tasks import CHECKPOINTS, CUT, TOPOLOGIES, events, feed

    stored = json.loads(CHECKPOINTS.read_text())["multiclass-concept"]
    topology = parse_topology(TOPOLOGIES["multiclass-concept"] + "estimates: {reference_labels: 20, "
                              "classes: [a, b, c]}\n")
    restored = ModelEvaluator.restore(topology, json.loads(json.dumps(stored)))
    assert isinstance(restored.calibration, ClassCalibration) and not restored.calibration.frozen
    feed(restored, events("multiclass-concept")[CUT:])
    last = restored.close_all(NOW).windows
    assert last and all("estimated_accuracy" in w.metrics for w in last)
    again = ModelEvaluator.restore(topology, json.loads(json.dumps(restored.snapshot())))
    assert again.snapshot() == restored.snapshot()


def test_a_metric_snapshot_carries_the_multiclass_estimates_through_the_codec() -> None:
    ev = ModelEvaluator(parse_topology(TOPOLOGY + 'estimates: {reference_labels: 500, classes: [a, b, c]}\n'))
    snapshot = closed(run(ev, stream(6, 400, seed=5)[0]), "2")[-1]
    assert snapshot.metrics["estimated_f1"] is not None and snapshot.metrics["estimated_roc_auc_error"] is not None
    assert wire.decode_metric_snapshot(wire.encode_metric_snapshot(snapshot)) == snapshot


def test_a_multiclass_topology_takes_an_estimates_section_with_its_classes() -> None:
    topology = parse_topology(TOPOLOGY + ESTIMATES + 'checks: [{name: est, metric: estimated_f1, '
                              'max_degradation: 0.05}]\n')
    assert topology.estimates.enabled and topology.estimates.classes == CLASSES and topology.estimates.bins == 32
    assert topology.checks[0].action == "hold" and topology.checks[0].worse == "lower"
    with pytest.raises(ConfigError, match="estimates.classes: a multiclass model's estimates need the classes"):
        parse_topology(TOPOLOGY + 'estimates: {reference_labels: 4000}\n')
    with pytest.raises(ConfigError, match="estimates.classes: a multiclass model's estimates need the classes"):
        parse_topology(TOPOLOGY + 'estimates: {classes: [a, a]}\n')
    with pytest.raises(ConfigError, match="estimates.classes: only applies to multiclass models"):
        parse_topology(TOPOLOGY.replace("multiclass", "binary") + ESTIMATES)


def second_best(r: Prediction) -> Prediction:
    """The prediction with the pod's own decision: its second most likely class."""
    return dataclasses.replace(r, predicted_label=sorted(r.scores, key=r.scores.__getitem__)[-2])


def test_a_check_on_an_estimate_holds_a_worse_candidate_before_any_of_its_labels_come() -> None:
    # The candidate has the baseline's shares but decides the second most likely class on a third
    # of its predictions: it is right less often, and the baseline's calibration says so before any
    # of its labels come (none do).
    topology = parse_topology(TOPOLOGY + ESTIMATES + 'checks: [{name: est, metric: estimated_accuracy, '
                              'max_degradation: 0.05, consecutive: 1, min_samples: 500}]\n')
    ev = ModelEvaluator(topology)
    commands, candidate = [], set()
    for kind, records in stream(10, 2000, seed=6)[0]:
        if kind == "p":
            candidate |= {r.prediction_id for r in records if r.version == "2"}
            ev.add_predictions([second_best(r) if r.version == "2" and i % 3 == 0 else r
                                for i, r in enumerate(records)], NOW)
        else:
            ev.add_labels([r for r in records if r.prediction_id not in candidate], NOW)
        commands += ev.advance(NOW).commands
    assert commands and {c.kind for c in commands} == {CommandKind.HOLD}, commands
    assert commands[0].rule == "est" and "estimated_accuracy" in commands[0].reason
