"""The worker killed with SIGKILL mid-stream, twice, and restarted: its windows end up exactly as the
replay of the same input computes them (nothing lost, nothing counted twice)."""

from __future__ import annotations

import ast
import os
import re
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import read_until, topic_env
from mle_stream import codec
from mle_stream.config import Topics
from mle_stream.core.events import Label, MetricSnapshot, Prediction
from mle_stream.core.topology import parse_topology
from mle_stream.kafka import consumer_config, producer_config
from mle_stream.replay import replay

pytestmark = pytest.mark.broker

TOPOLOGY = """\
model: {model}
task: binary
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: 1s, grace: 0s, retention: 1h, updates_every: 0s}}
segments: {{dimensions: [country]}}
rollback: {{max_increase: 0.1, consecutive_windows: 3, min_samples: 10}}
"""
MODELS = ("fraud", "spam")  # in partitions 0 and 1 (librdkafka: CRC32 of the key)
WINDOWS = 130  # of 1 s of event time, published one every 0.28 s: the stream outlasts two kills and restarts
PER_WINDOW = 24  # predictions per model and window


class Worker:
    """`mle-stream worker` in its own process, its log in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], topologies: Path) -> None:
        self.tmp_path, self.env, self.topologies = tmp_path, env, topologies
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        self.log = self.tmp_path / f"worker-{self.runs}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mle_stream", "--log-level", "info", "worker", "--topology", str(self.topologies)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp_path)  # Faust's data dir there

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.text().count(needle) < count:
            assert self.process is not None and self.process.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, f"no {count} x {needle!r} in the worker's log:\n{self.text()[-3000:]}"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def traffic(base: int, windows: int, rng: random.Random, bad_candidate: str | None = None,
            per_window: int = 24, bad_from: int = 0) -> tuple[list[list[Prediction]], list[list[Label]]]:
    """A message of predictions per window and model, and a message with most of their labels.
    `bad_candidate`'s v2 is wrong 70% of the time from window `bad_from` on, so its rollback is decided."""
    preds_out, labels_out = [], []
    for w in range(windows):
        for model in MODELS:
            preds = [Prediction(prediction_id=f"{model}-{w}-{i}", model=model, version=rng.choice("12"),
                                timestamp=base + w * 1000 + i * 40, score=rng.random(),
                                segment={"country": rng.choice(["DE", "FR"])}, latency_ms=rng.uniform(1, 50))
                     for i in range(per_window)]
            labels = []
            for p in preds:
                if rng.random() < 0.9:
                    right = rng.random() < 0.8
                    if model == bad_candidate and p.version == "2" and w >= bad_from:
                        right = rng.random() < 0.3
                    labels.append(Label(prediction_id=p.prediction_id, model=model, timestamp=p.timestamp + 700,
                                        label=(p.score >= 0.5) == right))
            preds_out.append(preds)
            labels_out.append(labels)
    return preds_out, labels_out


def records(base: int, rng: random.Random) -> tuple[list[list[Prediction]], list[list[Label]], list[Label]]:
    """`traffic`, with one label of each message kept back for the end (published after the last
    restart, so that every window is updated once more)."""
    pred_msgs, label_msgs = traffic(base, WINDOWS, rng, per_window=PER_WINDOW)
    return pred_msgs, label_msgs, [labels.pop(0) for labels in label_msgs]


def test_sigkill_twice_mid_stream_loses_nothing_and_counts_nothing_twice(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    topologies = tmp_path / "topologies"
    topologies.mkdir()
    for model in MODELS:
        (topologies / f"{model}.yaml").write_text(TOPOLOGY.format(model=model))
    group = f"restart-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": "k",
           "MLE_WORKER_GROUP": group, "MLE_CHECKPOINT_INTERVAL": "4s",
           "MLE_TOPIC_PARTITIONS": "2"}
    rng = random.Random(7)
    base = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    pred_msgs, label_msgs, late = records(base, rng)

    producer = Producer(producer_config(kafka_bootstrap))
    published = threading.Event()

    def publish() -> None:  # a steady stream, whatever happens to the worker
        for i, preds in enumerate(pred_msgs):
            producer.produce(topics.predictions, key=preds[0].model.encode(), value=codec.encode_predictions(preds))
            if i >= len(MODELS):
                labels = label_msgs[i - len(MODELS)]
                producer.produce(topics.labels, key=labels[0].model.encode(), value=codec.encode_labels(labels))
            producer.flush(10)
            if i % len(MODELS) == len(MODELS) - 1:
                time.sleep(0.28)
        for labels in label_msgs[-len(MODELS):]:
            producer.produce(topics.labels, key=labels[0].model.encode(), value=codec.encode_labels(labels))
        producer.flush(10)
        published.set()

    worker = Worker(tmp_path, env, topologies)
    publisher = threading.Thread(target=publish, daemon=True)
    ahead: list[tuple[str, int]] = []  # input partitions whose committed offset was past the checkpoint
    try:
        worker.start()
        worker.wait_for("reading from ", 1, 30)  # assigned, positioned: the stream starts
        publisher.start()
        for _ in range(2):
            # Kill it shortly before its next checkpoint, while it reads: Faust commits the offsets
            # it processed every 2.8 s, so they are then ahead of the checkpoint's.
            worker.wait_for("wrote checkpoint", len(MODELS), 30)
            time.sleep(rng.uniform(3.0, 3.6))
            assert not published.is_set(), "the stream ended before the worker was killed: slow it down"
            worker.kill()
            committed = committed_offsets(kafka_bootstrap, group, topics)
            worker.start()
            worker.wait_for("reading from ", 1, 30)
            restored = restored_offsets(worker.text())
            # The restart reads from the checkpoint's offsets, not from the group's committed ones.
            line = next(x for x in worker.text().splitlines() if "reading from " in x)
            reading = {(t, int(p)): int(o) for t, p, o in re.findall(r"(\S+)\[(\d+)\] from (\d+)", line)}
            assert reading == restored and len(restored) == 3 * len(MODELS), (reading, restored)  # 3 input topics
            ahead.extend(tp for tp, offset in restored.items() if committed.get(tp, -1) > offset)
        assert published.wait(60)
        for model in MODELS:  # the labels kept back: every window changes once more, after the last restart
            kept = [label for label in late if label.model == model]
            producer.produce(topics.labels, key=model.encode(), value=codec.encode_labels(kept))
        producer.flush(10)

        all_preds = [p for msg in pred_msgs for p in msg]
        all_labels = [label for msg in label_msgs for label in msg] + late
        expected = {(w.model, w.version, w.segment, w.window_start): w
                    for w in replay(all_preds, all_labels, {m: parse_topology(TOPOLOGY.format(model=m)) for m in MODELS}).windows}
        latest: dict[tuple, MetricSnapshot] = {}
        decoded = [0]

        def converged(messages: list) -> bool:  # read_until's list only grows: decode what is new
            for m in messages[decoded[0]:]:
                s = codec.decode_metric_snapshot(m.value())
                latest[(s.model, s.version, s.segment, s.window_start)] = s
            decoded[0] = len(messages)
            return latest.keys() == expected.keys() and all(same(latest[k], expected[k]) for k in expected)

        read_until(kafka_bootstrap, [topics.metrics], converged, timeout_s=40)
        assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
    finally:
        worker.stop()
        publisher.join(timeout=1)
    logs = [(tmp_path / f"worker-{i}.log").read_text(errors="replace") for i in (1, 2, 3)]
    print(logs[-1][-3000:])
    # Each restart read from the checkpoints' offsets (checked above), at least once where the
    # committed offsets would have skipped records, and the metrics end up as the replay's.
    assert ahead, "the committed offsets were never ahead of a checkpoint: the test did not exercise the seek"
    missing = sorted(set(expected) - set(latest), key=str)
    assert not missing, f"{len(missing)} windows never published, e.g. {missing[:5]}"
    extra = sorted(set(latest) - set(expected), key=str)
    assert not extra, f"{len(extra)} windows the replay does not have, e.g. {extra[:5]}"
    wrong = [(k, latest[k], expected[k]) for k in expected if not same(latest[k], expected[k])]
    assert not wrong, f"{len(wrong)} windows differ from the replay's, e.g. {wrong[:2]}"


def committed_offsets(bootstrap: str, group: str, topics: Topics) -> dict[tuple[str, int], int]:
    """The group's committed offsets (what Faust would resume from on its own)."""
    consumer = Consumer(consumer_config(bootstrap, group))
    try:
        tps = [TopicPartition(t, p) for t in (topics.predictions, topics.labels) for p in (0, 1)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def restored_offsets(log: str) -> dict[tuple[str, int], int]:
    """The offsets each restored checkpoint includes, from the worker's log."""
    out = {}
    for partition, offsets in re.findall(r"restored partition (\d+) from checkpoint \w+ \(\d+ models, offsets (\{.*?\})\)", log):
        out.update({(topic, int(partition)): offset for topic, offset in ast.literal_eval(offsets).items()})
    return out


def same(got: MetricSnapshot, want: MetricSnapshot) -> bool:
    """Equal counts and metrics, bit for bit: the metric states' float sums are exact
    (core/exact_sum.py), so how a restart regroups the records into updates cannot show."""
    return (got.predictions, got.labeled, got.metrics) == (want.predictions, want.labeled, want.metrics)
