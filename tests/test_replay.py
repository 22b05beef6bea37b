"""`mle-stream replay`: the core over recorded events, checked against scikit-learn."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from sklearn.metrics import accuracy_score, roc_auc_score

from mle_stream.core.events import Label, Prediction
from mle_stream.core.topology import parse_topology
from mle_stream.replay import replay

TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, hop: 5s, grace: 0s, retention: 1h}\n"
    "segments: {dimensions: [country], max_values: 2}\n"
    "rollback: {max_increase: 0.05, consecutive_windows: 2, min_samples: 30}\n"
)


def recording(seed: int = 3, n: int = 3000, degrade_at: int = 20_000):
    rng = random.Random(seed)
    preds, labels = [], []
    for i in range(n):
        ts = rng.randrange(0, 40_000)
        version = "2" if rng.random() < 0.3 else "1"
        truth = rng.random() < 0.4
        acc = 0.6 if version == "2" and ts >= degrade_at else 0.9
        right = rng.random() < acc
        score = rng.uniform(0.5, 1.0) if right == truth else rng.uniform(0.0, 0.4999)
        country = rng.choice(["DE", "FR", "US", "BR"])
        preds.append(Prediction(prediction_id=str(i), model="fraud", version=version, timestamp=ts, score=score,
                                latency_ms=rng.uniform(1, 30), segment={"country": country}))
        if rng.random() < 0.9:
            labels.append(Label(prediction_id=str(i), model="fraud", timestamp=ts + rng.randrange(0, 3000),
                                label=truth))
    return preds, labels


def test_replay_windows_equal_sklearn_on_the_raw_records() -> None:
    preds, labels = recording()
    result = replay(preds, labels, {"fraud": TOPOLOGY})
    truth = {lab.prediction_id: lab.label for lab in labels}
    countries_seen: list[str] = []
    for p in sorted(preds, key=lambda r: r.timestamp):  # the cap admits the first two values seen
        if p.segment["country"] not in countries_seen and len(countries_seen) < 2:
            countries_seen.append(p.segment["country"])
    whole = [w for w in result.windows if w.segment is None]
    # 10 s windows every 5 s over data in [0, 40 s): starts 0, 5, ..., 35 s, each for both versions.
    assert sorted({w.window_start for w in whole}) == list(range(0, 40_000, 5_000))
    assert len(whole) == 2 * 8
    for w in result.windows:
        def in_window(p: Prediction) -> bool:
            if not (w.window_start <= p.timestamp < w.window_end and p.version == w.version):  # noqa: B023 (called within the iteration)
                return False
            if w.segment is None:  # noqa: B023 (called within the iteration)
                return True
            value = p.segment["country"] if p.segment["country"] in countries_seen else "__other__"
            return f"country={value}" == w.segment  # noqa: B023 (called within the iteration)
        mine = [p for p in preds if in_window(p)]
        joined = [p for p in mine if p.prediction_id in truth]
        assert (w.predictions, w.labeled) == (len(mine), len(joined)), w
        if joined:
            y = [truth[p.prediction_id] for p in joined]
            decided = [p.score >= 0.5 for p in joined]
            assert abs(w.metrics["accuracy"] - accuracy_score(y, decided)) < 1e-9
            if len(set(y)) == 2:
                assert abs(w.metrics["roc_auc"] - roc_auc_score(y, [p.score for p in joined])) < 1e-3
    segments = {w.segment for w in result.windows if w.segment}
    assert segments == {f"country={c}" for c in countries_seen} | {"country=__other__"}
    # v2 degrades at 20 s: the 10 s windows from 20 s on fail, two in a row roll it back.
    assert len(result.decisions) == 1 and result.decisions[0].window_start >= 15_000


def test_replay_command_line_prints_one_json_object(tmp_path: Path) -> None:
    preds, labels = recording(n=500)
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({
        "prediction_id": p.prediction_id, "model": p.model, "version": p.version, "timestamp": p.timestamp,
        "score": p.score}) for p in preds) + "\n{broken\n")
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps({
        "prediction_id": lab.prediction_id, "model": lab.model, "timestamp": lab.timestamp, "label": lab.label})
        for lab in labels))
    run = subprocess.run([sys.executable, "-m", "mle_stream", "replay", "--predictions", str(tmp_path / "p.jsonl"),
                          "--labels", str(tmp_path / "l.jsonl"), "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert set(out) == {"windows", "decisions", "rejected"} and out["rejected"] == 1
    assert f"{tmp_path / 'p.jsonl'}:501: not JSON" in run.stderr or f"{tmp_path / 'p.jsonl'}:501:" in run.stderr
    # No topology: the default is binary (the events carry score), 1-hour windows, the most
    # frequent version as baseline.
    window = out["windows"][0]
    assert set(window) >= {"model", "version", "segment", "window_start", "window_end", "predictions", "labeled",
                           "metrics"}
    assert window["window_end"] - window["window_start"] == 3_600_000
    assert sum(w["predictions"] for w in out["windows"] if w["segment"] is None) == 500
    baseline = [w for w in out["windows"] if w["role"] == "baseline"]
    assert baseline and baseline[0]["version"] == "1"


def test_replay_equals_the_evaluator_advanced_after_every_record() -> None:
    """The replay advances only where a window closes (and at the end); driven one record at a time
    with an advance after each, as the finest-grained stream would, the evaluator must end with the
    same windows, decisions and rejections: late labels, corrections and duplicates included."""
    import dataclasses

    from mle_stream.core.evaluator import ModelEvaluator
    from worker_process import MODELS, TOPOLOGY, traffic

    rng = random.Random(11)
    preds, labels = traffic(1_700_000_000_000, 30, rng, bad_candidate="fraud", per_window=40, bad_from=5)
    predictions = [p for m in preds for p in m]
    late = [dataclasses.replace(x, timestamp=x.timestamp + rng.choice([300, 2500, 9000]), label=not x.label)
            for x in rng.sample([x for m in labels for x in m], 150)]
    all_labels = [x for m in labels for x in m] + late + late[:20]
    for grace in ("0s", "3s"):
        topologies = {m: parse_topology(TOPOLOGY.replace("grace: 0s", f"grace: {grace}").format(model=m))
                      for m in MODELS}
        result = replay(predictions, all_labels, topologies)

        evaluators = {m: ModelEvaluator(t) for m, t in topologies.items()}
        now = max(r.timestamp for r in predictions + all_labels)  # the replay's clock: the recording's last record
        windows, decisions = {}, []
        order = sorted([(p.timestamp, 0, i, p) for i, p in enumerate(predictions)]
                       + [(x.timestamp, 1, i, x) for i, x in enumerate(all_labels)], key=lambda e: e[:3])
        for _, kind, _, record in order:
            ev = evaluators[record.model]
            ev.add_predictions([record], now) if kind == 0 else ev.add_labels([record], now)
            advance = ev.advance(now, updates=True)
            windows.update({(w.model, w.version, w.segment, w.window_start): w for w in advance.windows})
            decisions += advance.commands
        for m in sorted(evaluators):
            advance = evaluators[m].close_all(now)
            windows.update({(w.model, w.version, w.segment, w.window_start): w for w in advance.windows})
            decisions += advance.commands

        assert {(w.model, w.version, w.segment, w.window_start): w for w in result.windows} == windows
        assert result.decisions == decisions
        assert grace == "0s" or any(d.kind.value == "ROLLBACK" for d in decisions)  # the test decides something
