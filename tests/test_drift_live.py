"""Drift in the evaluator: per version and window, against the version's profile or the baseline's
window, checked against scipy on the raw rows that went in; warm-up, snapshots, retrain commands,
the DriftTable on the wire and in `mle-stream replay --json`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from scipy import stats

from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.drift.live import SCORE
from mle_stream.core.drift.profile import build_profile
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import CommandKind, DriftTable, Label, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.errors import ConfigError, InvalidEvent
from mle_stream.stream.processor import Incoming, StreamProcessor

START = 1_800_000_000_000  # a window boundary (multiple of 60 s)
NOW = START + 10**8
BASE = """
model: m
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 60s, grace: 0s, retention: 1h}
"""


def topology(extra: str = "drift: {warmup: 500}\n"):
    return parse_topology(BASE + extra)


def traffic(seed: int, windows: int = 2, per_window: int = 4000, shift: dict[str, float] | None = None,
            base_shift: dict[str,
                             float] | None = None) -> tuple[list[Prediction], dict[tuple[int, str], dict[str, list]]]:
    """Predictions of v1 and v2 alternating, features x, y (normal) and c (text); `shift` moves
    v2's feature means, `base_shift` v1's. Also returns the raw values per (window, version)."""
    rng = np.random.default_rng(seed)
    shift, base_shift = shift or {}, base_shift or {}
    preds, raw = [], {}
    step = 60_000 // per_window
    for w in range(windows):
        for i in range(per_window):
            version = "2" if i % 2 else "1"
            moved = shift if version == "2" else base_shift
            x = float(rng.normal(moved.get("x", 0.0), 1.0))
            y = float(rng.normal(moved.get("y", 0.0), 2.0))
            c = "a" if rng.random() < 0.5 + moved.get("c", 0.0) else "b"
            score = float(rng.beta(2, 5))
            ts = START + w * 60_000 + i * step
            preds.append(Prediction(prediction_id=f"{w}-{i}", model="m", version=version, timestamp=ts, score=score,
                                    features={"x": x, "y": y, "c": c}))
            cols = raw.setdefault((START + w * 60_000, version), {"x": [], "y": [], "c": [], SCORE: []})
            for name, value in (("x", x), ("y", y), ("c", c), (SCORE, score)):
                cols[name].append(value)
    return preds, raw


def run(ev: ModelEvaluator, preds: list[Prediction], batch: int = 300) -> list[DriftTable]:
    tables: dict[tuple[str, int], DriftTable] = {}
    for k in range(0, len(preds), batch):
        ev.add_predictions(preds[k:k + batch], NOW)
        for d in ev.advance(NOW, updates=True).drift:
            tables[(d.version, d.window_start)] = d
    for d in ev.close_all(NOW).drift:
        tables[(d.version, d.window_start)] = d
    return [tables[k] for k in sorted(tables)]


def test_candidate_is_compared_with_the_baseline_window_on_the_rows_that_went_in() -> None:
    preds, raw = traffic(seed=1, shift={"x": 0.5})
    tables = run(ModelEvaluator(topology()), preds)
    assert {(d.version, d.window_start) for d in tables} == {("2", START), ("2", START + 60_000)}, \
        "the baseline has no profile: it is only the candidate's reference"
    for d in tables:
        assert d.reference == "baseline v1 window" and d.role == "candidate" and d.status == "CLOSED"
        assert d.drifted == ("x",)
        assert d.drifted_share == pytest.approx(1 / 3)  # x of x, y, c (the score is not a feature)
        ref, cur = raw[(d.window_start, "1")], raw[(d.window_start, "2")]
        for name in ("x", "y", SCORE):
            f = d.features[name]
            assert (f["reference_count"], f["current_count"]) == (len(ref[name]), len(cur[name]))
            # Against scipy on the raw rows: the sketch's KS bounds bracket the exact statistic,
            # and its Wasserstein is within its stated error bound.
            ks = stats.ks_2samp(ref[name], cur[name]).statistic
            assert f["ks_statistic"] - 1e-12 <= ks <= f["ks_statistic_upper"] + 1e-12
            w = stats.wasserstein_distance(ref[name], cur[name]) / np.std(ref[name])
            assert abs(f["wasserstein"] - w) <= f["wasserstein_error_bound"] + 1e-9
        c = d.features["c"]
        assert c["kind"] == "categorical" and c["test"] == "chi_square" and not c["drifted"]
        table = np.array([[ref["c"].count(v), cur["c"].count(v)] for v in ("a", "b")])
        assert c["chi_square"] == pytest.approx(stats.chi2_contingency(table, correction=False)[0], rel=1e-9)
        assert d.features["x"]["wasserstein"] > 0.4 and not d.features["y"]["drifted"]


def test_a_version_with_a_profile_is_compared_with_it_and_bins_are_the_profiles() -> None:
    rng = np.random.default_rng(7)
    training = {"x": rng.normal(0, 1, 20_000), "y": rng.normal(0, 2, 20_000),
                "c": np.where(rng.random(20_000) < 0.5, "a", "b"), "score": rng.beta(2, 5, 20_000)}
    profile = build_profile(training, model="m", version="1", bins=50)
    preds, raw = traffic(seed=2, base_shift={"y": 1.0})  # v1's live y moved by half a std
    ev = ModelEvaluator(topology(), {"1": profile})
    assert ev.drift is not None and ev.drift.bins("2") is ev.drift.bins("1"), "the candidate shares v1's bins"
    assert ev.drift.bins("1")["x"].edges == profile.features["x"].edges
    tables = {(d.version, d.window_start): d for d in run(ev, preds)}
    base = tables[("1", START)]
    assert base.reference == "profile v1" and base.drifted == ("y",)
    f = base.features["y"]
    assert f["reference_count"] == 20_000 and f["current_count"] == len(raw[(START, "1")]["y"])
    ks = stats.ks_2samp(training["y"], raw[(START, "1")]["y"]).statistic
    assert f["ks_statistic"] - 1e-12 <= ks <= f["ks_statistic_upper"] + 1e-12
    cand = tables[("2", START)]
    assert cand.reference == "baseline v1 window" and "y" in cand.drifted  # v2 did not move; v1 did


def test_rows_before_the_bins_are_learned_wait_and_count() -> None:
    preds, raw = traffic(seed=3, windows=1, per_window=2000)
    ev = ModelEvaluator(topology("drift: {warmup: 900}\n"))
    ev.add_predictions(preds[:1000], NOW)  # 500 of v1: bins not learned yet
    assert ev.advance(NOW, updates=True).drift == [] and ev.drift is not None and ev.drift.bins("1") is None
    tables = run(ev, preds[1000:])
    (d,) = tables
    assert d.features["x"]["current_count"] == 1000 and d.features["x"]["reference_count"] == 1000


def same_features(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    """Counts, tests and decisions exactly; floats to 1e-12 (bin sums depend on how rows were batched)."""
    assert a.keys() == b.keys()
    for name in a:
        for k, v in a[name].items():
            assert v == pytest.approx(b[name][k], rel=1e-12,
                                      abs=1e-15) if isinstance(v, float) else v == b[name][k], (name, k)
    return True


@pytest.mark.parametrize("cut", [400, 1300, 5000])  # in the warm-up, just after it, windows later
def test_a_restored_evaluator_gives_the_uninterrupted_tables(cut: int) -> None:
    preds, _ = traffic(seed=4, windows=2, per_window=4000, shift={"x": 0.3})
    t = topology("drift: {warmup: 1000}\n")
    whole = run(ModelEvaluator(t), preds)
    first = ModelEvaluator(t)
    tables: dict[tuple[str, int], DriftTable] = {}
    for k in range(0, cut, 250):  # other batches than run()'s: the bins must not depend on them
        first.add_predictions(preds[k:min(k + 250, cut)], NOW)
        tables.update({(d.version, d.window_start): d for d in first.advance(NOW, updates=True).drift})
    restored = ModelEvaluator.restore(t, json.loads(json.dumps(first.snapshot())))
    tables.update({(d.version, d.window_start): d for d in run(restored, preds[cut:])})
    assert sorted(tables) == [(d.version, d.window_start) for d in whole]
    for d in whole:
        assert same_features(tables[(d.version, d.window_start)].features, d.features)


def test_retrain_fires_on_drifted_share_with_evidence_once_per_cooldown() -> None:
    rng = np.random.default_rng(9)
    training = {"x": rng.normal(0, 1, 20_000), "y": rng.normal(0, 2, 20_000),
                "c": np.where(rng.random(20_000) < .5, "a", "b")}
    profile = build_profile(training, model="m", version="1", created_at="2027-01-15T08:00:00Z")
    t = topology("drift: {}\nretrain: {drifted_share: 0.5, train_window: 7d, cooldown: 90s}\n")
    preds, _ = traffic(seed=5, windows=4, base_shift={"x": 1.0, "y": 2.0})
    ev = ModelEvaluator(t, {"1": profile})
    commands = []
    for k in range(0, len(preds), 500):
        ev.add_predictions(preds[k:k + 500], NOW)
        commands += ev.advance(NOW).commands
    commands += ev.close_all(NOW).commands
    retrains = [c for c in commands if c.kind is CommandKind.RETRAIN]
    # Windows 0..3 all drift; the cooldown of 90 s lets windows 0 and 2 fire, not 1 and 3.
    assert [c.window_end for c in retrains] == [START + 60_000, START + 180_000]
    first = retrains[0]
    assert first.traffic == {} and first.rule == "retrain"
    assert first.window_start == START, "7 days back, but not before training (the profile's time: START)"
    evidence = json.loads(first.evidence)
    assert set(evidence["drift"]["features"]) == {"x", "y"} and evidence["drift"]["reference"] == "profile v1"
    assert evidence["train_on"] == {"from": first.window_start, "to": first.window_end}
    # Deciding the same windows again gives the same ids.
    again = ModelEvaluator(t, {"1": profile})
    again.add_predictions(preds, NOW)
    assert [c.command_id for c in again.close_all(NOW).commands if c.kind is CommandKind.RETRAIN] == \
        [c.command_id for c in retrains]


def test_train_range_starts_no_earlier_than_training() -> None:
    rng = np.random.default_rng(10)
    trained = "2027-01-15T07:59:00Z"  # START is 2027-01-15T08:00:00Z: trained a minute before
    profile = build_profile({"x": rng.normal(0, 1, 5000)}, model="m", version="1", score_column=None,
                            created_at=trained)
    t = topology("drift: {}\nretrain: {drifted_share: 0.5}\n")
    preds, _ = traffic(seed=6, windows=1, base_shift={"x": 2.0})
    ev = ModelEvaluator(t, {"1": profile})
    ev.add_predictions(preds, NOW)
    (cmd,) = [c for c in ev.close_all(NOW).commands if c.kind is CommandKind.RETRAIN]
    assert (cmd.window_start, cmd.window_end) == (START - 60_000, START + 60_000), "30 days back, but from training on"


def test_retrain_after_n_new_labels_counts_the_baseline_only_and_starts_again() -> None:
    t = topology("retrain: {new_labels: 1500}\n")
    preds, _ = traffic(seed=8, windows=3, per_window=2000)
    labels = [Label(p.prediction_id, "m", p.timestamp + 1, True) for p in preds]
    ev = ModelEvaluator(t)
    commands = []
    for w in range(3):
        chunk = slice(w * 2000, (w + 1) * 2000)
        ev.add_predictions(preds[chunk], NOW)
        commands += ev.advance(NOW).commands  # closes the window before: its labels are in
        ev.add_labels(labels[chunk])
    commands += ev.close_all(NOW).commands
    retrains = [c for c in commands if c.kind is CommandKind.RETRAIN]
    # 1000 baseline labels per window: 1000 (no), 2000 (fires, back to 0), 1000 (no).
    assert [c.window_end for c in retrains] == [START + 120_000]
    assert json.loads(retrains[0].evidence)["labels_since_training"] == 2000


def test_drift_tables_go_to_the_drift_topic_as_avro() -> None:
    preds, _ = traffic(seed=11, windows=2, shift={"x": 0.5})
    p = StreamProcessor({"m": topology()}, Topics(), Signer("drift", b"drift-key".ljust(32, b"-")), clock=lambda: NOW)
    p.evaluators["m"].labels_idle = True  # no labels: the worker closes windows by predictions alone
    out = p.process([Incoming(Topics().predictions, 0, i, wire.encode_predictions(preds[k:k + 500]))
                     for i, k in enumerate(range(0, len(preds), 500))])
    tables = [wire.decode_drift_table(o.value) for o in out if o.topic == "mle.drift"]
    closed = [d for d in tables if d.status == "CLOSED"]
    assert [(d.version, d.window_start) for d in closed] == [("2", START)]
    assert closed[0].drifted == ("x",)


def test_drift_table_wire_format_round_trips_and_names_bad_fields() -> None:
    preds, _ = traffic(seed=12, windows=1)
    (d,) = run(ModelEvaluator(topology()), preds)
    assert wire.decode_drift_table(wire.encode_drift_table(d)) == d
    doc = wire.to_json_dict(d)
    assert wire.decode_drift_table(json.dumps(doc).encode()) == d
    doc["features"]["x"]["psi"] = "high"
    with pytest.raises(InvalidEvent, match=r"features\.x\.psi"):
        wire.decode_drift_table(json.dumps(doc).encode())


def test_replay_json_has_drift_under_each_window_with_a_reference_profile(tmp_path: Any, capsys: Any) -> None:
    from mle_stream.cli import main
    from mle_stream.profiles import write_profile

    preds, _ = traffic(seed=13, windows=2, shift={"x": 0.5})
    rng = np.random.default_rng(14)
    profile = build_profile({"x": rng.normal(0, 1, 10_000), "y": rng.normal(0, 2, 10_000)}, model="m", version="2",
                            score_column=None)
    write_profile(profile, tmp_path / "ref.json")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(wire.to_json_dict(p)) for p in preds))
    (tmp_path / "m.yaml").write_text(BASE)  # no drift section: the reference turns drift on
    assert main(["replay", "--predictions", str(tmp_path / "p.jsonl"), "-t", str(tmp_path / "m.yaml"),
                 "--reference", str(tmp_path / "ref.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    v2 = [w for w in doc["windows"] if w["version"] == "2"]
    assert len(v2) == 2
    for w in v2:
        assert w["drift_reference"] == "profile v2"
        assert set(w["drift"]) == {"x", "y"}  # the profile's features; it has no score
        assert w["drift"]["x"]["drifted"] is True and w["drift"]["y"]["drifted"] is False
        assert isinstance(w["drift"]["x"]["psi"], float)
    assert all("drift" not in w for w in doc["windows"] if w["version"] == "1")  # no profile, no reference


@pytest.mark.parametrize("section, message", [
    ("drift: {thresholds: {alpha: 1.5}}\n", "drift.thresholds.alpha: must be below 1"),
    ("drift: {bins: 0}\n", "drift.bins"),
    ("drift: {colour: red}\n", "drift.colour: unknown key"),
    ("retrain: {cooldown: 1d}\n", "retrain: names no trigger"),
    ("retrain: {drifted_share: 0.3}\n", "retrain.drifted_share: needs a drift section"),
    ("drift: {}\nretrain: {concept_drift: yes please}\n", "retrain.concept_drift: expected true or false"),
])
def test_drift_and_retrain_sections_are_validated_with_lines(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        parse_topology(BASE + section, "t.yaml")
    assert "t.yaml:" in str(exc.value)


def labeled_traffic(seed: int, windows: int, per_window: int, candidate_error: list[float],
                    baseline_error: float = 0.05):
    """Predictions (score 0.9: decision True) and labels; a version's label is False (an error)
    with its window's error rate. Returns predictions, labels and the errors per (version, pane)."""
    rng = np.random.default_rng(seed)
    preds, labels, counts = [], [], {}
    step = 60_000 // per_window
    for w in range(windows):
        for i in range(per_window):
            version = "2" if i % 2 else "1"
            rate = candidate_error[w] if version == "2" else baseline_error
            wrong = bool(rng.random() < rate)
            pid = f"{w}-{i}"
            ts = START + w * 60_000 + i * step
            preds.append(Prediction(pid, "m", version, ts, score=0.9, features={"x": float(rng.normal())}))
            labels.append(Label(pid, "m", ts + 1, not wrong))
            n, k = counts.get((version, START + w * 60_000), (0, 0))
            counts[(version, START + w * 60_000)] = (n + 1, k + wrong)
    return preds, labels, counts


CONCEPT = ("drift:\n  warmup: 200\n  concept:\n"
           "    - {detector: page_hinkley, mode: up, threshold: 15, min_instances: 30}\n"
           "    - {detector: cusum}\n")


def evaluate_windows(ev: ModelEvaluator, preds, labels, per_window: int, windows: range) -> tuple[list, list]:
    tables, commands = [], []
    for w in windows:
        chunk = slice(w * per_window, (w + 1) * per_window)
        ev.add_predictions(preds[chunk], NOW)
        ev.add_labels(labels[chunk])
        advance = ev.advance(NOW)
        tables += advance.drift
        commands += advance.commands
    return tables, commands


def test_concept_drift_alarms_equal_river_fed_the_same_pane_sequences() -> None:
    from river.drift import PageHinkley

    from mle_stream.core.drift.concept import pane_sequence

    rates = [0.05] * 4 + [0.4] * 4
    preds, labels, counts = labeled_traffic(seed=21, windows=8, per_window=1000, candidate_error=rates)
    ev = ModelEvaluator(topology(CONCEPT))
    tables, _ = evaluate_windows(ev, preds, labels, 1000, range(8))
    tables += ev.close_all(NOW).drift
    got = [(d.version, a["detector"], a["position"], a["context"]["pane_start"])
           for d in tables if d.status == "CLOSED" for a in d.concept_drift]
    # The truth: river's PageHinkley over each version's panes in event-time order, each pane's
    # errors in the canonical order.
    expected = []
    for version in ("1", "2"):
        ph, position = PageHinkley(mode="up", threshold=15, min_instances=30), 0
        for w in range(8):
            pane = START + w * 60_000
            n, k = counts[(version, pane)]
            for x in pane_sequence(n, k, f"m/{version}/{pane}"):
                ph.update(x)
                if ph.drift_detected:
                    expected.append((version, "page_hinkley", position, pane))
                position += 1
    assert [g for g in got if g[1] == "page_hinkley"] == sorted(expected, key=lambda e: (e[3], e[0]))
    assert any(g[0] == "2" and g[3] >= START + 4 * 60_000 for g in got), "the jump at window 4 is caught"
    assert all(g[3] >= START + 4 * 60_000 for g in got if g[0] == "2" and g[1] == "cusum")
    first = next(d for d in tables if d.concept_drift and d.version == "2")
    assert first.concept_drift[0]["params"]["threshold"] == 15.0 and first.reference == "baseline v1 window"


def test_concept_drift_triggers_retrain_and_survives_a_restore() -> None:
    t = topology(CONCEPT + "retrain: {concept_drift: true, cooldown: 1d}\n")
    preds, labels2, _ = labeled_traffic(seed=23, windows=8, per_window=1000, candidate_error=[0.05] * 4 + [0.4] * 4)
    # The baseline is the one that degrades: swap the versions.
    swapped = [Prediction(p.prediction_id, "m", "1" if p.version == "2" else "2", p.timestamp, score=p.score,
                          features=p.features) for p in preds]
    whole = ModelEvaluator(t)
    tables, commands = evaluate_windows(whole, swapped, labels2, 1000, range(8))
    retrains = [c for c in commands if c.kind is CommandKind.RETRAIN]
    assert len(retrains) == 1, "one alarm fires the retrain, the cooldown holds the rest"
    evidence = json.loads(retrains[0].evidence)
    assert evidence["concept_drift"][0]["detector"] in ("page_hinkley", "cusum")
    assert retrains[0].window_end >= START + 5 * 60_000
    # Stopped after window 3, restored from JSON, continued: the same alarms and command.
    first = ModelEvaluator(t)
    t1, c1 = evaluate_windows(first, swapped, labels2, 1000, range(4))
    restored = ModelEvaluator.restore(t, json.loads(json.dumps(first.snapshot())))
    t2, c2 = evaluate_windows(restored, swapped, labels2, 1000, range(4, 8))
    assert [c.command_id for c in c1 + c2 if c.kind is CommandKind.RETRAIN] == [retrains[0].command_id]
    alarms = lambda ts: [(d.version, d.window_start, d.concept_drift) for d in ts if d.status == "CLOSED"]  # noqa: E731
    assert alarms(t1 + t2) == alarms(tables)


def test_concept_detectors_are_validated_in_the_topology() -> None:
    with pytest.raises(ConfigError, match=r"drift\.concept\[0\].*adwin.*dleta") as exc:
        parse_topology(BASE + "drift:\n  concept:\n    - {detector: adwin, dleta: 0.1}\n", "t.yaml")
    assert "t.yaml:" in str(exc.value)
    with pytest.raises(ConfigError, match=r"retrain\.concept_drift: needs detectors"):
        parse_topology(BASE + "drift: {}\nretrain: {concept_drift: true}\n", "t.yaml")


def test_regression_detectors_see_each_panes_absolute_errors_corrections_applied() -> None:
    from river.drift import PageHinkley

    from mle_stream.core.drift.concept import pane_values_sequence

    t = parse_topology(BASE.replace("task: binary", "task: regression")
                       + "rollback: {metric: serving_error_rate}\n"
                       + "drift:\n  concept:\n    - {detector: page_hinkley, mode: up, threshold: 20}\n")
    rng = np.random.default_rng(31)
    ev = ModelEvaluator(t)
    errors: dict[tuple[str, int], list[float]] = {}
    tables = []
    for w in range(6):
        preds, labels = [], []
        for i in range(400):
            version = "2" if i % 2 else "1"
            pid, ts = f"{w}-{i}", START + w * 60_000 + i * 100
            value = float(rng.normal(10, 1))
            noise = 3.0 if (version == "2" and w >= 3) else 0.5
            truth = value + float(rng.normal(0, noise))
            preds.append(Prediction(pid, "m", version, ts, value=value))
            if i % 10 == 0:  # a first, wrong label, corrected below: only the correction counts
                labels.append(Label(pid, "m", ts + 1, truth + 100.0))
            labels.append(Label(pid, "m", ts + 2, truth))
            errors.setdefault((version, START + w * 60_000), []).append(abs(value - truth))
        ev.add_predictions(preds, NOW)
        tables += ev.advance(NOW).drift
        ev.add_labels(labels[: len(labels) // 2])
        ev.add_labels(labels[len(labels) // 2:])
    tables += ev.close_all(NOW).drift
    got = [(d.version, a["position"], a["context"]["pane_start"])
           for d in tables if d.status == "CLOSED" for a in d.concept_drift]
    expected = []
    for version in ("1", "2"):
        ph, position = PageHinkley(mode="up", threshold=20), 0
        for w in range(6):
            pane = START + w * 60_000
            for x in pane_values_sequence(np.array(errors[(version, pane)]), f"m/{version}/{pane}"):
                ph.update(x)
                if ph.drift_detected:
                    expected.append((version, position, pane))
                position += 1
    assert got == sorted(expected, key=lambda e: (e[2], e[0]))
    assert any(v == "2" and pane >= START + 3 * 60_000 for v, _, pane in got), "the noisier v2 is caught"
