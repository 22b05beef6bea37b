"""What the tests that run `mle-stream worker` processes share (test_reliability.py,
test_scale_out.py): the worker as a process, the traffic they publish, and how they compare
windows and read offsets."""

from __future__ import annotations

import ast
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from mle_stream.config import Topics
from mle_stream.core.events import Label, MetricSnapshot, Prediction
from mle_stream.kafka import consumer_config

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


class Worker:
    """`mle-stream worker` in its own process, its log in a file. `entry`: what runs mle-stream's
    command line (tests/faulty_worker.py injects faults). `preexec_fn` runs in the child before it
    starts (test_catch_up.py pins it to a CPU)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], topologies: Path,
                 entry: Sequence[str] = ("-m", "mle_stream"), preexec_fn: Callable[[], None] | None = None) -> None:
        self.tmp_path, self.env, self.topologies, self.entry = tmp_path, env, topologies, list(entry)
        self.preexec_fn = preexec_fn
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        self.log = self.tmp_path / f"worker-{self.runs}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, *self.entry, "--log-level", "info", "worker", "--topology", str(self.topologies)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp_path,  # Faust's data dir there
                preexec_fn=self.preexec_fn)

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
            per_window: int = 24, bad_from: int = 0,
            models: Sequence[str] = MODELS) -> tuple[list[list[Prediction]], list[list[Label]]]:
    """A message of predictions per window and model, and a message with most of their labels.
    `bad_candidate`'s v2 is wrong 70% of the time from window `bad_from` on, so its rollback is decided."""
    preds_out, labels_out = [], []
    for w in range(windows):
        for model in models:
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


def committed_offsets(bootstrap: str, group: str, topics: Topics, partitions: int = 2) -> dict[tuple[str, int], int]:
    """The group's committed offsets of the inputs (what Faust would resume from on its own)."""
    consumer = Consumer(consumer_config(bootstrap, group))
    try:
        tps = [TopicPartition(t, p) for t in (topics.predictions, topics.labels) for p in range(partitions)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def restored_offsets(log: str) -> dict[tuple[str, int], int]:
    """The offsets each restored checkpoint includes, from the worker's log."""
    out = {}
    for partition, offsets in re.findall(r"restored partition (\d+) from checkpoint \w+ \(\d+ models, offsets "
                                         r"(\{.*?\})\)", log):
        out.update({(topic, int(partition)): offset for topic, offset in ast.literal_eval(offsets).items()})
    return out


def same(got: MetricSnapshot, want: MetricSnapshot) -> bool:
    """Equal counts and metrics, bit for bit: the metric states' float sums are exact
    (core/exact_sum.py), so how a restart regroups the records into updates cannot show."""
    return (got.predictions, got.labeled, got.metrics) == (want.predictions, want.labeled, want.metrics)
