"""Exact results through poison input, duplicates and repeated crashes, over the embedded
broker with the worker as users run it (`mle-stream worker`, a Faust process).

The truth is always the replay of the valid input, deduplicated (`mle_stream.replay`, the same core
without a broker): the worker's last snapshot of every window must equal it, and its decisions must
be the replay's, each under the replay's id."""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Command, CommandKind, Label, MetricSnapshot, Prediction
from mle_stream.core.topology import parse_topology
from mle_stream.kafka import producer_config
from mle_stream.replay import replay
from worker_process import MODELS, TOPOLOGY, Worker, committed_offsets, restored_offsets, same, traffic

pytestmark = [pytest.mark.broker, pytest.mark.reliability]

# A window is judged 3 s of event time after its end: its labels (published with the next window's
# predictions) are in by then, so the bad candidate's windows FAIL and a rollback is decided.
RELIABILITY_TOPOLOGY = TOPOLOGY.replace("grace: 0s", "grace: 3s")


def expected_windows(preds: list[list[Prediction]], labels: list[list[Label]]) -> tuple[dict, list[Command]]:
    result = replay([p for m in preds for p in m], [lab for m in labels for lab in m],
                    {m: parse_topology(RELIABILITY_TOPOLOGY.format(model=m)) for m in MODELS})
    return {(w.model, w.version, w.segment, w.window_start): w for w in result.windows}, result.decisions


def start_worker(tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> Worker:
    topologies = tmp_path / "topologies"
    topologies.mkdir()
    for model in MODELS:
        (topologies / f"{model}.yaml").write_text(RELIABILITY_TOPOLOGY.format(model=model))
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": "k" * 32,
           "MLE_WORKER_GROUP": f"rel-{uuid.uuid4().hex[:8]}", "MLE_CHECKPOINT_INTERVAL": "4s",
           "MLE_TOPIC_PARTITIONS": "2"}
    worker = Worker(tmp_path, env, topologies)
    worker.start()
    worker.wait_for("reading from ", 1, 30)
    return worker


def wait_for_windows(kafka_bootstrap: str, topics: Topics, expected: dict, timeout_s: float,
                     before: int | None = None) -> dict:
    """The last snapshot of every window starting before `before`, once they all equal the replay's
    (or the time is up)."""
    latest: dict[tuple, MetricSnapshot] = {}
    decoded = [0]

    def converged(messages: list) -> bool:
        for m in messages[decoded[0]:]:
            s = wire.decode_metric_snapshot(m.value())
            if before is None or s.window_start < before:
                latest[(s.model, s.version, s.segment, s.window_start)] = s
        decoded[0] = len(messages)
        return latest.keys() == expected.keys() and all(same(latest[k], expected[k]) for k in expected)

    read_until(kafka_bootstrap, [topics.metrics], converged, timeout_s=timeout_s)
    return latest


def assert_windows_equal(latest: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(latest), key=str)
    assert not missing, f"{len(missing)} windows never published, e.g. {missing[:5]}"
    extra = sorted(set(latest) - set(expected), key=str)
    assert not extra, f"{len(extra)} windows the replay does not have, e.g. {extra[:5]}"
    wrong = [(k, latest[k], expected[k]) for k in expected if not same(latest[k], expected[k])]
    assert not wrong, f"{len(wrong)} windows differ from the replay's, e.g. {wrong[:2]}"


def poison(rng: random.Random, valid: bytes, kind: int) -> bytes:
    """One bad message of four kinds: random bytes, a valid message cut short, another schema's
    message, a JSON batch whose record breaks the contract."""
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
    if kind == 1:  # cut inside the record (cut after it, the intact record is read and only the end is bad)
        return valid[:rng.randrange(0, len(valid) - 1)]
    if kind == 2:
        return wire.encode_command(Command(command_id="x", kind=CommandKind.HOLD, model="fraud", baseline_version="1",
                                            candidate_version="2", traffic={}, reason="", rule="", window_start=0,
                                            window_end=0, evidence="{}", policy_version="", issued_at=0))
    return json.dumps({"records": [{"prediction_id": 7, "model": "fraud"}]}).encode()


def test_poison_and_duplicate_messages_change_nothing_and_every_bad_one_is_dead_lettered(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    rng = random.Random(11)
    base = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    preds, labels = traffic(base, 40, rng)
    expected, _ = expected_windows(preds, labels)
    # The valid messages in order (a window's labels after the next window's predictions), a tenth
    # of them delivered twice, and 10,000 bad ones in between.
    valid = []
    for i, m in enumerate(preds):
        valid.append((topics.predictions, m[0].model, wire.encode_predictions(m)))
        if i >= len(MODELS):
            valid.append((topics.labels, labels[i - len(MODELS)][0].model,
                          wire.encode_labels(labels[i - len(MODELS)])))
    valid += [(topics.labels, m[0].model, wire.encode_labels(m)) for m in labels[-len(MODELS):]]
    stream = []
    for topic, model, value in valid:
        stream.append((topic, model, value, False))
        if rng.random() < 0.1:
            stream.append((topic, model, value, False))
    single = wire.encode_predictions([Prediction(prediction_id="cut", model="fraud", version="1",
                                                  timestamp=base, score=0.5, features={"x": 1.0})])
    for i in range(10_000):
        stream.insert(rng.randrange(len(stream) + 1),
                      (rng.choice([topics.predictions, topics.labels]), rng.choice(MODELS), poison(rng, single, i % 4),
                       True))
    producer = Producer(producer_config(kafka_bootstrap))
    positions: list[tuple[str, int, int, bool]] = []
    for topic, model, value, bad in stream:
        producer.produce(topic, key=model.encode(), value=value,
                         on_delivery=lambda err, msg, bad=bad: positions.append(
                             (msg.topic(), msg.partition(), msg.offset(), bad)) if err is None else None)
        producer.poll(0)
    assert producer.flush(30) == 0
    bad_at = {(t, p, o) for t, p, o, bad in positions if bad}
    assert len(positions) == len(stream) and len(bad_at) == 10_000

    worker = start_worker(tmp_path, kafka_bootstrap, topics)
    try:
        # One later prediction per model closes the last windows.
        closing = [[Prediction(prediction_id=f"close-{m}", model=m, version="1", timestamp=base + 45_000, score=0.5)]
                   for m in MODELS]
        for msg in closing:
            producer.produce(topics.predictions, key=msg[0].model.encode(), value=wire.encode_predictions(msg))
        producer.flush(10)
        expected, _ = expected_windows(preds + closing, labels)
        expected = {k: w for k, w in expected.items() if k[3] < base + 40_000}
        latest = wait_for_windows(kafka_bootstrap, topics, expected, timeout_s=120, before=base + 40_000)
        letters = read_until(kafka_bootstrap, [topics.dead_letter], lambda ms: len(ms) >= 10_000, timeout_s=60)
        assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
    finally:
        worker.stop()
    assert_windows_equal(latest, expected)
    entries = [json.loads(m.value()) for m in letters]
    where = {(e["source_topic"], e["partition"], e["offset"]) for e in entries}
    assert where == bad_at, (f"{len(bad_at - where)} bad messages not dead-lettered, {len(where - bad_at)} "
                             f"dead letters for good ones")
    assert len(entries) == 10_000 and all(e["reason"] for e in entries)


# Six: kills while catching up on a long backlog, and while keeping up with a checkpoint older than
# labels.max_delay, are tested in test_catch_up.py.
KILLS = 6
SEEK_KILLS = (1, 4)  # of the kills, those timed right before a checkpoint is due (see the test)


def test_sigkills_at_random_points_leave_the_windows_and_decisions_of_an_uninterrupted_run(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    rng = random.Random(23)
    base = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    # From window 60 on (~6 s in), fraud's v2 is mostly wrong: its rollback is decided amid the kills.
    # Long enough for the restarts with room to spare: publishing stops 20 messages after them.
    preds, labels = traffic(base, 1400, rng, bad_candidate="fraud", per_window=40, bad_from=60)
    producer = Producer(producer_config(kafka_bootstrap))
    killed, published = threading.Event(), threading.Event()
    sent = [0]  # prediction messages published

    def publish() -> None:  # a steady stream until the kills are done, then a little more
        after = None
        for i, m in enumerate(preds):
            producer.produce(topics.predictions, key=m[0].model.encode(), value=wire.encode_predictions(m))
            if i >= len(MODELS):
                lab = labels[i - len(MODELS)]
                producer.produce(topics.labels, key=lab[0].model.encode(), value=wire.encode_labels(lab))
            producer.flush(10)
            sent[0] = i + 1
            if killed.is_set():
                after = i if after is None else after
                if i - after >= 20:
                    break
            if i % len(MODELS) == len(MODELS) - 1:
                time.sleep(0.1)
        published.set()

    worker = start_worker(tmp_path, kafka_bootstrap, topics)
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    ahead: list[tuple[str, int]] = []  # input partitions whose committed offset was past the checkpoint
    try:
        for k in range(KILLS):
            if k in SEEK_KILLS:
                # Right before a checkpoint is due: Faust has committed the offsets it processed
                # since the last one (every 2.8 s), so the group's committed offsets are past the
                # checkpoint's and only the worker's seek to the checkpoint keeps the restart exact.
                worker.wait_for("wrote checkpoint", worker.text().count("wrote checkpoint") + 1, 30)
                time.sleep(rng.uniform(3.0, 3.6))
            else:
                time.sleep(rng.uniform(0.3, 4.0))  # anywhere: mid-batch, mid-checkpoint, mid-join
            assert not published.is_set(), f"the stream ended after {k} kills: make it longer"
            worker.kill()
            committed = committed_offsets(kafka_bootstrap, worker.env["MLE_WORKER_GROUP"], topics)
            worker.start()
            worker.wait_for("reading from ", 1, 60)
            # The restart reads from the checkpoints' offsets, not from the group's committed ones
            # (Faust commits what it processed every 2.8 s), or from the start before the first checkpoint.
            restored = restored_offsets(worker.text())
            line = next(x for x in worker.text().splitlines() if "reading from " in x)
            reading = {(t, int(p)): int(o) for t, p, o in re.findall(r"(\S+)\[(\d+)\] from (\d+)", line)}
            assert len(reading) == 3 * len(MODELS), line  # 3 input topics
            assert reading == {tp: restored.get(tp, 0) for tp in reading}, (reading, restored)
            ahead.extend(tp for tp, offset in restored.items() if committed.get(tp, -1) > offset)
        killed.set()
        assert published.wait(120)
        n = sent[0]
        sent_preds, sent_labels = preds[:n], labels[:max(0, n - len(MODELS))]
        last = labels[max(0, n - len(MODELS)):n]  # the labels of the last windows, and closing predictions
        end = base + (n // len(MODELS) + 1) * 1000  # the window after the last one published: no empty windows
        closing = [[Prediction(prediction_id=f"close-{m}", model=m, version="1", timestamp=end, score=0.5)]
                   for m in MODELS]
        for lab in last:
            producer.produce(topics.labels, key=lab[0].model.encode(), value=wire.encode_labels(lab))
        for msg in closing:
            producer.produce(topics.predictions, key=msg[0].model.encode(), value=wire.encode_predictions(msg))
        producer.flush(10)
        expected, decisions = expected_windows(sent_preds + closing, sent_labels + last)
        expected = {k: w for k, w in expected.items() if k[3] < end}
        latest = wait_for_windows(kafka_bootstrap, topics, expected, timeout_s=90, before=end)
        commands = read_until(kafka_bootstrap, [topics.commands],
                              lambda ms: len({wire.decode_command(m.value()).command_id for m in ms})
                              >= len(decisions),
                              timeout_s=30)
        assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
    finally:
        worker.stop()
        publisher.join(timeout=1)
    assert worker.runs == KILLS + 1
    # At least one restart had committed offsets that would have skipped records: the seek mattered.
    assert ahead, "the committed offsets were never ahead of a checkpoint: the test did not exercise the seek"
    assert_windows_equal(latest, expected)
    # The decisions are the replay's, each under the replay's id: a decision re-emitted after a
    # crash has the same id (the actuator skips it), never a second one.
    emitted = [wire.decode_command(m.value()) for m in commands]
    # The test must decide something: fraud's v2 is rolled back (spam's may be too, by chance).
    assert any(d.kind is CommandKind.ROLLBACK and d.model == "fraud" for d in decisions), decisions
    assert {c.command_id for c in emitted} == {d.command_id for d in decisions}
    assert {(c.kind, c.rule, c.window_start, c.window_end) for c in emitted} == {
        (d.kind, d.rule, d.window_start, d.window_end) for d in decisions}


def test_a_worker_started_before_its_broker_waits_for_it_then_runs(tmp_path: Path) -> None:
    from mle_stream.broker import EmbeddedBroker, free_port

    port = free_port()
    topology = tmp_path / "fraud.yaml"
    topology.write_text(RELIABILITY_TOPOLOGY.format(model="fraud"))
    env = {**os.environ, "MLE_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "MLE_SIGNING_KEY": "k" * 32,
           "MLE_STATUS_PORT": "0", "MLE_METRICS_PORT": "0", "MLE_TOPIC_PARTITIONS": "2"}
    worker = Worker(tmp_path, env, topology)
    worker.start()
    try:
        worker.wait_for("does not answer (attempt 2 of", 1, 30)  # waiting, not exited (wait_for checks)
        with EmbeddedBroker(port=port):
            try:
                worker.wait_for("reading from ", 1, 90)
            finally:
                worker.stop()  # before the broker goes
    finally:
        worker.stop()


def test_a_broker_that_never_comes_is_a_clear_error_after_the_wait() -> None:
    from mle_stream.broker import free_port
    from mle_stream.errors import BrokerError
    from mle_stream.kafka import wait_for_broker
    from mle_stream.retry import Backoff

    waits: list[float] = []
    with pytest.raises(BrokerError, match=r"cannot reach Kafka at '127\.0\.0\.1:\d+': 3 attempts failed") as caught:
        wait_for_broker(f"127.0.0.1:{free_port()}", Backoff(3, 0.5, 1.0), sleep=waits.append)
    assert waits == [0.5, 1.0] and "MLE_BOOTSTRAP_SERVERS" in str(caught.value)
