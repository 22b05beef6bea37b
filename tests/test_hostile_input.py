"""Anything a stranger on the broker publishes ends as processed or as a dead letter: no input
crashes the worker or the actuator, stalls a partition or stops the worker's checkpoints, and a
dead letter always fits the broker's message limit. First against the worker's pure step, then
against `mle-stream worker` and `mle-stream actuator` as processes over the embedded broker."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import model_with_route, read_until, topic_env
from hostile import TEXT, hostile_messages
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.kafka import producer_config
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.stream.processor import Incoming, StreamProcessor
from mle_stream.wire.dead_letter import EXCERPT_BYTES, dead_letter_entry
from worker_process import MODELS, TOPOLOGY, Worker, traffic

REPO = Path(__file__).resolve().parent.parent
KEY = b"hostile-input-test-key-of-32-bytes!"
SIGNER = Signer(HMAC_KEY_ID, KEY)
TOPICS = Topics()
# Apache Kafka's default message.max.bytes (1 MiB + record overhead): what every output must fit.
BROKER_LIMIT = 1_048_588


def operator_rollback(model: str, issued_at: int) -> Command:
    return SIGNER.sign(Command(
        command_id=command_id(model, "1", "2", CommandKind.ROLLBACK, "operator", 0, issued_at),
        kind=CommandKind.ROLLBACK, model=model, baseline_version="1", candidate_version="2",
        traffic={"1": 100, "2": 0}, reason="rolled back by an operator", rule="operator", window_start=0,
        window_end=issued_at, evidence="{}", policy_version="operator", issued_at=issued_at))


def processor() -> StreamProcessor:
    # A short retention: a far jump of event time closes at most 30 empty windows, not 3600.
    # A grace of 1 s: the labels come 0.7 s after their predictions, so they count in the closed windows.
    topologies = {m: parse_topology(TOPOLOGY.format(model=m).replace("retention: 1h", "retention: 30s")
                                    .replace("grace: 0s", "grace: 1s"))
                  for m in MODELS}
    return StreamProcessor(topologies, TOPICS, SIGNER, clock=lambda: 10**12)


def check_outputs(out: list, messages: list[Incoming]) -> None:
    """Every output fits the broker and is what its topic promises; every dead letter says where."""
    for o in out:
        assert len(o.value) < BROKER_LIMIT, (o.topic, len(o.value))
        if o.topic == TOPICS.dead_letter:
            entry = json.loads(o.value)
            assert entry["reason"] and (entry["source_topic"], entry["partition"], entry["offset"]) in {
                (m.topic, m.partition, m.offset) for m in messages}
        elif o.topic == TOPICS.commands:
            wire.decode_command(o.value)
        elif o.topic == TOPICS.metrics:
            wire.decode_metric_snapshot(o.value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(hostile_messages(TOPICS.predictions, TOPICS.labels, TOPICS.commands, list(MODELS),
                                 operator_rollback("fraud", 10**12)), min_size=1, max_size=6))
def test_the_worker_step_takes_any_messages_and_says_where_each_unusable_one_went(
        messages: list[tuple[str, bytes]]) -> None:
    p = processor()
    incoming = [Incoming(topic, i % 2, i, value) for i, (topic, value) in enumerate(messages)]
    out = p.process(incoming)
    check_outputs(out, incoming)
    # A message the codec finds fault with has a dead letter that says where it was.
    letters = {(e["source_topic"], e["offset"]) for e in (json.loads(o.value) for o in out
                                                          if o.topic == TOPICS.dead_letter)}
    decoders = {TOPICS.predictions: wire.decode_prediction_columns, TOPICS.labels: wire.decode_label_columns}
    for m in incoming:
        if m.topic in decoders and decoders[m.topic](m.value).errors:
            assert (m.topic, m.offset) in letters, m
    # ... and the worker goes on: the next valid batch is counted.
    good = wire.encode_predictions([Prediction(prediction_id=f"ok-{i}", model="fraud", version="1",
                                                timestamp=10**12 - 1000 + i, score=0.5) for i in range(5)])
    before = p.counters["predictions"]
    p.process([Incoming(TOPICS.predictions, 0, 10_000, good)])
    assert p.counters["predictions"] == before + 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(size=st.integers(0, 3 * 1024**2), reason=TEXT, huge_reason=st.booleans(), seed=st.integers(0, 2**32))
def test_a_dead_letter_fits_the_broker_and_still_identifies_what_it_is_about(
        size: int, reason: str, huge_reason: bool, seed: int) -> None:
    payload = random.Random(seed).randbytes(size)
    if huge_reason:
        reason = reason + "x" * 2_000_000
    entry = json.loads(dead_letter_entry(reason=reason, field=reason, source_topic="t", partition=3, offset=7,
                                         record_index=None, at=1, payload=payload))
    excerpt = base64.b64decode(entry["payload_base64"])
    assert excerpt == payload[:EXCERPT_BYTES]
    assert entry["payload_bytes"] == size and entry["payload_truncated"] == (size > EXCERPT_BYTES)
    assert entry["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert len(json.dumps(entry)) < 300_000
    assert entry["reason"].startswith(reason[:100])


def test_a_huge_record_is_kept_as_an_excerpt_with_its_digest() -> None:
    record = {"features": {f"f{i}": float(i) for i in range(50_000)}}
    entry = json.loads(dead_letter_entry(reason="r", field="", source_topic="t", partition=0, offset=1,
                                         record_index=2, at=1, record=record))
    text = json.dumps(record, sort_keys=True)
    assert "record" not in entry and entry["record_excerpt"] == text[:EXCERPT_BYTES]
    assert entry["record_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert entry["record_bytes"] == len(text.encode())


def test_an_800_kb_message_in_the_batch_of_a_rollback_costs_neither_the_rollback_nor_the_other_outputs() -> None:
    p = processor()
    preds, labels = traffic(10**12 - 20_000, 8, random.Random(5), bad_candidate="fraud", per_window=60)
    incoming = [Incoming(TOPICS.predictions, 0, 0, b"\x01" * 800_000)]
    for i, (pm, lm) in enumerate(zip(preds, labels)):
        incoming.append(Incoming(TOPICS.predictions, 0, 2 * i + 1, wire.encode_predictions(pm)))
        incoming.append(Incoming(TOPICS.labels, 0, 2 * i + 2, wire.encode_labels(lm)))
    out = p.process(incoming)
    check_outputs(out, incoming)
    commands = [wire.decode_command(o.value) for o in out if o.topic == TOPICS.commands]
    assert [(c.kind, c.model) for c in commands] == [(CommandKind.ROLLBACK, "fraud")]
    letter = next(json.loads(o.value) for o in out if o.topic == TOPICS.dead_letter)
    assert (letter["offset"], letter["payload_bytes"], letter["payload_truncated"]) == (0, 800_000, True)
    assert sum(o.topic == TOPICS.metrics for o in out) > 10


# -- the running processes ------------------------------------------------------------------------

def _checkpointed_offsets(log: str) -> dict[tuple[str, int], int]:
    """The newest offsets each partition's checkpoints include, from the worker's log."""
    out: dict[tuple[str, int], int] = {}
    for partition, offsets in re.findall(r"wrote checkpoint \S+ of partition (\d+) \(offsets (\{.*?\})\)", log):
        for topic, offset in json.loads(offsets.replace("'", '"')).items():
            out[(topic, int(partition))] = max(out.get((topic, int(partition)), 0), offset)
    return out


@pytest.mark.broker
@pytest.mark.reliability
def test_generated_hostile_messages_crash_neither_process_and_a_signed_command_is_applied_once(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    routing, registry = model_with_route(tracking, tmp_path, "fraud-detector", namespace="ml")

    topologies = tmp_path / "topologies"
    topologies.mkdir()
    for model in MODELS:
        (topologies / f"{model}.yaml").write_text(TOPOLOGY.format(model=model))
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "MLE_SIGNING_KEY": KEY.decode(), "MLFLOW_TRACKING_URI": tracking, "MLE_TOPIC_PARTITIONS": "2",
           "MLE_WORKER_GROUP": f"hostile-{uuid.uuid4().hex[:8]}", "MLE_CHECKPOINT_INTERVAL": "2s",
           "MLE_ACTUATOR_GROUP": f"hostile-{uuid.uuid4().hex[:8]}", "MLE_STATUS_PORT": "0", "MLE_METRICS_PORT": "0"}
    worker = Worker(tmp_path, env, topologies)
    actuator_log = tmp_path / "actuator.log"
    with open(actuator_log, "wb") as out:
        actuator = subprocess.Popen(
            [sys.executable, "-m", "mle_stream", "actuator", "-t", str(REPO / "topologies"),
             "--gitops-repo", str(tmp_path / "gitops")], env=env, stdout=out, stderr=subprocess.STDOUT)
    worker.start()
    producer = Producer(producer_config(kafka_bootstrap, **{"message.max.bytes": 8 * 1024**2}))
    delivered: dict[tuple[str, int], int] = {}

    def sent(err: object, msg: object) -> None:
        assert err is None, err
        key = (msg.topic(), msg.partition())  # type: ignore[attr-defined]
        delivered[key] = max(delivered.get(key, -1), msg.offset())  # type: ignore[attr-defined]

    try:
        worker.wait_for("reading from ", 1, 60)
        now = int(time.time() * 1000)
        legit = operator_rollback("fraud-detector", now)

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(hostile_messages(topics.predictions, topics.labels, topics.commands, ["fraud", "fraud-detector"],
                                legit))
        def publish(message: tuple[str, bytes]) -> None:
            topic, value = message
            producer.produce(topic, key=random.choice([b"fraud", b"spam", b"fraud-detector", b"\xff"]), value=value,
                             on_delivery=sent)
            producer.poll(0)

        publish()
        # Huge messages under the broker's limit, and the cases found by hand on earlier versions.
        for topic in (topics.predictions, topics.labels, topics.commands):
            producer.produce(topic, key=b"fraud", value=os.urandom(800_000), on_delivery=sent)
        producer.produce(topics.predictions, key=b"fraud", value=b"[" + b" " * 3_000_000 + b"]", on_delivery=sent)
        surrogate = wire.to_json_dict(legit) | {"model": "\udcff", "signature": ""}
        approve = wire.to_json_dict(legit) | {"kind": "APPROVE", "model": "fraud", "signature": "é"}
        for forged in (surrogate, approve):
            producer.produce(topics.commands, key=b"fraud", value=json.dumps(forged).encode(), on_delivery=sent)
        assert producer.flush(30) == 0

        # Then valid traffic for the worker and one legitimate command for the actuator.
        preds, labels = traffic(now - 60_000, 3, random.Random(1), models=("fraud",))
        for pm, lm in zip(preds, labels):
            producer.produce(topics.predictions, key=b"fraud", value=wire.encode_predictions(pm), on_delivery=sent)
            producer.produce(topics.labels, key=b"fraud", value=wire.encode_labels(lm), on_delivery=sent)
        producer.produce(topics.commands, key=b"fraud-detector", value=wire.encode_command(legit), on_delivery=sent)
        assert producer.flush(30) == 0

        events = read_until(kafka_bootstrap, [topics.rollout_events],
                            lambda ms: any(wire.decode_rollout_event(m.value()).command_id == legit.command_id
                                           for m in ms), timeout_s=120)
        # The worker's checkpoints include every message published to its partitions.
        inputs = {(t, p): o for (t, p), o in delivered.items()
                  if t in (topics.predictions, topics.labels, topics.commands)}
        deadline = time.monotonic() + 120
        while not all(_checkpointed_offsets(worker.text()).get(tp, -1) > o for tp, o in inputs.items()):
            assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
            assert time.monotonic() < deadline, (inputs, _checkpointed_offsets(worker.text()), worker.text()[-3000:])
            time.sleep(0.5)
        assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
        assert actuator.poll() is None, actuator_log.read_text(errors="replace")[-3000:]
    finally:
        worker.stop()
        actuator.terminate()
        actuator.wait(timeout=20)

    applied = [e for e in (wire.decode_rollout_event(m.value()) for m in events)
               if e.command_id == legit.command_id and e.status.value == "APPLIED"]
    assert len(applied) == 1, [(e.command_id, e.status.value, e.details) for e in
                               (wire.decode_rollout_event(m.value()) for m in events)]
    assert routing.get_weights("fraud-detector") == {"1": 100, "2": 0}
    assert registry.aliases("fraud-detector") == {"champion": "1"}
    subjects = subprocess.run(["git", "-C", str(tmp_path / "gitops"), "log", "--format=%s"], capture_output=True,
                              text=True, check=True).stdout.splitlines()
    assert sum(legit.command_id in s for s in subjects) == 1 and len(subjects) == 2, subjects
    # The valid traffic after the hostile input was counted: its windows were closed with their labels.
    snapshots = [wire.decode_metric_snapshot(m.value()) for m in
                 read_until(kafka_bootstrap, [topics.metrics], lambda ms: False, timeout_s=5)]
    closed = {(s.version, s.window_start): s for s in snapshots
              if s.model == "fraud" and s.segment is None and s.status == "CLOSED" and s.window_start >= now - 60_000}
    assert closed and sum(s.predictions for s in closed.values()) >= 24, sorted(closed)
