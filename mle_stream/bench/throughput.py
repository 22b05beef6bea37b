"""`mle-stream bench`: end-to-end throughput of one worker process, next to the floor it could reach.

The bench publishes N predictions (10 numeric features each) and labels for about 90% of them
through EvaluationClient, so the wire format is exactly what serving pods and labelers send, into
fresh topics. Then, over the same already-produced messages, it measures two legs:

- the **floor**: a raw confluent-kafka consumer that only decodes every message with the worker's
  own decoders (wire.decode_prediction_columns / decode_label_columns), timed from the first
  message in hand to the last record decoded. It takes what librdkafka has fetched without waiting
  for a fuller batch (`_FLOOR_WAIT_S`), so that both legs pay for fetching from the broker after
  their first message, and neither sits idle on a timeout. It runs `FLOOR_RUNS` times and the
  fastest run counts;
- the **worker**: the real Faust path (stream.app.build_app run by faust.Worker) in a process of
  its own, timed from the first message Faust hands to the stream to the end of the batch that
  completes all N predictions and their labels. Process start-up, Faust start-up and the consumer
  group join come before that moment and are reported apart as `startup_s`.

Both legs know they are done by counting messages and records, never by the high watermark (the
embedded broker reports it wrong). After the measured interval the bench sends
one later prediction per model, which closes the last event-time windows, and checks that the
metric snapshots the worker published account for every one of the N predictions.

Memory (`rss_growth`): the worker process takes its RSS when N/10 and N predictions are processed.
`mle-stream bench memory` (run_memory_bench) does that over long runs (10M: 1M -> 10M), with the
worker consuming while the bench produces: producing is the slow part, and the worker's events/s
is the default mode's business.
"""

from __future__ import annotations

import contextlib
import cProfile
import heapq
import logging
import multiprocessing
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from mle_stream import wire
from mle_stream.client import EvaluationClient
from mle_stream.config import Settings, Topics
from mle_stream.core.events import Label, Prediction
from mle_stream.core.topology import Topology, parse_topology
from mle_stream.errors import ConfigError, MleStreamError
from mle_stream.kafka import admin_client, bootstrap_servers, configured_servers, consumer_config, ensure_topics
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.redact import redact_servers

log = logging.getLogger(__name__)

DEFAULT_EVENTS = 200_000  # about 40 s in all on the 2-core development machine
DEFAULT_MEMORY_EVENTS = 1_000_000  # bench memory: about 1 min; 10M (1M -> 10M) about 10 min
MAX_RSS_GROWTH = 0.10  # bounded memory: RSS within +-10% from 1M to 10M events
TARGET_EVENTS_PER_S = 100_000
TARGET_RATIO = 0.5

WINDOW_S = 10
GRACE_S = 5
EVENTS_PER_EVENT_S = 2_000  # predictions per second of event time: 200k span 100 s, ten windows
MIN_SPAN_S = 60  # a small run still closes several windows
LABELED = 0.9
LABEL_DELAY_S = (0.5, 4.0)
POSITIVE_RATE = 0.2
CANDIDATE_SHARE = 0.1
FEATURES = ("amount", "account_age_days", "txn_count_24h", "avg_amount_30d", "distance_km",
            "hour_of_day", "merchant_risk", "device_score", "velocity_1h", "balance_ratio")
FEATURE_SCALES = (500.0, 3650.0, 40.0, 300.0, 2000.0, 24.0, 1.0, 1.0, 10.0, 5.0)

# Retention and the label join's max_delay are as short as the traffic allows, so that the worker's
# state reaches its steady state early (`steady_state_events`; the memory bound, rss_growth, is only
# meaningful past it): every label comes 0.5-4 s after its prediction, within the 5 s grace (so a
# window closes with all its labels) and well within max_delay and retention. The state then holds
# the panes of ~3 windows and the join's entries of ~40 s of event time (a joined pair stays
# correctable for max_delay + size + retention, and expiry runs when a window closes): ~80,000
# events at 2,000 predictions per second of event time. Longer horizons would not reach the steady
# state within the default run's 200,000 events.
RETENTION_S = 10
LABEL_MAX_DELAY_S = 10
TOPOLOGY_YAML = """\
model: {model}
task: binary
threshold: 0.5
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: {window}s, grace: {grace}s, retention: {retention}s}}
labels: {{max_delay: {max_delay}s}}
rollback: {{metric: error_rate, max_increase: 0.05, consecutive_windows: 3, min_samples: 100}}
"""

MEASURED = ("from the first message the worker's stream received to the end of the batch that completed "
            "all predictions and labels; process start-up, Faust start-up and the group join are excluded "
            "(startup_s)")

# The bench's own topics and worker: no operator key needed. 32 bytes, an HMAC key's minimum.
_SIGNING_KEY = b"mle-stream-bench-signing-key-32b"
_QUEUE_HIGH = 50_000  # records queued in a client before the producing loop waits for it
_POLL_S = 0.5
# The floor's consume() returns once it has 1000 messages or this long has passed. At 0.5 s the
# floor measured something else: the first call waited for messages that were all fetched already
# (200,000 events are ~760 messages, prefetched in one go while that call waited, outside the
# timed interval), so the floor was decoding from memory alone; and at a million events each
# partial batch waited out the 0.5 s (~1.5 s of a 3.3 s floor). 1 ms lets the clock start at the
# first fetched messages and never leaves the loop idle while records are there to decode.
_FLOOR_WAIT_S = 0.001
# The floor is measured this many times over the same messages and the fastest run counts: one run
# is short, and on shared machines single runs vary by a factor of two from one bench to the next
# (docs/performance-history.md). A floor slowed by a neighbour would make the ratio look better than
# it is.
FLOOR_RUNS = 3


class BenchError(MleStreamError):
    """The bench could not complete a leg (broker, worker process, missing records)."""


def model_names(models: int) -> list[str]:
    return [f"bench-model-{i}" for i in range(models)]


def bench_topologies(models: int) -> dict[str, Topology]:
    """One binary canary topology per bench model: 10 s tumbling windows, baseline v1, candidate v2."""
    return {name: parse_topology(TOPOLOGY_YAML.format(model=name, window=WINDOW_S, grace=GRACE_S,
                                                      retention=RETENTION_S, max_delay=LABEL_MAX_DELAY_S), "<bench>")
            for name in model_names(models)}


def span_ms(events: int) -> int:
    """The event time the run's predictions cover: events / 2000 s, at least 60 s."""
    return max(MIN_SPAN_S * 1000, events * 1000 // EVENTS_PER_EVENT_S)


def steady_state_events(events: int) -> int:
    """After how many of a run's `events` predictions the worker's state stops growing: the longest
    event-time horizon anything is held for (a joined pair: max_delay + size + retention; a pane:
    size + retention), plus one window, since expiry runs when a window closes, at this run's
    predictions per second of event time. Past it, memory stays flat for a fixed set of versions
    and windows; before it, rss_growth includes the state's warm-up."""
    t = next(iter(bench_topologies(1).values()))
    horizon_ms = max(t.label_max_delay_ms + t.window_size_ms + t.window_retention_ms,
                     t.window_size_ms + t.window_retention_ms + t.window_grace_ms) + t.window_size_ms
    return min(events, -(-horizon_ms * events // span_ms(events)))


# ------------------------------------------------------------------------------------------------
# Producing


@dataclass(frozen=True)
class Produced:
    predictions: int
    labels: int
    prediction_messages: int
    label_messages: int
    seconds: float
    last_timestamp: dict[str, int]  # per model, the largest prediction timestamp


def _wait_below(client: EvaluationClient, limit: int) -> None:
    """Back-pressure: a full client queue drops records, and the bench must publish every one."""
    while client.stats.queued > limit:
        time.sleep(0.005)


def _delivered(client: EvaluationClient, what: str, expected: int) -> int:
    if client.flush(timeout_s=60):
        raise BenchError(f"Kafka did not acknowledge all {what} within 60 s ({client.stats})")
    stats = client.stats
    if stats.sent_records != expected or stats.dropped_queue_full or stats.dropped_delivery_failed:
        raise BenchError(f"{what}: {expected} logged but {stats.sent_records} delivered ({stats})")
    return stats.sent_messages


def traffic(events: int, models: int, start_ms: int, seed: int = 7) -> Iterator[Prediction | Label]:
    """The bench's records in publishing order: `events` predictions spread evenly over
    span_ms(events) of event time from `start_ms`, and labels for ~90% of them, each 0.5-4 s of
    event time after its prediction and emitted in label-time order, as a labeler would."""
    rng = random.Random(seed)
    names = model_names(models)
    span = span_ms(events)
    pending: list[tuple[int, int, Label]] = []  # labels not yet due, by label timestamp
    rand, beta, lognorm, uniform, getrandbits = (rng.random, rng.betavariate, rng.lognormvariate, rng.uniform,
                                                 rng.getrandbits)
    for i in range(events):
        model = names[i % models]
        ts = start_ms + i * span // events
        positive = rand() < POSITIVE_RATE
        score = beta(5.0, 1.6) if positive else beta(1.6, 5.0)
        pid = f"{getrandbits(128):032x}"
        yield Prediction(
            prediction_id=pid, model=model, version="2" if rand() < CANDIDATE_SHARE else "1", timestamp=ts,
            score=score, latency_ms=lognorm(2.3, 0.4),
            features=dict(zip(FEATURES, [rand() * s for s in FEATURE_SCALES])),
        )
        if rand() < LABELED:
            label_ts = ts + int(uniform(*LABEL_DELAY_S) * 1000)
            heapq.heappush(pending, (label_ts, i, Label(pid, model, label_ts, positive)))
        while pending and pending[0][0] <= ts:
            yield heapq.heappop(pending)[2]
    while pending:
        yield heapq.heappop(pending)[2]


def produce(bootstrap: str, topics: Topics, events: int, models: int, seed: int = 7, *,
            security: KafkaSecurity = PLAINTEXT) -> Produced:
    """Publish `events` predictions and ~90% of their labels (`traffic`) through two EvaluationClients.

    Event time runs from a few minutes ago over max(60 s, events / 2000 s).
    """
    start_ms = (int(time.time() * 1000) - span_ms(events) - 120_000) // 1000 * 1000
    labels = 0
    last: dict[str, int] = {}
    began = time.monotonic()
    # Two clients, as a serving pod and a labeler would have: each one's stats count its own messages.
    with EvaluationClient(bootstrap, topics=topics, security=security) as predictions, \
            EvaluationClient(bootstrap, topics=topics, security=security) as labelers:
        log_prediction, log_label = predictions.log_prediction, labelers.log_label
        sent = 0
        for record in traffic(events, models, start_ms, seed):
            if isinstance(record, Prediction):
                log_prediction(record)
                last[record.model] = record.timestamp
                sent += 1
                if sent % 5000 == 0:
                    _wait_below(predictions, _QUEUE_HIGH)
                    _wait_below(labelers, _QUEUE_HIGH)
            else:
                log_label(record)
                labels += 1
        prediction_messages = _delivered(predictions, "predictions", events)
        label_messages = _delivered(labelers, "labels", labels)
    return Produced(events, labels, prediction_messages, label_messages, time.monotonic() - began, last)


def send_window_closers(bootstrap: str, topics: Topics, last_timestamp: Mapping[str, int], *,
                        security: KafkaSecurity = PLAINTEXT) -> int:
    """One prediction per model, a window and its grace after the last: event time passes every
    window of the run, so the worker closes and publishes them all. Returns the messages sent."""
    with EvaluationClient(bootstrap, topics=topics, security=security) as client:
        for model, ts in last_timestamp.items():
            client.log_prediction(Prediction(prediction_id=f"bench-closer-{model}", model=model, version="1",
                                             timestamp=ts + (WINDOW_S + GRACE_S) * 1000 + 1, score=0.5))
        return _delivered(client, "window closers", len(last_timestamp))


# ------------------------------------------------------------------------------------------------
# The floor: a raw consumer that only decodes


@dataclass(frozen=True)
class Leg:
    seconds: float
    messages: int
    predictions: int
    labels: int

    @property
    def events_per_s(self) -> float:
        return self.predictions / self.seconds if self.seconds > 0 else 0.0


def _reader(bootstrap: str, names: list[str], purpose: str, security: KafkaSecurity = PLAINTEXT) -> Consumer:
    """A consumer with every partition of `names` assigned from the beginning.

    Assigned, not subscribed: a group join takes seconds on the embedded broker and is no part of
    what the bench measures.
    """
    # CRCs checked as the worker's consumer checks them (aiokafka's default, under Faust's
    # broker_check_crcs); librdkafka's default is not to.
    consumer = Consumer(consumer_config(bootstrap, f"mle-bench-{purpose}-{uuid.uuid4().hex[:8]}", security=security,
                                        **{"check.crcs": True}))
    try:
        metadata = consumer.list_topics(timeout=15)
    except KafkaException as exc:
        consumer.close()
        raise BenchError(f"cannot read the topic metadata from {redact_servers(bootstrap)!r}: {exc}") from exc
    consumer.assign([TopicPartition(name, partition, OFFSET_BEGINNING)
                     for name in names for partition in sorted(metadata.topics[name].partitions)])
    return consumer


def run_baseline(bootstrap: str, topics: Topics, predictions: int, labels: int, timeout_s: float, *,
                 security: KafkaSecurity = PLAINTEXT) -> Leg:
    """confluent-kafka consume(1000) over both topics, decoding every message; counts records."""
    consumer = _reader(bootstrap, [topics.predictions, topics.labels], "floor", security)
    # The worker's own decoders: the floor reads exactly what the worker reads, into the same columns.
    decode_predictions, decode_labels, prediction_topic = (wire.decode_prediction_columns,
                                                           wire.decode_label_columns, topics.predictions)
    seen_predictions = seen_labels = messages = errors = 0
    first: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while seen_predictions < predictions or seen_labels < labels:
            if time.monotonic() > deadline:
                raise BenchError(f"the raw consumer read {seen_predictions}/{predictions} predictions and "
                                 f"{seen_labels}/{labels} labels in {timeout_s:.0f} s")
            batch = consumer.consume(num_messages=1000, timeout=_FLOOR_WAIT_S)
            if batch and first is None:
                first = time.monotonic()
            for msg in batch:
                if msg.error() is not None:
                    raise BenchError(f"the raw consumer got a Kafka error: {msg.error()}")
                messages += 1
                value = msg.value() or b""
                if msg.topic() == prediction_topic:
                    decoded = decode_predictions(value)
                    seen_predictions += len(decoded.columns)
                    errors += len(decoded.errors)
                else:
                    decoded_labels = decode_labels(value)
                    seen_labels += len(decoded_labels.columns)
                    errors += len(decoded_labels.errors)
        end = time.monotonic()
    finally:
        consumer.close()
    if errors:
        raise BenchError(f"the raw consumer could not decode {errors} records of the bench's own messages")
    assert first is not None
    return Leg(end - first, messages, seen_predictions, seen_labels)


def floor_runs(bootstrap: str, topics: Topics, produced: Produced, timeout_s: float, *,
               security: KafkaSecurity = PLAINTEXT) -> list[Leg]:
    """The floor, FLOOR_RUNS times over the same messages; each run must read every message."""
    messages = produced.prediction_messages + produced.label_messages
    legs = [run_baseline(bootstrap, topics, produced.predictions, produced.labels, timeout_s, security=security)
            for _ in range(FLOOR_RUNS)]
    for leg in legs:
        if leg.messages != messages:
            raise BenchError(f"the raw consumer read {leg.messages} messages, the clients sent {messages}")
    return legs


def fastest(legs: Sequence[Leg]) -> Leg:
    return min(legs, key=lambda leg: leg.seconds)


# ------------------------------------------------------------------------------------------------
# The worker: build_app + faust.Worker in a process of its own (its peak RSS is the worker's alone)


def _rss_mb() -> float | None:
    """Resident set size now, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class _WorkerProbe:
    """Counts what the worker processed, through build_app's observer and a Faust sensor, and tells
    the bench process when the measured part is done (`measured`) and when the closers are in (`done`).

    It also takes the worker's RSS when a tenth of the run's predictions are processed and again at
    the end (rss_growth). `messages`, the measured part's messages, may be None when the bench is
    still producing them (bench memory): the bench sends ("target", messages) once it knows."""

    def __init__(self, conn: Connection, messages: int | None, events: int, closers: int,
                 profile: str | None) -> None:
        self.conn = conn
        self.target = messages
        self.tenth = max(1, events // 10)
        self.closers = closers
        self.profile_path = profile
        self.profiler: cProfile.Profile | None = None
        self.processor: Any = None
        self.first: float | None = None
        self.rss_first: float | None = None
        self.at_tenth: tuple[int, float | None] | None = None  # (predictions processed, RSS MB) then
        self.cpu_first = 0.0
        self.measured = False
        self.done = False
        self.messages = 0
        self.published = 0
        self.batches: list[int] = []

    def on_first_message(self) -> None:
        self.first = time.monotonic()
        self.rss_first = _rss_mb()
        self.cpu_first = time.process_time()
        if self.profile_path:
            self.profiler = cProfile.Profile()
            self.profiler.enable()

    def on_batch(self, messages: int, published: int) -> None:
        self.messages += messages
        self.published += published
        if not self.measured:
            self.batches.append(messages)
        if self.at_tenth is None:
            predictions = self._counters().get("predictions", 0)
            if predictions >= self.tenth:
                self.at_tenth = (predictions, _rss_mb())
        if self.target is None and self.conn.poll():
            got, self.target = self.conn.recv()
            assert got == "target", got
        if not self.measured and self.target is not None and self.messages >= self.target:
            end = time.monotonic()
            rss_end = _rss_mb()
            if self.profiler is not None and self.profile_path:
                self.profiler.disable()
                self.profiler.dump_stats(self.profile_path)
            self.measured = True
            counters = self._counters()
            tenth_predictions, rss_tenth = self.at_tenth or (None, None)
            self.conn.send(("measured", {
                "first_message_at": self.first, "end_at": end, "messages": self.messages,
                "batches": list(self.batches), "published": self.published,
                "predictions": counters.get("predictions", 0), "labels": counters.get("labels", 0),
                "dead_letters": counters.get("dead_letter", 0), "commands": counters.get("commands", 0),
                # The kernel keeps RSS in per-thread or per-CPU counters and folds them into ru_maxrss
                # lazily: a sample of /proc exceeded it by 0.24 MB once. The peak is at least every sample.
                "peak_rss_mb": max([_peak_rss_mb(),
                                    *(r for r in (self.rss_first, rss_tenth, rss_end) if r is not None)]),
                "rss_first_message_mb": self.rss_first, "rss_end_mb": rss_end,
                "rss_tenth_mb": rss_tenth, "tenth_predictions": tenth_predictions,
                "cpu_s": time.process_time() - self.cpu_first,
            }))
        elif self.measured and not self.done and self.messages >= (self.target or 0) + self.closers:
            self.done = True
            self.conn.send(("done", {"messages": self.messages, "counters": self._counters()}))

    def _counters(self) -> dict[str, int]:
        return dict(getattr(self.processor, "counters", {}))


def _worker_main(spec: dict[str, Any], conn: Connection) -> None:
    """The worker process: the bench's topologies through build_app, run by faust.Worker until the
    bench process stops it (SIGTERM, Faust's own graceful shutdown)."""
    os.dup2(2, 1)  # Faust may print; the bench's stdout is for its report (--json) alone
    logging.basicConfig(level=spec["log_level"], stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s worker %(name)s: %(message)s")
    import faust

    from mle_stream.stream.app import build_app, tune_runtime

    probe = _WorkerProbe(conn, spec["messages"], spec["events"], spec["closers"], spec["profile"])

    class FirstMessage(faust.Sensor):  # type: ignore[misc]
        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            if probe.first is None:
                probe.on_first_message()

    settings: Settings = spec["settings"]
    # Faust's data directory (empty with the memory store) goes to a temporary one, not the cwd.
    datadir = tempfile.mkdtemp(prefix="mle-bench-faust-")
    app, processor = build_app(settings, spec["bootstrap"], bench_topologies(spec["models"]), observer=probe.on_batch,
                               datadir=datadir)
    tune_runtime()  # as run_worker does
    probe.processor = processor
    app.sensors.add(FirstMessage())
    worker = faust.Worker(app, loglevel=spec["log_level"].lower(), redirect_stdouts=False, quiet=True)
    worker.spinner = None  # its cursor codes would land in the bench's terminal
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        shutil.rmtree(datadir, ignore_errors=True)


def _warn_if_incomplete(predictions: int, labels: int, in_snapshots: int, events: int, produced_labels: int) -> None:
    if (predictions, labels, in_snapshots) != (events, produced_labels, events):
        log.warning("the worker processed %d of %d predictions and %d of %d labels, and its snapshots count %d "
                    "predictions: some records were dead-lettered or lost", predictions, events, labels,
                    produced_labels, in_snapshots)


def _receive(process: multiprocessing.process.BaseProcess, conn: Connection, kind: str,
             timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.poll(_POLL_S):
            got, payload = conn.recv()
            if got != kind:
                raise BenchError(f"the worker process reported {got!r} while the bench waited for {kind!r}")
            return payload  # type: ignore[no-any-return]
        if not process.is_alive():
            raise BenchError(f"the worker process exited with status {process.exitcode} before it reported "
                             f"{kind!r}; its log is on stderr")
    raise BenchError(f"the worker process did not report {kind!r} within {timeout_s:.0f} s")


@contextlib.contextmanager
def _worker_process(spec: dict[str, Any]) -> Iterator[tuple[multiprocessing.process.BaseProcess, Connection]]:
    context = multiprocessing.get_context("spawn")  # a clean process: its peak RSS is the worker's
    ours, theirs = context.Pipe()
    process = context.Process(target=_worker_main, args=(spec, theirs), name="mle-stream-bench-worker")
    process.start()
    try:
        yield process, ours
    finally:
        if process.is_alive():
            process.terminate()  # SIGTERM: Faust stops its consumer and producer
            process.join(20)
        if process.is_alive():
            log.warning("the bench's worker process did not stop within 20 s of SIGTERM; killing it")
            process.kill()
            process.join(5)


# ------------------------------------------------------------------------------------------------
# Metric snapshots: the end-to-end check


def read_snapshots(bootstrap: str, topic: str, predictions: int, timeout_s: float, *,
                   security: KafkaSecurity = PLAINTEXT) -> dict[str, int]:
    """Read the metrics topic until the closed windows account for `predictions` (or the time is up).

    Only the one CLOSED snapshot of each model, version and window counts: per-segment breakdowns
    and OPEN / REVISED updates repeat predictions that a closed window already holds.
    """
    consumer = _reader(bootstrap, [topic], "metrics", security)
    closed: dict[tuple[str, str, int], tuple[int, int]] = {}
    updates = duplicates = 0
    deadline = time.monotonic() + timeout_s
    try:
        while sum(n for n, _ in closed.values()) < predictions and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=_POLL_S):
                if msg.error() is not None:
                    continue
                snap = wire.decode_metric_snapshot(msg.value() or b"")
                if getattr(snap, "segment", None) is not None:
                    continue
                if getattr(snap, "status", "CLOSED") != "CLOSED":
                    updates += 1
                    continue
                key = (snap.model, snap.version, snap.window_start)
                duplicates += key in closed  # a window must close once
                closed[key] = (snap.predictions, snap.labeled)
    finally:
        consumer.close()
    return {"count": len(closed), "predictions": sum(n for n, _ in closed.values()),
            "labeled": sum(labeled for _, labeled in closed.values()), "updates": updates,
            "duplicates": duplicates}


def _delete_topics(bootstrap: str, names: list[str], security: KafkaSecurity) -> None:
    admin = admin_client(bootstrap, security=security)  # held until the futures resolve
    try:
        futures = admin.delete_topics(names, operation_timeout=10)
        for future in futures.values():
            future.result(timeout=10)
    except Exception as exc:  # noqa: BLE001 - cleanup only: report and go on
        log.warning("could not delete the bench topics %s: %s", ", ".join(names), exc)


# ------------------------------------------------------------------------------------------------
# The whole run


def _check_sizes(events: int, models: int, least: int, mode: str) -> None:
    if events < least:
        raise ConfigError(f"--events must be at least {least}{mode}, got {events}")
    if models < 1 or models > events:
        raise ConfigError(f"--models must be between 1 and --events ({events}), got {models}")


def _worker_spec(settings: Settings, servers: str, models: int, messages: int | None, events: int,
                 profile: str | None) -> dict[str, Any]:
    """What the worker process needs (_worker_main): `messages` is None while still unknown (bench memory)."""
    return {"settings": settings, "bootstrap": servers, "models": models, "messages": messages, "events": events,
            "closers": models, "profile": profile,
            "log_level": "DEBUG" if logging.getLogger().isEnabledFor(logging.DEBUG) else "WARNING"}


@dataclass(frozen=True)
class _Run:
    prefix: str  # of the run's own topics
    topics: Topics
    worker_settings: Settings  # the run's topics, worker group and signing key
    servers: str
    broker: str  # "embedded", or the bootstrap servers given
    security: KafkaSecurity


@contextlib.contextmanager
def _fresh_run(settings: Settings, bootstrap: str | None) -> Iterator[_Run]:
    """A run's own topics, worker group and signing key, on the given broker or an embedded one;
    the topics are deleted afterwards from a broker that outlives the run."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topics = Topics(**{name: prefix + value for name, value in Topics().__dict__.items()})
    worker_settings = replace(settings, topics=topics, signing_key=_SIGNING_KEY, signing_key_file="", signing_key_id="",
                              verify_keys_dir="", verify_keys="", worker_group=prefix + "worker",
                              output_format="avro")  # the bench reads the outputs without a registry
    given = replace(settings, bootstrap_servers=bootstrap or settings.bootstrap_servers)
    embedded = configured_servers(given, embedded=True) is None  # the bench brings its own broker by design
    with bootstrap_servers(given, embedded=True) as servers:
        security = settings.kafka_security
        ensure_topics(servers, topics.all(), settings.partitions, security=security)
        try:
            yield _Run(prefix, topics, worker_settings, servers, "embedded" if embedded else servers, security)
        finally:
            if not embedded:
                _delete_topics(servers, [*topics.all(), topics.state], security)  # the worker created the state topic


def run_bench(settings: Settings, *, events: int = DEFAULT_EVENTS, models: int = 1, bootstrap: str | None = None,
              profile: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Produce, measure the floor, measure the worker, check the snapshots; the report as a dict."""
    _check_sizes(events, models, 1, "")
    timeout_s = timeout_s or (120 + events / 5_000)
    with _fresh_run(settings, bootstrap) as run:
        servers, topics = run.servers, run.topics
        log.info("producing %d predictions and their labels to %s*", events, run.prefix)
        produced = produce(servers, topics, events, models, security=run.security)
        log.info("produced in %.1f s; measuring the raw consumer", produced.seconds)
        floors = floor_runs(servers, topics, produced, timeout_s, security=run.security)
        messages = produced.prediction_messages + produced.label_messages
        log.info("floor: %.0f predictions/s (fastest of %d runs); starting the worker process",
                 fastest(floors).events_per_s, FLOOR_RUNS)
        spec = _worker_spec(run.worker_settings, servers, models, messages, events, profile)
        spawned = time.monotonic()
        with _worker_process(spec) as (process, conn):
            measured = _receive(process, conn, "measured", timeout_s)
            send_window_closers(servers, topics, produced.last_timestamp, security=run.security)
            done = _receive(process, conn, "done", 60)
            snapshots = read_snapshots(servers, topics.metrics, events, 60, security=run.security)
    return build_report(events, models, produced, floors, measured, spawned, snapshots, done, run.broker)


def run_memory_bench(settings: Settings, *, events: int = DEFAULT_MEMORY_EVENTS, models: int = 1,
                     bootstrap: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """The worker's RSS at N/10 and N predictions processed (rss_growth), over a long run.

    A separate mode, because producing is the slow part (a fraction of the worker's rate through
    the client: minutes for 10M): the worker starts first and consumes while the bench produces, so it
    processes at the producer's pace, and its seconds say nothing of its throughput (that is the
    default mode's events_per_s, measured over messages produced beforehand). The traffic, the
    topologies and the end-to-end check of the snapshots are the default mode's."""
    _check_sizes(events, models, 10, " for bench memory")
    timeout_s = timeout_s or (120 + events / 5_000)
    with _fresh_run(settings, bootstrap) as run:
        servers, topics = run.servers, run.topics
        spec = _worker_spec(run.worker_settings, servers, models, None, events, None)
        spawned = time.monotonic()
        with _worker_process(spec) as (process, conn):
            log.info("producing %d predictions and their labels to %s* while the worker consumes them",
                     events, run.prefix)
            produced = produce(servers, topics, events, models, security=run.security)
            if not process.is_alive():
                raise BenchError(f"the worker process exited with status {process.exitcode} while the bench "
                                 "produced; its log is on stderr")
            conn.send(("target", produced.prediction_messages + produced.label_messages))
            log.info("produced in %.1f s; waiting for the worker", produced.seconds)
            measured = _receive(process, conn, "measured", timeout_s)
            send_window_closers(servers, topics, produced.last_timestamp, security=run.security)
            done = _receive(process, conn, "done", 60)
            snapshots = read_snapshots(servers, topics.metrics, events, 120, security=run.security)
    memory = memory_report(events, measured)
    _warn_if_incomplete(measured["predictions"], measured["labels"], snapshots["predictions"], events, produced.labels)
    return {
        "rss_growth": memory["rss_growth"],
        **{k: v for k, v in memory.items() if k != "rss_growth"},
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "events": events,
        "labels": produced.labels,
        "models": models,
        "features": len(FEATURES),
        "worker": {
            # Paced by the producer: not the worker's throughput (see run_memory_bench).
            "seconds": round(measured["end_at"] - measured["first_message_at"], 2),
            "startup_s": round(measured["first_message_at"] - spawned, 2),
            "messages": measured["messages"],
            "predictions": measured["predictions"],
            "labels": measured["labels"],
            "dead_letters": measured["dead_letters"],
            "rss_first_message_mb": _round(measured["rss_first_message_mb"]),
            "cpu_s": _round(measured["cpu_s"]),
        },
        "produce": {
            "seconds": round(produced.seconds, 2),
            "prediction_messages": produced.prediction_messages,
            "label_messages": produced.label_messages,
        },
        "snapshots": {**snapshots, "window_closers": models,
                      "worker_predictions_with_closers": done["counters"].get("predictions", 0)},
        "broker": run.broker,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def build_report(events: int, models: int, produced: Produced, floors: Sequence[Leg], measured: Mapping[str, Any],
                 spawned: float, snapshots: Mapping[str, int], done: Mapping[str, Any], broker: str) -> dict[str, Any]:
    floor = fastest(floors)
    worker = Leg(measured["end_at"] - measured["first_message_at"], measured["messages"],
                 measured["predictions"], measured["labels"])
    # Rounded first, so that ratio == events_per_s / baseline_events_per_s holds for the printed values.
    events_per_s = round(events / worker.seconds, 1)
    baseline_events_per_s = round(events / floor.seconds, 1)
    ratio = events_per_s / baseline_events_per_s
    batches = measured["batches"]
    _warn_if_incomplete(worker.predictions, worker.labels, snapshots["predictions"], events, produced.labels)
    memory = memory_report(events, measured)
    return {
        "events_per_s": events_per_s,
        "baseline_events_per_s": baseline_events_per_s,
        "ratio": ratio,
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "rss_growth": memory["rss_growth"],
        "memory": memory,
        "startup_s": round(measured["first_message_at"] - spawned, 2),
        "events": events,
        "labels": produced.labels,
        "models": models,
        "features": len(FEATURES),
        "measured": MEASURED,
        "worker": {
            "seconds": round(worker.seconds, 3),
            "messages": worker.messages,
            "predictions": worker.predictions,
            "labels": worker.labels,
            "dead_letters": measured["dead_letters"],
            "commands": measured["commands"],
            "batches": len(batches),
            "messages_per_batch_mean": round(sum(batches) / len(batches), 1),
            "messages_per_batch_max": max(batches),
            "records_per_s": round((worker.predictions + worker.labels) / worker.seconds, 1),
            "rss_first_message_mb": _round(measured["rss_first_message_mb"]),
            "rss_end_mb": _round(measured["rss_end_mb"]),
            # CPU seconds of the worker process (all its threads) in the measured interval: near
            # `seconds` means it computes all along, well below means it waits (for fetches).
            "cpu_s": _round(measured["cpu_s"]),
        },
        "baseline": {
            "seconds": round(floor.seconds, 3),
            "messages": floor.messages,
            "predictions": floor.predictions,
            "labels": floor.labels,
            "records_per_s": round((floor.predictions + floor.labels) / floor.seconds, 1),
            "runs_seconds": [round(leg.seconds, 3) for leg in floors],  # the fastest one counts
        },
        "produce": {
            "seconds": round(produced.seconds, 2),
            "prediction_messages": produced.prediction_messages,
            "label_messages": produced.label_messages,
            "predictions_per_message": round(produced.predictions / produced.prediction_messages, 1),
            "labels_per_message": round(produced.labels / max(1, produced.label_messages), 1),
        },
        "snapshots": {**snapshots, "window_closers": models,
                      "worker_predictions_with_closers": done["counters"].get("predictions", 0)},
        "targets": {"events_per_s": TARGET_EVENTS_PER_S, "ratio": TARGET_RATIO,
                    "met": events_per_s >= TARGET_EVENTS_PER_S and ratio >= TARGET_RATIO},
        "broker": broker,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


MEMORY_MEASURED = ("the worker process's RSS (/proc/self/statm) at the end of the first batch that took its processed "
                   "predictions to a tenth of the run's or more, and at the end of the batch that completed the run; "
                   "rss_growth = (rss_at_end_mb - rss_at_tenth_mb) / rss_at_tenth_mb")


def memory_report(events: int, measured: Mapping[str, Any]) -> dict[str, Any]:
    """rss_growth and what it rests on, from the worker's RSS at N/10 and N predictions processed."""
    # Rounded first (to 10 kB), so that rss_growth holds for the printed values.
    tenth, end = (None if v is None else round(v,
                                               2) for v in (measured.get("rss_tenth_mb"), measured.get("rss_end_mb")))
    growth = None if not tenth or end is None else round((end - tenth) / tenth, 4)
    steady = steady_state_events(events)
    at_tenth = measured.get("tenth_predictions")
    return {
        "rss_growth": growth,
        "rss_at_tenth_mb": tenth,
        "rss_at_end_mb": end,
        "events_at_tenth": at_tenth,
        "events_at_end": measured["predictions"],
        # Event time has to pass every holding horizon before the state stops growing: a growth
        # measured from before this many events includes the warm-up, not only what leaks.
        "steady_state_events": steady,
        "warm_up_included": at_tenth is None or at_tenth < steady,
        "measured": MEMORY_MEASURED,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def format_report(r: Mapping[str, Any]) -> str:
    """The report as a small table and a few lines, for people."""
    w, b, s, produced = r["worker"], r["baseline"], r["snapshots"], r["produce"]
    rows = [
        ("leg", "seconds", "messages", "predictions/s", "records/s"),
        ("worker (Faust)", f"{w['seconds']:.2f}", f"{w['messages']:,}", f"{r['events_per_s']:,.0f}",
         f"{w['records_per_s']:,.0f}"),
        ("floor (raw consumer)", f"{b['seconds']:.2f}", f"{b['messages']:,}", f"{r['baseline_events_per_s']:,.0f}",
         f"{b['records_per_s']:,.0f}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  " + "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in rows]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return "\n".join([
        (f"mle-stream bench: {r['events']:,} predictions ({r['features']} numeric features each) and "
         f"{r['labels']:,} labels, {r['models']} model(s), broker {r['broker']}"),
        *table,
        f"  ratio worker / floor: {r['ratio']:.2f}",
        f"floor: the fastest of {len(b['runs_seconds'])} runs ({', '.join(f'{x:.2f}' for x in b['runs_seconds'])} s)",
        (f"worker: peak RSS {r['peak_rss_mb']:.0f} MB; {w['batches']} batches of {w['messages_per_batch_mean']:.0f} "
         f"messages on average (max {w['messages_per_batch_max']}); {produced['predictions_per_message']:.0f} "
         f"predictions and {produced['labels_per_message']:.0f} labels per message"),
        f"worker start-up and group join (not measured): {r['startup_s']:.1f} s",
        _memory_line(r["memory"]),
        (f"snapshots: {s['count']} closed windows (per version), accounting for {s['predictions']:,} of "
         f"{r['events']:,} predictions and {s['labeled']:,} labels; {s['updates']} open/revised updates"),
        (f"targets: >= {r['targets']['events_per_s']:,} predictions/s "
         f"{met(r['events_per_s'] >= r['targets']['events_per_s'])}, ratio >= {r['targets']['ratio']} "
         f"{met(r['ratio'] >= r['targets']['ratio'])}"),
        f"measured: {r['measured']}",
    ])


def _memory_line(m: Mapping[str, Any]) -> str:
    growth = "n/a" if m["rss_growth"] is None else f"{m['rss_growth']:+.1%}"
    warm = " (includes the state's warm-up)" if m["warm_up_included"] else ""
    return (f"worker RSS: {m['rss_at_tenth_mb']} MB at {m['events_at_tenth']:,} predictions, {m['rss_at_end_mb']} MB "
            f"at {m['events_at_end']:,}: rss_growth {growth}{warm}; steady state from ~{m['steady_state_events']:,}")


def format_memory_report(r: Mapping[str, Any]) -> str:
    """bench memory's report, for people."""
    w, s = r["worker"], r["snapshots"]
    bound = r["rss_growth"] is not None and abs(r["rss_growth"]) <= MAX_RSS_GROWTH
    return "\n".join([
        (f"mle-stream bench memory: {r['events']:,} predictions and {r['labels']:,} labels, {r['models']} model(s), "
         f"broker {r['broker']}; produced in {r['produce']['seconds']:.0f} s while the worker consumed "
         f"(its {w['seconds']:.0f} s are the producer's pace, not its throughput)"),
        _memory_line(r),
        f"peak RSS {r['peak_rss_mb']:.0f} MB",
        (f"snapshots: {s['count']} closed windows (per version), accounting for {s['predictions']:,} of "
         f"{r['events']:,} predictions"),
        f"target: |rss_growth| <= {MAX_RSS_GROWTH:.0%} {'met' if bound else 'NOT met'}",
        f"measured: {r['measured']}",
    ])
