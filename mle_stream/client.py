"""EvaluationClient: how serving pods and labelers publish predictions and labels to mle-stream.

A serving pod must never wait for Kafka in its request path, and the stream is cheapest when many
records travel in one Kafka message. So `log_prediction` / `log_label` only check the record and
append it to a bounded in-memory queue; a background thread groups records per model (the model
name is the message key, so a model's predictions and labels land in one partition of each topic),
encodes each group as one PredictionBatch / LabelBatch (mle_stream.wire) and produces it with
confluent-kafka. When the queue is full the record is dropped, counted and `False` is returned:
losing a few evaluation records is better than slowing down or failing the request.

Usage in a serving pod::

    import time
    from mle_stream.client import EvaluationClient

    evaluation = EvaluationClient("kafka:9092")  # one per process, shared by all request threads

    def predict(request):
        score = model.predict_proba(request.features)
        evaluation.log_prediction({
            "prediction_id": request.id, "model": "fraud", "version": MODEL_VERSION,
            "timestamp": int(time.time() * 1000), "score": score, "features": request.features,
        })
        return score

    # at shutdown (or use `with EvaluationClient(...) as evaluation:`)
    evaluation.close()

A labeler calls `log_label({"prediction_id": ..., "model": "fraud", "timestamp": ..., "label": 1})`.
Records still queued when the process exits without close() are lost.

`log_*` never raise for a bad record: they refuse exactly the records the worker would dead-letter
whatever the model's topology (wire.check_record, the worker's own checks), return False, count
them (`stats.dropped_invalid`) and log the first at once, then one line per 10 s with a count.
Unknown fields are ignored, as the worker ignores them. To tell a caller why a record is refused
(an HTTP endpoint), run `wire.prediction_from_dict` / `wire.label_from_dict` and
`wire.check_record` first: they raise InvalidEvent naming the field.

Forking (gunicorn, uWSGI, multiprocessing) is safe: a client made before the fork starts over empty
in the child, with its own producer and sender thread, at its first use there. What the parent had
queued is the parent's to send.

TLS and SASL come from the pod's environment, as for the worker and the actuator (MLE_KAFKA_*,
docs/kafka-security.md), or from `security=KafkaSecurity.from_properties({...})`.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from mle_stream import wire
from mle_stream.config import Topics, kafka_security_from_env
from mle_stream.core.events import Label, Prediction
from mle_stream.errors import ConfigError, InvalidEvent
from mle_stream.kafka import producer_config as base_producer_config
from mle_stream.kafka_security import KafkaSecurity

log = logging.getLogger(__name__)

_LOG_INTERVAL_S = 10.0  # drops and Kafka errors are logged at most this often
_PRODUCE_ATTEMPTS = 5  # librdkafka's queue full (BufferError): serve callbacks and retry this often
_IDLE_TICK_S = 0.05  # how often an idle sender serves delivery reports
_FLUSH_TICK_S = 0.005

Record = Prediction | Label


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters of one EvaluationClient, in records unless said otherwise.

    queued: accepted and not yet acknowledged by Kafka (in the queue, in a batch or in flight).
    sent_records / sent_messages: acknowledged by Kafka; the ratio is the mean batch size.
    dropped_queue_full: refused by log_* because max_queue records were queued (or after close).
    dropped_delivery_failed: accepted but lost: Kafka reported a failure, librdkafka's own queue
    stayed full, the record could not be encoded, or close() gave up waiting for it.
    """

    queued: int
    sent_records: int
    sent_messages: int
    dropped_queue_full: int
    dropped_delivery_failed: int
    dropped_invalid: int = 0  # refused by log_*: the worker would dead-letter them (wire.check_record)


class EvaluationClient:
    """Publishes predictions and labels in per-model batches from a background thread.

    bootstrap_servers: the Kafka brokers.
    topics: topic names (default: Topics.from_env(), so MLE_TOPIC_* apply).
    batch_size: records per Kafka message at most; a batch is sent as soon as it is full...
    linger_ms: ...or when its oldest record has waited this long.
    max_queue: records held in memory at most, counting those sent but not yet acknowledged, so
        memory stays bounded while the brokers are unreachable.
    security: TLS and SASL (mle_stream.kafka_security); None (the default) reads them from the
        environment as the other components do: MLE_KAFKA_PROPERTIES_FILE and the MLE_KAFKA_<PROPERTY>
        variables, PLAINTEXT when none is set (docs/kafka-security.md). ConfigError if they are wrong.
    producer_config: extra librdkafka settings, merged over mle_stream.kafka.producer_config and the
        security settings.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topics: Topics | None = None,
        batch_size: int = 500,
        linger_ms: int = 200,
        max_queue: int = 100_000,
        producer_config: dict[str, Any] | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.topics = topics or Topics.from_env()
        self.batch_size = batch_size
        self.linger_ms = linger_ms
        self.max_queue = max_queue
        security = security if security is not None else kafka_security_from_env()
        self._config = base_producer_config(bootstrap_servers, security=security, **(producer_config or {}))
        self._producer = self._new_producer()
        self._init_state()
        self._closed = False
        self._start_sender()
        _CLIENTS.add(self)

    def _new_producer(self) -> Producer:
        # librdkafka's own log lines go to this module's logger, throttled (served by poll), not to
        # stderr. The error callback holds the client weakly: a producer -> client -> producer cycle
        # would keep the producer and its broker connections alive until a garbage collection.
        self._librdkafka_log = _ThrottledLog()
        config = {"error_cb": _weak_error_callback(weakref.ref(self)), "logger": self._librdkafka_log, **self._config}
        try:
            return Producer(config)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka producer settings for {self._config['bootstrap.servers']!r}: "
                              f"{exc}") from exc

    def _init_state(self) -> None:
        """Locks, queue and counters as they are before the first record."""
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when nothing is pending
        self._queue: collections.deque[Record] = collections.deque()
        self._pending = 0
        self._sent_records = 0
        self._sent_messages = 0
        self._dropped_queue_full = 0
        self._dropped_delivery_failed = 0
        self._dropped_invalid = 0
        self._flush_waiters = 0
        self._last_failure = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reported_drops = (0, 0)
        self._next_drop_log = 0.0
        self._invalid_log = _Throttle()
        self._error_log = _Throttle()
        self._thread: threading.Thread | None = None

    def _start_sender(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mle-stream-evaluation-client", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        """Only the forking thread survives a fork: the parent's sender thread and librdkafka's
        threads do not exist in the child, and a lock they held stays held. Start over empty, with
        the sender started at the first record (_enqueue): a child that never logs, such as a
        subprocess being set up, starts no threads."""
        # Destroying the parent's producer here would wait for its threads, which are not there.
        _ABANDONED_AFTER_FORK.append(self._producer)
        self._init_state()

    # -- the caller's side: cheap, never blocks on Kafka -----------------------------------------

    def log_prediction(self, p: Prediction | Mapping[str, Any]) -> bool:
        """Queue one prediction; False if it was dropped: the worker would dead-letter it
        (stats.dropped_invalid, logged) or the queue is full (stats.dropped_queue_full). Unknown
        fields of a mapping are ignored, as the worker ignores them. Never raises."""
        try:
            if not isinstance(p, Prediction):
                p = wire.prediction_from_dict(p)
            wire.check_record(p)
        except Exception as exc:  # noqa: BLE001 - never raise in the request path (see _refuse)
            return self._refuse("prediction", p, exc)
        return self._enqueue(p)

    def log_label(self, label: Label | Mapping[str, Any]) -> bool:
        """Queue one label; False if it was dropped, as log_prediction."""
        try:
            if not isinstance(label, Label):
                label = wire.label_from_dict(label)
            wire.check_record(label)
        except Exception as exc:  # noqa: BLE001 - never raise in the request path (see _refuse)
            return self._refuse("label", label, exc)
        return self._enqueue(label)

    def _refuse(self, noun: str, record: object, exc: Exception) -> bool:
        """Count and log a refused record. InvalidEvent is the contract's refusal; anything else
        comes from input no contract check foresaw (an int too long to print, a mapping that
        raises), which must not raise in the request path either."""
        with self._lock:
            self._dropped_invalid += 1
        held = self._invalid_log.admit()
        if held is not None:
            if isinstance(exc, InvalidEvent):
                why = f"field {exc.field!r}: {exc.reason}" if exc.field else exc.reason
            else:
                why = f"unreadable: {type(exc).__name__}: {_short(exc)}"
            pid = record.get("prediction_id") if isinstance(record, Mapping) else getattr(record, "prediction_id", None)
            log.warning("evaluation client: refused a %s (prediction_id %s) that the worker would dead-letter: %s%s",
                        noun, _short(pid), why, f" ({held} more refused since the last report)" if held else "")
        return False

    def _enqueue(self, record: Record) -> bool:
        with self._lock:
            if self._closed or self._pending >= self.max_queue:
                self._dropped_queue_full += 1
                return False
            if self._thread is None:  # the first record in a forked child
                self._producer = self._new_producer()
                self._start_sender()
            self._pending += 1
            self._queue.append(record)
            if len(self._queue) == self.batch_size:  # only on the crossing: Event.set is not free
                self._wake.set()
            return True

    @property
    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                queued=self._pending,
                sent_records=self._sent_records,
                sent_messages=self._sent_messages,
                dropped_queue_full=self._dropped_queue_full,
                dropped_delivery_failed=self._dropped_delivery_failed,
                dropped_invalid=self._dropped_invalid,
            )

    def flush(self, timeout_s: float = 10) -> int:
        """Send everything queued now and wait for Kafka's acknowledgements; returns the records
        still not delivered when `timeout_s` ran out (0 when all arrived or failed for good)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._flush_waiters += 1
        self._wake.set()
        try:
            with self._lock:
                while self._pending and self._thread is not None and self._thread.is_alive():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._settled.wait(min(remaining, 0.1))
                return self._pending
        finally:
            with self._lock:
                self._flush_waiters -= 1

    def close(self, timeout_s: float = 10) -> None:
        """Deliver what is queued (waiting up to `timeout_s`), then stop the background thread.

        Records Kafka has not acknowledged by then are given up and counted as
        dropped_delivery_failed. Calling close() again does nothing; log_* after close returns False.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        undelivered = self.flush(timeout_s)
        if self._thread is None:  # a forked child that never sent: nothing to stop
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if undelivered or self._pending:
            # Purged messages come back through the delivery callback as failures, so they are counted.
            self._producer.purge()
            self._producer.flush(1)
            with self._lock:
                self._give_up(self._pending, "close() timed out before Kafka acknowledged them")
        self._log_drops(force=True)
        self._invalid_log.report_held("refused records")
        self._librdkafka_log.report_held()
        self._error_log.report_held("Kafka errors")

    def __enter__(self) -> EvaluationClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the background thread -------------------------------------------------------------------

    def _run(self) -> None:
        batches: dict[tuple[bool, str], list[Record]] = {}
        started: dict[tuple[bool, str], float] = {}
        linger_s = self.linger_ms / 1000
        while True:
            try:
                stopping = self._stop.is_set()
                with self._lock:
                    taken, self._queue = self._queue, collections.deque()
                    urgent = stopping or self._flush_waiters > 0
                now = time.monotonic()
                for record in taken:
                    key = (isinstance(record, Label), record.model)
                    batch = batches.get(key)
                    if batch is None:
                        batch = batches[key] = []
                        started[key] = now
                    batch.append(record)
                    if len(batch) >= self.batch_size:
                        self._send(key, batch)
                        del batches[key], started[key]
                for key in [k for k, t in started.items() if urgent or now - t >= linger_s]:
                    self._send(key, batches.pop(key))
                    del started[key]
                self._producer.poll(0)
                self._log_drops()
                if stopping and not batches:
                    with self._lock:
                        if not self._queue:
                            return
                    continue
                if len(self._queue) >= self.batch_size:
                    continue
                if urgent:
                    timeout = _FLUSH_TICK_S
                elif started:
                    timeout = min(_IDLE_TICK_S, max(0.001, min(started.values()) + linger_s - time.monotonic()))
                else:
                    timeout = _IDLE_TICK_S
                self._wake.wait(timeout)
                self._wake.clear()
            except Exception:  # noqa: BLE001 - the thread must outlive any bug; every record is counted
                log.exception("evaluation client: unexpected error in the sender thread; continuing")
                time.sleep(_IDLE_TICK_S)

    def _send(self, key: tuple[bool, str], records: Sequence[Record]) -> None:
        is_label, model = key
        topic = self.topics.labels if is_label else self.topics.predictions
        encode: Callable[[Sequence[Any]], bytes] = wire.encode_labels if is_label else wire.encode_predictions
        try:
            try:
                payload = encode(records)
            except Exception as exc:  # noqa: BLE001 - find the record(s) the encoder refuses, keep the rest
                records = self._drop_unencodable(records, encode, exc)
                if not records:
                    return
                payload = encode(records)
            self._produce(topic, model, records, payload, encode)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave records pending forever
            log.exception("evaluation client: could not send %d records to %r", len(records), topic)
            with self._lock:
                self._give_up(len(records), f"unexpected error while sending: {exc!r}")

    def _drop_unencodable(self, records: Sequence[Record], encode: Callable[[Sequence[Any]], bytes],
                          exc: Exception) -> list[Record]:
        good: list[Record] = []
        for record in records:
            try:
                encode([record])
                good.append(record)
            except Exception as one:  # noqa: BLE001 - reported below with the record's id
                log.error("evaluation client: dropped %s %r of model %r: cannot encode it: %s",
                          type(record).__name__, record.prediction_id, record.model, one)
        with self._lock:
            self._give_up(len(records) - len(good), f"cannot encode: {exc}")
        return good

    def _produce(self, topic: str, model: str, records: Sequence[Record], payload: bytes,
                 encode: Callable[[Sequence[Any]], bytes]) -> None:
        on_delivery = functools.partial(self._delivered, len(records))
        for _ in range(_PRODUCE_ATTEMPTS):
            try:
                self._producer.produce(topic, value=payload, key=model.encode(), on_delivery=on_delivery)
                return
            except BufferError:  # librdkafka's own queue is full: let it send, then retry
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE and len(records) > 1:
                    half = len(records) // 2  # a batch of big records: send it as two messages
                    for part in (records[:half], records[half:]):
                        self._produce(topic, model, part, encode(part), encode)
                    return
                with self._lock:
                    self._give_up(len(records), f"produce to {topic!r} failed: {exc}")
                return
        with self._lock:
            self._give_up(len(records), f"librdkafka's queue stayed full after {_PRODUCE_ATTEMPTS} attempts")

    def _delivered(self, count: int, error: KafkaError | None, _message: object) -> None:
        with self._lock:
            if error is not None:
                self._give_up(count, f"delivery failed: {error}")
            else:
                self._pending -= count
                self._sent_records += count
                self._sent_messages += 1
                if not self._pending:
                    self._settled.notify_all()

    def _give_up(self, count: int, why: str) -> None:
        """Count records as lost (the caller holds the lock)."""
        if count <= 0:
            return
        self._pending -= count
        self._dropped_delivery_failed += count
        self._last_failure = why
        if not self._pending:
            self._settled.notify_all()

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_drop_log:
            return
        with self._lock:
            full, failed, why = self._dropped_queue_full, self._dropped_delivery_failed, self._last_failure
        new_full, new_failed = full - self._reported_drops[0], failed - self._reported_drops[1]
        if not new_full and not new_failed:
            return
        self._reported_drops = (full, failed)
        self._next_drop_log = now + _LOG_INTERVAL_S
        log.warning(
            "evaluation client dropped %d records since the last report: %d because %d were already "
            "queued (max_queue; is Kafka reachable and fast enough?), %d not delivered (last reason: %s)",
            new_full + new_failed, new_full, self.max_queue, new_failed, why or "-",
        )

    def _on_kafka_error(self, error: KafkaError) -> None:
        held = self._error_log.admit()
        if held is not None:
            log.warning("evaluation client: Kafka error (librdkafka keeps retrying): %s%s", error,
                        f" ({held} more since the last report)" if held else "")


class _Throttle:
    """One log line per interval: the first event at once, later ones held back and counted until
    the interval has passed. A broker outage makes librdkafka report every reconnect attempt."""

    def __init__(self, interval_s: float = _LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._held = 0

    def admit(self) -> int | None:
        """None: hold this event back; else log it, with the number held back since the last one."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            held, self._held, self._next = self._held, 0, now + self.interval_s
            return held

    def report_held(self, what: str) -> None:
        with self._lock:
            held, self._held = self._held, 0
        if held:
            log.warning("evaluation client: %d more %s in the last %.0f s were not logged", held, what,
                        self.interval_s)


class _ThrottledLog:
    """librdkafka's log lines into this module's logger (confluent-kafka calls `log(level, msg,
    *args)`): below WARNING as they are, the rest throttled per librdkafka facility (FAIL, ...)."""

    def __init__(self) -> None:
        self._throttles: dict[str, _Throttle] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        if level < logging.WARNING:
            log.log(level, msg, *args)
            return
        facility = str(args[0]) if args else ""
        throttle = self._throttles.setdefault(facility, _Throttle())
        held = throttle.admit()
        if held is not None:
            log.log(level, msg + (f" ({held} more like it since the last report)" if held else ""), *args)

    def report_held(self) -> None:
        for facility, throttle in list(self._throttles.items()):
            throttle.report_held(f"librdkafka {facility} lines")


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - e.g. an int beyond Python's 4300-digit str limit
        return f"<{type(value).__name__} that cannot be shown: {type(exc).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


_CLIENTS: weakref.WeakSet[EvaluationClient] = weakref.WeakSet()
# The producers of clients made before a fork, held forever in the child (see _after_fork_in_child).
_ABANDONED_AFTER_FORK: list[Producer] = []


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _weak_error_callback(client: weakref.ref[EvaluationClient]) -> Callable[[KafkaError], None]:
    def on_error(error: KafkaError) -> None:
        target = client()
        if target is not None:
            target._on_kafka_error(error)

    return on_error
