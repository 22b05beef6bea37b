"""The worker as users run it (`mle-stream worker`, a Faust process) over a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Label, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.kafka import producer_config
from mle_stream.keys import HMAC_KEY_ID, generate_key_pair, verify_keys_entry
from mle_stream.replay import replay

pytestmark = pytest.mark.broker

KEY = "worker-test-key-0123456789abcdef"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY.encode())
VERIFIER = SIGNER.verifier()
FORGER = Signer(HMAC_KEY_ID, b"not the key, the same key id: a forgery")
TOPOLOGY = """\
model: fraud
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 2s, grace: 0s, retention: 1h, updates_every: 0s}
segments: {dimensions: [country]}
rollback: {max_increase: 0.1, consecutive_windows: 2, min_samples: 20}
drift: {warmup: 30, bins: 5}
"""


@pytest.fixture
def worker(tmp_path: Path, kafka_bootstrap: str, topics: Topics, request: pytest.FixtureRequest):
    topology = tmp_path / "fraud.yaml"
    topology.write_text(getattr(request, "param", TOPOLOGY))
    # The worker signs with the shared secret and also accepts approvals from the operator ana's own key.
    _, ana_public = generate_key_pair("ana", tmp_path / "ana")
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": KEY,
           "MLE_VERIFY_KEYS": verify_keys_entry(ana_public), "MLE_WORKER_GROUP": f"worker-{uuid.uuid4().hex[:8]}"}
    log = open(tmp_path / "worker.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "mle_stream", "worker", "--topology", str(topology)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)  # Faust's data dir there
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    print((tmp_path / "worker.log").read_text()[-3000:])


def window(start: int, error_rate: dict[str, float]) -> tuple[list[Prediction], list[Label]]:
    """40 predictions per version; the first error_rate * 40 of each version are wrong."""
    preds, labels = [], []
    for version in ("1", "2"):
        for i in range(40):
            pid = f"{start}-{version}-{i}"
            preds.append(Prediction(prediction_id=pid, model="fraud", version=version, timestamp=start + i * 10,
                                    score=0.6 + i / 100, latency_ms=5.0 + i,
                                    segment={"country": "DE" if i % 3 else "FR"},
                                    features={"x": i % 7 + (3.0 if version == "2" else 0.0), "y": float(i % 5)}))
            labels.append(Label(prediction_id=pid, model="fraud", timestamp=start + 1500,
                                label=i >= error_rate[version] * 40))
    return preds, labels


def test_worker_survives_bad_input_dead_letters_it_and_rolls_back(worker, kafka_bootstrap: str, topics: Topics) -> None:
    producer = Producer(producer_config(kafka_bootstrap))
    delivered: dict[bytes, tuple[str, int, int]] = {}

    def remember(err, msg) -> None:  # (topic, partition, offset) of each bad message, from the broker itself
        assert err is None, err
        delivered[msg.value()] = (msg.topic(), msg.partition(), msg.offset())

    bad = {
        b"{oops": "not JSON",
        b"\xc3\x01" + b"\x00" * 8 + b"junk": "fingerprint",
        json.dumps({"prediction_id": "x", "model": "fraud", "version": "1", "score": 0.5}).encode(): "timestamp",
        wire.encode_prediction(Prediction(prediction_id="s", model="spam", version="1", timestamp=1, score=0.1)):
            "no topology for model 'spam'",
    }
    for payload in bad:
        producer.produce(topics.predictions, key=b"fraud", value=payload, on_delivery=remember)
    producer.flush(10)

    base = (int(time.time() * 1000) - 60_000) // 2000 * 2000
    rates = [{"1": 0.1, "2": 0.1}, {"1": 0.1, "2": 0.5}, {"1": 0.1, "2": 0.5}]
    all_preds, all_labels = [], []
    for w, rate in enumerate(rates):
        preds, labels = window(base + w * 2000, rate)
        all_preds += preds
        all_labels += labels
        producer.produce(topics.predictions, key=b"fraud", value=wire.encode_predictions(preds))
        producer.produce(topics.labels, key=b"fraud", value=wire.encode_labels(labels))
    # One later prediction moves event time past the third window's end, closing it.
    tick = Prediction(prediction_id="tick", model="fraud", version="1", timestamp=base + 6000, score=0.9)
    all_preds.append(tick)
    producer.produce(topics.predictions, key=b"fraud", value=wire.encode_prediction(tick))
    producer.flush(10)

    out = read_until(kafka_bootstrap, [topics.dead_letter, topics.metrics, topics.commands, topics.drift],
                     lambda ms: sum(m.topic() == topics.commands for m in ms) >= 1
                     and sum(m.topic() == topics.dead_letter for m in ms) >= len(bad), timeout_s=90)
    assert worker.poll() is None, "the worker must keep running after bad input"

    letters = [json.loads(m.value()) for m in out if m.topic() == topics.dead_letter]
    assert len(letters) == len(bad)
    for payload, reason in bad.items():
        topic, partition, offset = delivered[payload]
        entry = next(d for d in letters if (d["source_topic"], d["partition"],
                                            d["offset"]) == (topic, partition, offset))
        assert reason in entry["reason"] or reason == entry["field"], entry

    snaps = [wire.decode_metric_snapshot(m.value()) for m in out if m.topic() == topics.metrics]
    got = {(s.window_start - base, s.version): (s.predictions, s.labeled, s.metrics["error_rate"])
           for s in snaps if s.status == "CLOSED" and s.segment is None}
    for w, rate in enumerate(rates):
        for version in ("1", "2"):
            predictions = 40
            assert got[(w * 2000, version)] == (predictions, 40, rate[version])
    commands = [wire.decode_command(m.value()) for m in out if m.topic() == topics.commands]
    assert len(commands) == 1
    command = commands[0]
    assert command.kind.value == "ROLLBACK" and VERIFIER.verify(command)
    assert (command.window_start - base, command.window_end - base) == (2000, 6000)

    # The replay of the same records gives the same windows as the stream's last word on each.
    stream_last = {(s.version, s.segment, s.window_start): s for s in snaps}
    replayed = replay(all_preds, all_labels, {"fraud": parse_topology(TOPOLOGY)})
    replayed_by_key = {(w.version, w.segment, w.window_start): w for w in replayed.windows}
    for key, s in stream_last.items():
        w = replayed_by_key[key]
        assert (s.predictions, s.labeled, s.metrics) == (w.predictions, w.labeled, dict(w.metrics)), (s, w)
    # 3 windows x 2 versions x (whole, DE, FR), and the tick's window (v1, whole).
    assert len(stream_last) == 3 * 2 * 3 + 1
    assert [c.command_id for c in replayed.decisions] == [command.command_id]

    # Drift tables on mle.drift: v2 against v1's window, x moved by 3, y not; as the replay has them.
    tables = {(d.version, d.window_start): d for d in (wire.decode_drift_table(m.value())
                                                      for m in out if m.topic() == topics.drift)}
    assert {v for v, _ in tables} == {"2"}
    for w in range(3):
        d = tables[("2", base + w * 2000)]
        assert d.reference == "baseline v1 window" and "x" in d.drifted and "y" not in d.drifted
    replayed_drift = {(d.version, d.window_start): d for d in replayed.drift}
    for key, d in tables.items():
        assert d.features == replayed_drift[key].features


@pytest.mark.parametrize("worker", [TOPOLOGY + "decision: {outage_after: 2s}\n"], indirect=True)
def test_a_silent_source_holds_the_rollout_without_any_input(worker, kafka_bootstrap: str, topics: Topics) -> None:
    producer = Producer(producer_config(kafka_bootstrap))
    preds, _ = window((int(time.time() * 1000) - 60_000) // 2000 * 2000, {"1": 0.1, "2": 0.1})
    producer.produce(topics.predictions, key=b"fraud", value=wire.encode_predictions(preds))
    producer.flush(10)
    # Then nothing: the worker's timer (every 10 s) must notice that predictions stopped.
    out = read_until(kafka_bootstrap, [topics.commands], lambda ms: len(ms) >= 1, timeout_s=60)
    (command,) = [wire.decode_command(m.value()) for m in out]
    assert command.kind.value == "HOLD" and VERIFIER.verify(command)
    assert "no predictions for" in command.reason and command.rule == "source-outage:predictions"


APPROVAL_TOPOLOGY = """\
model: fraud
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 2s, grace: 0s, retention: 1h}
checks: [{name: errors, metric: error_rate, max_degradation: 0.1, min_samples: 20}]
rollout: {steps: [10, 100], windows: 1, samples: 0, approval: true}
"""


@pytest.mark.parametrize("worker", [APPROVAL_TOPOLOGY], indirect=True)
def test_a_rollout_waits_for_an_operators_signed_approve_on_the_commands_topic(worker, kafka_bootstrap: str,
                                                                               topics: Topics, tmp_path: Path) -> None:
    from mle_stream.core.events import Command, CommandKind

    producer = Producer(producer_config(kafka_bootstrap))
    start = (int(time.time() * 1000) - 60_000) // 2000 * 2000
    for s in (start, start + 2000):  # the second window closes the first, which passes the gate
        preds, labels = window(s, {"1": 0.1, "2": 0.1})
        producer.produce(topics.predictions, key=b"fraud", value=wire.encode_predictions(preds))
        producer.produce(topics.labels, key=b"fraud", value=wire.encode_labels(labels))
    producer.flush(10)
    out = read_until(kafka_bootstrap, [topics.commands], lambda ms: len(ms) >= 1, timeout_s=60)
    (hold,) = [wire.decode_command(m.value()) for m in out]
    assert (hold.kind, hold.rule) == (CommandKind.HOLD, "await-approval:step-100")
    forged = Command(command_id="operator-1", kind=CommandKind.APPROVE, model="fraud", baseline_version="1",
                     candidate_version="2", traffic={"1": 0, "2": 100}, reason="let me in",
                     rule="manual:approve", window_start=start, window_end=start, evidence="{}",
                     policy_version="manual", issued_at=int(time.time() * 1000))
    # A forged approval first: it must change nothing.
    producer.produce(topics.commands, key=b"fraud", value=wire.encode_command(FORGER.sign(forged)))
    producer.flush(10)
    # Then the operator's, through the CLI: signed with ana's own key (the worker fixture wrote it), keyed by
    # the model.
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLE_SIGNING_KEY")}
    env.update({**topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap})
    approve = subprocess.run([sys.executable, "-m", "mle_stream", "command", "approve", "--model", "fraud",
                              "--baseline", "1", "--candidate", "2", "--percent", "100", "--by", "ana",
                              "--reason", "dashboards look fine", "--key-file", str(tmp_path / "ana" / "ana.key")],
                             env=env, capture_output=True, text=True, timeout=60)
    assert approve.returncode == 0, approve.stderr
    out = read_until(kafka_bootstrap, [topics.commands], lambda ms: len(ms) >= 4, timeout_s=60)
    kinds = [wire.decode_command(m.value()) for m in out]
    (promote,) = [c for c in kinds if c.kind is CommandKind.PROMOTE]
    assert promote.traffic == {"1": 0, "2": 100} and VERIFIER.verify(promote)
    approval = json.loads(promote.evidence)["approval"]
    assert approval["reason"] == "dashboards look fine" and json.loads(approval["evidence"])["operator"] == "ana"
    letters = read_until(kafka_bootstrap, [topics.dead_letter], lambda ms: len(ms) >= 1, timeout_s=30)
    assert [json.loads(m.value())["field"] for m in letters] == ["signature"]
