"""Exact catch-up: a worker that starts (or restarts) behind a backlog must produce the
windows and decisions of an uninterrupted run, although it reads the predictions far ahead of the
labels (predictions come 500 to a message, labels one to a few: a batch of messages covers much
more prediction time than label time).

The truth is always `mle_stream.replay` of the same records (the same core, no broker, each input
in its own order): the worker's CLOSED snapshot of each window, its last snapshot of each window
and its decisions (under the replay's ids) must be the replay's.

- Without a broker: the worker's step (StreamProcessor) fed two hours of predictions first, then
  all the labels, the order a worker that lags far behind can see them in.
- Over the embedded broker: a worker catching up on a two-hour backlog on a contended core,
  SIGKILLed three times while it catches up and once more while it keeps up; and a second worker
  that joins the group mid-backlog and leaves again.
"""

from __future__ import annotations

import ast
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from mle_stream import replay as replay_module
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Command, CommandKind, Label, MetricSnapshot, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import Topology, parse_topology
from mle_stream.replay import replay
from mle_stream.stream.processor import Incoming, StreamProcessor

MODELS = ("fraud", "spam")  # in partitions 0 and 1 of the two-partition topics (librdkafka: CRC32 of the key)
SIZE_MS, GRACE_MS, MAX_DELAY_MS = 60_000, 10_000, 30_000
CATCH_UP_TOPOLOGY = """\
model: {model}
task: binary
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: 1m, grace: 10s, retention: 10m, updates_every: 0s}}
labels: {{max_delay: 30s}}
segments: {{dimensions: [country]}}
rollback: {{max_increase: 0.1, consecutive_windows: 3, min_samples: 20}}
"""
BAD_FROM = 40  # fraud's candidate is mostly wrong from its 40th window on: a ROLLBACK is due
PER_MESSAGE = 500  # predictions per message, as the client batches them
LABEL_TICK_MS = 2_000  # the labeler publishes what became known every 2 s, stamped with that time


def topologies() -> dict[str, Topology]:
    return {m: parse_topology(CATCH_UP_TOPOLOGY.format(model=m)) for m in MODELS}


@dataclass
class Traffic:
    """Records and the messages they travel in, per input, each input in its topic's order."""

    predictions: list[list[Prediction]] = field(default_factory=list)  # one message each
    labels: list[list[Label]] = field(default_factory=list)

    def flat(self) -> tuple[list[Prediction], list[Label]]:
        return [p for m in self.predictions for p in m], [x for m in self.labels for x in m]

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.predictions + other.predictions, self.labels + other.labels)

    def kafka(self, topics: Topics) -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) of every message, each keyed by its model."""
        return ([(topics.predictions, m[0].model.encode(), wire.encode_predictions(m)) for m in self.predictions]
                + [(topics.labels, m[0].model.encode(), wire.encode_labels(m)) for m in self.labels])


def generate(start: int, end: int, rate: float, rng: random.Random, bad_from: int,
             models: Sequence[str] = MODELS) -> tuple[list[Prediction], list[Label]]:
    """Predictions of every model at `rate` per second of event time in [start, end), each
    model's in timestamp order; labels for 95% of them (5% are never labeled), 1-20 s after their
    prediction: a labeler publishes every LABEL_TICK_MS what became known since, stamped with that
    time (labels in stamp order). fraud's v2 is wrong 70% of the time from window `bad_from` on."""
    predictions: list[Prediction] = []
    due: dict[int, list[Label]] = {}  # label time -> labels stamped with it
    step = 1000.0 / rate
    for model in models:
        i = 0
        while (ts := start + int(i * step)) < end:
            pid = f"{model}-{ts}-{i}-{rng.getrandbits(32):08x}"
            version, score = rng.choice("12"), rng.random()
            p = Prediction(prediction_id=pid, model=model, version=version, timestamp=ts, score=score,
                           segment={"country": rng.choice(["DE", "FR"])})
            predictions.append(p)
            i += 1
            if rng.random() < 0.95:
                known = ts + rng.randint(1_000, 20_000 - LABEL_TICK_MS)
                stamp = -(-known // LABEL_TICK_MS) * LABEL_TICK_MS  # the next tick: 1-20 s after the prediction
                right = rng.random() < 0.8
                if model == "fraud" and p.version == "2" and (ts - start) // SIZE_MS >= bad_from:
                    right = rng.random() < 0.3
                due.setdefault(stamp, []).append(
                    Label(prediction_id=pid, model=model, timestamp=stamp, label=(score >= 0.5) == right))
    return predictions, [x for stamp in sorted(due) for x in due[stamp]]


def messages(predictions: Sequence[Prediction], labels: Sequence[Label], rng: random.Random,
             per_message: int = PER_MESSAGE, labels_per_message: int = 4) -> Traffic:
    """The records in messages of one model each, in order: up to `per_message` predictions, and
    1 to `labels_per_message` labels (each message of one label time)."""
    out = Traffic()
    for model in MODELS:
        mine = [p for p in predictions if p.model == model]
        out.predictions += [mine[i:i + per_message] for i in range(0, len(mine), per_message)]
    i = 0
    while i < len(labels):
        k, n = 1, rng.randint(1, labels_per_message)
        while (k < n and i + k < len(labels) and labels[i + k].model == labels[i].model
               and labels[i + k].timestamp == labels[i].timestamp):
            k += 1
        out.labels.append(list(labels[i:i + k]))
        i += k
    return out


def split(predictions: Sequence[Prediction], labels: Sequence[Label],
          at: int) -> tuple[tuple[list[Prediction], list[Label]], tuple[list[Prediction], list[Label]]]:
    """The records before `at` (predictions by their time, labels by theirs), and the others."""
    return (([p for p in predictions if p.timestamp < at], [x for x in labels if x.timestamp < at]),
            ([p for p in predictions if p.timestamp >= at], [x for x in labels if x.timestamp >= at]))


def closing(end: int) -> Traffic:
    """A prediction of every model at `end` + grace and its label right after: both inputs pass the
    closing time of every window that starts before `end` (which the traffic's last labels are
    stamped before), and of none after."""
    at = end + GRACE_MS
    preds = [[Prediction(prediction_id=f"close-{m}", model=m, version="1", timestamp=at, score=0.5)] for m in MODELS]
    labels = [[Label(prediction_id=f"close-{m}", model=m, timestamp=at + 1, label=True)] for m in MODELS]
    return Traffic(preds, labels)


def window_end_after(traffic: Traffic) -> int:
    """The first window boundary after every record of the traffic."""
    last = max(max(p.timestamp for m in traffic.predictions for p in m),
               max(x.timestamp for m in traffic.labels for x in m))
    return (last // SIZE_MS + 1) * SIZE_MS


# -- the truth -------------------------------------------------------------------------------------

Key = tuple[str, str, Any, int]  # model, version, segment, window start


def key(s: MetricSnapshot) -> Key:
    return (s.model, s.version, s.segment, s.window_start)


def facts(s: MetricSnapshot) -> tuple[Any, ...]:
    """What must be equal: counts, metrics bit for bit (the metric states' sums are exact, so how
    the records are grouped into updates cannot show) and the verdict."""
    return s.predictions, s.labeled, dict(s.metrics), s.verdict


@dataclass
class Truth:
    final: dict[Key, MetricSnapshot]  # the last snapshot of every window
    closed: dict[Key, MetricSnapshot]  # the CLOSED snapshot of every window
    decisions: list[Command]


def truth(traffic: Traffic, before: int) -> Truth:
    """The replay of the traffic, windows starting before `before` (the last ones close at the
    replay's end only)."""
    closed: dict[Key, MetricSnapshot] = {}
    evaluator_class = replay_module.ModelEvaluator

    class Recording(evaluator_class):  # type: ignore[misc, valid-type]
        """The replay's evaluator, keeping the CLOSED snapshots the replay itself only passes on."""

        def advance(self, *args: Any, **kwargs: Any) -> Any:
            out = super().advance(*args, **kwargs)
            for w in out.windows:
                if w.status == "CLOSED":
                    assert key(w) not in closed, f"the replay closed {key(w)} twice"
                    closed[key(w)] = w
            return out

    preds, labels = traffic.flat()
    with mock.patch.object(replay_module, "ModelEvaluator", Recording):
        result = replay(preds, labels, topologies())
    assert not result.rejected, result.rejected[:5]
    return Truth({key(w): w for w in result.windows if w.window_start < before},
                 {k: w for k, w in closed.items() if k[3] < before},
                 [d for d in result.decisions if d.window_start < before])


def assert_same_windows(got: dict[Key, MetricSnapshot], want: dict[Key, MetricSnapshot], what: str) -> None:
    missing = sorted(set(want) - set(got), key=str)
    assert not missing, f"{len(missing)} {what} windows of the replay never published, e.g. {missing[:5]}"
    extra = sorted(set(got) - set(want), key=str)
    assert not extra, f"{len(extra)} {what} windows the replay does not have, e.g. {extra[:5]}"
    wrong = [k for k in sorted(want, key=str) if facts(got[k]) != facts(want[k])]
    assert not wrong, (f"{len(wrong)} of {len(want)} {what} windows differ from the replay's ({labeled(got)} labels "
                       f"joined, the replay {labeled(want)}), e.g. {wrong[0]}: {facts(got[wrong[0]])} != "
                       f"{facts(want[wrong[0]])}")


def assert_same_decisions(emitted: Sequence[Command], want: Sequence[Command]) -> None:
    # The test must decide something: fraud's candidate is rolled back.
    assert any(d.kind is CommandKind.ROLLBACK and d.model == "fraud" for d in want), want
    assert {c.command_id for c in emitted} == {d.command_id for d in want}, (
        sorted((c.model, c.kind.value, c.window_start) for c in emitted),
        sorted((d.model, d.kind.value, d.window_start) for d in want))
    assert {(c.kind, c.rule, c.window_start, c.window_end) for c in emitted} == {
        (d.kind, d.rule, d.window_start, d.window_end) for d in want}


def labeled(windows: dict[Key, MetricSnapshot]) -> int:
    return sum(w.labeled for k, w in windows.items() if k[2] is None)


# -- 1. without a broker ---------------------------------------------------------------------------

TOPICS = Topics()
SIGNER = Signer("catch-up", b"catch-up-key".ljust(32, b"-"))


def encoded(traffic: Traffic, topics: Topics = TOPICS) -> tuple[list[Incoming], list[Incoming]]:
    """The traffic as the worker receives it: Kafka messages of each input, in topic order, each
    model in its own partition."""
    offsets: dict[tuple[str, int], int] = {}

    def message(topic: str, model: str, value: bytes) -> Incoming:
        tp = (topic, MODELS.index(model))
        offsets[tp] = offsets.get(tp, -1) + 1
        return Incoming(topic, tp[1], offsets[tp], value)

    return ([message(topics.predictions, m[0].model, wire.encode_predictions(m)) for m in traffic.predictions],
            [message(topics.labels, m[0].model, wire.encode_labels(m)) for m in traffic.labels])


def batches(messages: Sequence[Incoming], size: int = 200) -> Iterator[list[Incoming]]:
    for i in range(0, len(messages), size):
        yield list(messages[i:i + size])


def test_two_hours_of_predictions_read_before_their_labels_give_the_replay_windows_and_decisions() -> None:
    rng = random.Random(18)
    base = (int(time.time() * 1000) - 9_000_000) // SIZE_MS * SIZE_MS  # 2.5 h ago
    backlog = messages(*generate(base, base + 2 * 3_600_000, 2.0, rng, bad_from=BAD_FROM), rng)
    end = window_end_after(backlog)
    traffic = backlog + closing(end)
    want = truth(traffic, before=end)
    # The replay joins the labels: what the worker must do too (today it joined none).
    assert labeled(want.final) > 0.9 * 0.95 * sum(map(len, backlog.predictions))

    processor = StreamProcessor(topologies(), TOPICS, SIGNER, clock=lambda: base + 9_000_000)
    predictions, labels = encoded(traffic)
    outs = []
    for batch in batches(predictions):  # a lagging worker: the predictions' fetches outrun the labels'
        outs += processor.process(batch)
    for batch in batches(labels):
        outs += processor.process(batch)
    assert processor.counters["dead_letter"] == 0
    snapshots = [wire.decode_metric_snapshot(o.value) for o in outs if o.topic == TOPICS.metrics]
    final = {key(s): s for s in snapshots if s.window_start < end}
    closed: dict[Key, MetricSnapshot] = {}
    for s in snapshots:
        if s.status == "CLOSED" and s.window_start < end:
            assert key(s) not in closed, f"{key(s)} closed twice"
            closed[key(s)] = s
    assert_same_windows(closed, want.closed, "CLOSED")
    assert_same_windows(final, want.final, "final")
    emitted = [wire.decode_command(o.value) for o in outs if o.topic == TOPICS.commands]
    assert_same_decisions([c for c in emitted if c.window_start < end], want.decisions)


# -- over the embedded broker ----------------------------------------------------------------------

BROKER = (pytest.mark.broker, pytest.mark.reliability)
RATE = 5.0  # predictions per second of event time and model
BACKLOG_MS = 2 * 3_600_000
KILLS_CATCHING_UP = 3
KEEP_UP_SPEED = 10  # event time runs at 10x the wall clock while the worker keeps up: a window per 6 s
KEEP_UP_STEP_S = 0.1  # the publisher sends 1 s of event time every 0.1 s
# While catching up, a checkpoint every second; while keeping up, every 4 s (40 s of event time): a
# checkpoint may be older than labels.max_delay.
CATCH_UP_CHECKPOINT_INTERVAL, KEEP_UP_CHECKPOINT_INTERVAL = "1s", "4s"
WROTE = re.compile(r"wrote checkpoint \w+ of partition (\d+) \(offsets (\{.*?\})\)")
RESTORED = re.compile(r"restored partition (\d+) from checkpoint \w+ \(\d+ models, offsets (\{.*?\})\)")


def pin_to_first_cpu() -> None:
    os.sched_setaffinity(0, {0})


class BusyLoop:
    """A process spinning on CPU 0, the one the workers are pinned to: they get about half of it,
    as on a crowded node (the broker and pytest keep CPU 1)."""

    def __enter__(self) -> BusyLoop:
        assert len(os.sched_getaffinity(0)) >= 2, "the contention test needs two CPUs: one contended, one for the rest"
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin_to_first_cpu)
        return self

    def __exit__(self, *_: object) -> None:
        self.process.kill()
        self.process.wait(10)


def free_port() -> int:
    from mle_stream.broker import free_port as free

    return free()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker's Prometheus metrics: (name, labels) -> value; empty while it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class Scraper(threading.Thread):
    """Scrapes a worker's metrics every 0.2 s while the test runs: which input partitions were ever
    reported paused (mle_stream_input_paused 1)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stopped = port, threading.Event()
        self.paused: set[tuple[str, str]] = set()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for (name, labels), value in scrape(self.port).items():
                if name == "mle_stream_input_paused" and value == 1:
                    self.paused.add((dict(labels)["topic"], dict(labels)["partition"]))

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


def processed(port: int, topic: str) -> float:
    """The messages of `topic` the worker has processed since it started (0 while it does not answer)."""
    return sum(v for (name, labels), v in scrape(port).items()
               if name == "mle_stream_input_messages_total" and dict(labels)["topic"] == topic)


class Outputs(threading.Thread):
    """Reads the metrics and commands topics from the beginning for as long as the test runs: the
    CLOSED snapshots of every window (each time one was published: a restart re-derives some), the
    last snapshot of every window, and the commands."""

    def __init__(self, bootstrap: str, topics: Topics, partitions: int = 2) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from mle_stream.kafka import consumer_config

        self.topics, self.stopped, self.lock = topics, threading.Event(), threading.Lock()
        self.consumer = Consumer(consumer_config(bootstrap, f"test-outputs-{uuid.uuid4().hex[:8]}"))
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                              for t in (topics.metrics, topics.commands) for p in range(partitions)])
        self.closed: dict[Key, list[MetricSnapshot]] = {}
        self.last: dict[Key, MetricSnapshot] = {}
        self.commands: list[Command] = []

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                for m in self.consumer.consume(num_messages=1000, timeout=0.2):
                    if m.error() is not None:
                        continue
                    with self.lock:
                        if m.topic() == self.topics.commands:
                            self.commands.append(wire.decode_command(m.value() or b""))
                            continue
                        s = wire.decode_metric_snapshot(m.value() or b"")
                        self.last[key(s)] = s
                        if s.status == "CLOSED":
                            self.closed.setdefault(key(s), []).append(s)
        finally:
            self.consumer.close()

    def converged(self, want: Truth, before: int) -> bool:
        with self.lock:
            final = {k: s for k, s in self.last.items() if k[3] < before}
            if final.keys() != want.final.keys() or any(facts(final[k]) != facts(want.final[k]) for k in final):
                return False
            return {d.command_id for d in want.decisions} <= {c.command_id for c in self.commands}

    def wait(self, want: Truth, before: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.converged(want, before) and time.monotonic() < deadline:
            time.sleep(0.2)

    def check(self, want: Truth, before: int) -> None:
        """The worker's windows and decisions are the replay's."""
        with self.lock:
            final = {k: s for k, s in self.last.items() if k[3] < before}
            closed = {k: v for k, v in self.closed.items() if k[3] < before}
            commands = [c for c in self.commands if c.window_start < before]
        assert_same_windows(final, want.final, "final")
        # Every CLOSED snapshot the worker published (a restart re-derives the windows closed since
        # its checkpoint) is the replay's: the same records before the closing, no others.
        assert_same_windows({k: v[0] for k, v in closed.items()}, want.closed, "CLOSED")
        again = [k for k, v in closed.items() if any(facts(s) != facts(v[0]) for s in v[1:])]
        assert not again, f"{len(again)} windows closed twice with different results, e.g. {again[:3]}"
        assert_same_decisions(commands, want.decisions)

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


def produce(bootstrap: str, topics: Topics, traffic: Traffic) -> dict[tuple[str, int], int]:
    """Publish the traffic, each model keyed to its partition; the end offset of every input partition."""
    from confluent_kafka import Producer

    from mle_stream.kafka import producer_config

    producer = Producer({**producer_config(bootstrap), "queue.buffering.max.messages": 1_000_000})
    ends: dict[tuple[str, int], int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        tp = (msg.topic(), msg.partition())
        ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

    for topic, model, value in traffic.kafka(topics):
        producer.produce(topic, key=model, value=value, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    return ends


def worker_env(kafka_bootstrap: str, topics: Topics, metrics_port: int, group: str) -> dict[str, str]:
    from conftest import topic_env

    return {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": "k" * 32,
            "MLE_WORKER_GROUP": group, "MLE_CHECKPOINT_INTERVAL": CATCH_UP_CHECKPOINT_INTERVAL,
            "MLE_TOPIC_PARTITIONS": "2", "MLE_STATUS_PORT": "0", "MLE_METRICS_PORT": str(metrics_port)}


def write_topologies(tmp_path: Path) -> Path:
    folder = tmp_path / "topologies"
    folder.mkdir()
    for model in MODELS:
        (folder / f"{model}.yaml").write_text(CATCH_UP_TOPOLOGY.format(model=model))
    return folder


def checkpointed(log: str) -> dict[int, dict[str, int]]:
    """The offsets of the last checkpoint of each partition written in this log."""
    return {int(k): ast.literal_eval(offsets) for k, offsets in WROTE.findall(log)}


def assert_reads_from_its_checkpoints(worker: Any) -> dict[tuple[str, int], int]:
    """The restart reads from the checkpoints' offsets (or from the start without one), not from the
    group's committed offsets. Returns them."""
    from worker_process import restored_offsets

    log = worker.text()
    restored = restored_offsets(log)
    line = next(x for x in log.splitlines() if "reading from " in x)
    reading = {(t, int(p)): int(o) for t, p, o in re.findall(r"(\S+)\[(\d+)\] from (\d+)", line)}
    assert len(reading) == 3 * len(MODELS), line  # 3 input topics
    assert reading == {tp: restored.get(tp, 0) for tp in reading}, (reading, restored)
    return reading


def wait_for_checkpoint(worker: Any, offsets: dict[tuple[str, int], int], timeout_s: float,
                        live: threading.Event | None = None) -> None:
    """Until the worker (this run) has checkpointed at least these offsets."""
    deadline = time.monotonic() + timeout_s
    while True:
        written = checkpointed(worker.text())
        if all(written.get(p, {}).get(t, -1) >= n for (t, p), n in offsets.items()):
            return
        assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
        assert time.monotonic() < deadline, f"no checkpoint of {offsets} in {timeout_s} s: {written}"
        assert live is None or not live.is_set(), "the live traffic ended before the worker caught up"
        time.sleep(0.05)


class Clock:
    """Prints how long each phase took (shown with a failure, or with pytest -s)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, what: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {what}", flush=True)


def never_delivered(workers: Sequence[Any]) -> list[str]:
    """The lines in every log of these workers that report input offsets never delivered."""
    return [line for w in workers for run in range(1, w.runs + 1)
            for line in (w.tmp_path / f"worker-{run}.log").read_text(errors="replace").splitlines()
            if "never delivered" in line]


@pytest.mark.broker
@pytest.mark.reliability
def test_backlog_catch_up_under_kills_and_contention(tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    from worker_process import Worker

    rng, clock = random.Random(1806), Clock()
    base = (int(time.time() * 1000) - 9_000_000) // SIZE_MS * SIZE_MS  # 2.5 h ago
    backlog_end = base + BACKLOG_MS
    # Two hours of backlog, then up to 15 min of event time published live while the worker keeps
    # up (the publisher stops soon after the last kill; the rest is never published).
    preds, labels = generate(base, backlog_end + 900_000, RATE, rng, bad_from=BAD_FROM)
    (backlog_preds, backlog_labels), (live_preds, live_labels) = split(preds, labels, backlog_end)
    backlog = messages(backlog_preds, backlog_labels, rng)
    ends = produce(kafka_bootstrap, topics, backlog)  # all of it before the worker starts
    clock(f"{len(backlog.predictions)} messages of predictions, {len(backlog.labels)} of labels published")

    port = free_port()
    env = worker_env(kafka_bootstrap, topics, port, f"catch-up-{uuid.uuid4().hex[:8]}")
    worker = Worker(tmp_path, env, write_topologies(tmp_path), preexec_fn=pin_to_first_cpu)
    outputs, scraper = Outputs(kafka_bootstrap, topics), Scraper(port)
    stop_publishing, published = threading.Event(), threading.Event()
    live_until = [backlog_end]  # event time published so far (excluded)

    def publish_live() -> None:  # event time at KEEP_UP_SPEED x the wall clock
        from confluent_kafka import Producer

        from mle_stream.kafka import producer_config

        producer = Producer(producer_config(kafka_bootstrap))
        step_ms = int(KEEP_UP_STEP_S * 1000 * KEEP_UP_SPEED)
        steps = range(backlog_end, backlog_end + 900_000, step_ms)
        preds_at: dict[int, list[Prediction]] = {}
        labels_at: dict[int, list[Label]] = {}
        for p in live_preds:
            preds_at.setdefault(backlog_end + (p.timestamp - backlog_end) // step_ms * step_ms, []).append(p)
        for x in live_labels:
            labels_at.setdefault(backlog_end + (x.timestamp - backlog_end) // step_ms * step_ms, []).append(x)
        after, started, grouping = None, time.monotonic(), random.Random(7)
        for j, t in enumerate(steps):
            step = messages(preds_at.get(t, []), labels_at.get(t, []), grouping)
            for topic, model, value in step.kafka(topics):
                producer.produce(topic, key=model, value=value)
            assert producer.flush(10) == 0
            live_until[0] = t + step_ms
            if stop_publishing.is_set():
                after = t if after is None else after
                if t - after >= 30_000:  # 30 s of event time after the restart
                    break
            time.sleep(max(0.0, started + (j + 1) * KEEP_UP_STEP_S - time.monotonic()))
        published.set()

    publisher = threading.Thread(target=publish_live, daemon=True)
    outputs.start()
    scraper.start()
    try:
        with BusyLoop():
            worker.start()
            worker.wait_for("reading from ", 1, 60)
            reading = assert_reads_from_its_checkpoints(worker)
            clock("started")
            # Catching up: killed once it has read a fifth, 45%, 70% of the labels (mid-batch,
            # mid-checkpoint, wherever it is then), and restarted at once.
            total = sum(n for (t, _), n in ends.items() if t == topics.labels)
            for k in range(KILLS_CATCHING_UP):
                target = total * (20 + 25 * k) // 100
                deadline = time.monotonic() + 60
                while (done := processed(port, topics.labels) + sum(
                        o for (t, _), o in reading.items() if t == topics.labels)) < target:
                    assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
                    assert time.monotonic() < deadline, f"{done} of {target} label messages read in 60 s"
                    time.sleep(0.02)
                worker.kill()
                assert done < total, "the worker had read every label when killed: make the backlog longer"
                if k == KILLS_CATCHING_UP - 1:
                    worker.env["MLE_CHECKPOINT_INTERVAL"] = KEEP_UP_CHECKPOINT_INTERVAL
                clock(f"killed while catching up, {total - done:.0f} label messages behind")
                worker.start()
                worker.wait_for("reading from ", 1, 60)
                reading = assert_reads_from_its_checkpoints(worker)
                clock("restarted")
            # Keeping up: new traffic published live; once the worker has checkpointed the whole
            # backlog, killed 3.5 s (35 s of event time, more than labels.max_delay) after a checkpoint.
            publisher.start()
            wait_for_checkpoint(worker, ends, 90, live=published)
            clock("caught up")
            worker.wait_for("wrote checkpoint", worker.text().count("wrote checkpoint") + 1, 30)
            at_checkpoint = live_until[0]
            time.sleep(3.5)
            at_kill = live_until[0]
            worker.kill()
            assert at_kill - at_checkpoint > MAX_DELAY_MS, (at_checkpoint, at_kill)
            clock(f"killed while keeping up, {(at_kill - at_checkpoint) / 1000} s of event time after a checkpoint")
            worker.start()
            worker.wait_for("reading from ", 1, 60)
            assert_reads_from_its_checkpoints(worker)
            clock("restarted")
            stop_publishing.set()
            assert published.wait(60), "the live traffic ended too early: make it longer"
            # All of it, then a record of each input past every window's closing.
            live = split(live_preds, live_labels, live_until[0])[0]
            sent = backlog + messages(*live, random.Random(0))  # the same records (grouped otherwise)
            end = window_end_after(sent)
            produce(kafka_bootstrap, topics, closing(end))
            want = truth(sent + closing(end), before=end)
            clock("replayed")
            outputs.wait(want, end, timeout_s=60)
            clock("converged" if outputs.converged(want, end) else "did not converge")
            assert worker.process is not None and worker.process.poll() is None, worker.text()[-3000:]
    finally:
        worker.stop()
        outputs.stop()
        scraper.stop()
        stop_publishing.set()
        publisher.join(timeout=5) if publisher.is_alive() else None
    assert worker.runs == KILLS_CATCHING_UP + 2
    outputs.check(want, end)
    assert labeled(want.closed) > 0.9 * labeled(want.final)  # the truth joins nearly every label before closing
    # The worker held the predictions back while it caught up on the labels.
    assert {(topics.predictions, str(k)) for k in range(len(MODELS))} & scraper.paused, scraper.paused
    assert not never_delivered([worker])


def reading_partitions(log: str) -> list[set[int]]:
    """The input partitions of each assignment the worker positioned itself on, in order."""
    return [{int(p) for _, p in re.findall(r"(\S+)\[(\d+)\] from \d+", line)}
            for line in log.splitlines() if "reading from " in line]


def restores(log: str) -> list[tuple[int, str, dict[str, int]]]:
    return [(int(k), cid, ast.literal_eval(offsets)) for k, cid, offsets in
            re.findall(r"restored partition (\d+) from checkpoint (\w+) \(\d+ models, offsets (\{.*?\})\)", log)]


def writes(log: str) -> list[tuple[int, str, dict[str, int]]]:
    return [(int(k), cid, ast.literal_eval(offsets)) for cid, k, offsets in
            re.findall(r"wrote checkpoint (\w+) of partition (\d+) \(offsets (\{.*?\})\)", log)]


@pytest.mark.broker
@pytest.mark.reliability
def test_rebalance_during_catch_up(tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    """A joins alone and catches up; B joins mid-backlog (A hands one partition over at the
    revocation) and leaves mid-backlog (SIGTERM: B hands it back). Both pinned to one contended CPU."""
    from worker_process import Worker

    rng, clock = random.Random(1807), Clock()
    base = (int(time.time() * 1000) - 9_000_000) // SIZE_MS * SIZE_MS  # 2.5 h ago
    # A label to a message: twice the messages, so that the catch-up outlasts two rebalances.
    backlog = messages(*generate(base, base + BACKLOG_MS, RATE, rng, bad_from=BAD_FROM), rng, labels_per_message=1)
    end = window_end_after(backlog)
    traffic = backlog + closing(end)
    ends = produce(kafka_bootstrap, topics, traffic)  # all of it before the workers start
    clock(f"{len(traffic.predictions)} messages of predictions, {len(traffic.labels)} of labels published")

    topologies = write_topologies(tmp_path)
    group = f"catch-up-{uuid.uuid4().hex[:8]}"
    ports = free_port(), free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Worker(tmp_path / "a", worker_env(kafka_bootstrap, topics, ports[0], group), topologies,
               preexec_fn=pin_to_first_cpu)
    b = Worker(tmp_path / "b", worker_env(kafka_bootstrap, topics, ports[1], group), topologies,
               preexec_fn=pin_to_first_cpu)
    outputs, scrapers = Outputs(kafka_bootstrap, topics), (Scraper(ports[0]), Scraper(ports[1]))
    outputs.start()
    for s in scrapers:
        s.start()
    try:
        with BusyLoop():
            a.start()
            replaying = ThreadPoolExecutor(1).submit(truth, traffic, end)  # meanwhile
            a.wait_for("reading from ", 1, 60)
            a.wait_for("wrote checkpoint", 1, 30)  # A is catching up
            clock("A started")
            b.start()
            b.wait_for("reading from ", 1, 60)  # B is in the group: a partition moved from A to B
            a.wait_for("reading from ", 2, 30)
            clock("B joined")
            given = reading_partitions(b.text())[0]
            deadline = time.monotonic() + 30
            while processed(ports[1], topics.labels) < 2000:  # B has worked on it
                assert b.process is not None and b.process.poll() is None, b.text()[-3000:]
                assert time.monotonic() < deadline, "B read no 2000 labels in 30 s"
                time.sleep(0.02)
            assert b.process is not None
            b.process.terminate()  # SIGTERM: B checkpoints what it holds and leaves the group
            assert b.process.wait(30) == 0, b.text()[-3000:]
            a.wait_for("reading from ", 3, 30)  # A holds both partitions again
            clock("B left")
            want = replaying.result()
            outputs.wait(want, end, timeout_s=60)
            clock("converged" if outputs.converged(want, end) else "did not converge")
            assert a.process is not None and a.process.poll() is None, a.text()[-3000:]
    finally:
        a.stop()
        b.stop()
        outputs.stop()
        for s in scrapers:
            s.stop()
    a_log, b_log = a.text(), b.text()
    # The partitions moved: A held both, then kept one and gave B the other, then held both again.
    everything = set(range(len(MODELS)))
    assert reading_partitions(a_log) == [everything, everything - given, everything], reading_partitions(a_log)
    assert reading_partitions(b_log) == [given] and len(given) == 1, reading_partitions(b_log)
    # Each handover was mid-backlog: B restored what A wrote at the revocation, A what B wrote as it
    # stopped, and neither had read all the labels of the partition by then.
    a_parts = a_log.split("reading from ")  # before A's 1st assignment, till the 2nd, till the 3rd, after
    for taker, giver in ((b_log, a_parts[0] + a_parts[1]), (a_parts[2], b_log)):
        assert {k for k, _, _ in restores(taker)} >= given, restores(taker)
        for k, cid, offsets in restores(taker):
            if k not in given:
                continue
            mine = [(c, o) for p, c, o in writes(giver) if p == k]
            assert mine and mine[-1] == (cid, offsets), (k, cid, offsets, mine)
            assert 0 < offsets[topics.labels] < ends[(topics.labels, k)], (
                f"partition {k} handed over at label offset {offsets[topics.labels]} of {ends[(topics.labels, k)]}: "
                "not mid-backlog, make the backlog longer")
    outputs.check(want, end)
    assert {(topics.predictions, str(k)) for k in everything} & (scrapers[0].paused | scrapers[1].paused), (
        scrapers[0].paused, scrapers[1].paused)
    assert not never_delivered([a, b])
