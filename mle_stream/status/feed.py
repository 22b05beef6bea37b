"""Reads the worker's and the actuator's output topics into a StatusBoard.

The feed is a plain confluent-kafka consumer that joins no consumer group and commits nothing: it
assigns itself every partition of mle.metrics, mle.drift, mle.commands and mle.rollout-events and
reads them **from the beginning** (or, with `since_ms`, only messages whose timestamp is at or
after that time: the read starts at offsets_for_times' offset, and older messages are skipped as
well, since the embedded broker answers offsets_for_times with offset 0 whatever the time), so
every reader sees the whole history the topics still hold, and any number of status pages and
`mle-stream status` runs can read side by side without disturbing each other or the actuator. The
board keeps bounded series, so a long history costs read time, not memory.

What the board leaves off (forged commands, records of models no topology names) and what cannot
be decoded is counted through `on_ignored(topic, reason, n)` (the worker's Prometheus metrics) and
skipped, not dead-lettered: the feed is one of any number of readers that commit nothing, so a
dead letter from each would repeat every message once per reader and per restart; the worker and the
actuator, which consume the commands topic, dead-letter or reject what they cannot verify.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.errors import BrokerError, InvalidEvent
from mle_stream.kafka import consumer_config
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.status.model import StatusBoard, StatusEvent
from mle_stream.wire import WriterSchemas

log = logging.getLogger(__name__)

UNDECODABLE = "undecodable"


def _decode_with(decode: Callable[[bytes, WriterSchemas | None], StatusEvent], registry: WriterSchemas | None,
                payload: bytes) -> StatusEvent:
    return decode(payload, registry)


class StatusFeed:
    """Feeds `board` (under `lock`) from the four output topics; see the module docstring."""

    def __init__(self, bootstrap: str, topics: Topics, board: StatusBoard, lock: threading.Lock | None = None,
                 since_ms: int | None = None, on_ignored: Callable[[str, str, int], None] | None = None,
                 security: KafkaSecurity = PLAINTEXT, registry: WriterSchemas | None = None) -> None:
        """`registry`: the writer schemas of outputs in Confluent framing (MLE_OUTPUT_FORMAT=confluent)."""
        self.board = board
        self._on_ignored = on_ignored or (lambda topic, reason, n: None)
        self.lock = lock or threading.Lock()
        decoders: dict[str, Callable[[bytes, WriterSchemas | None], StatusEvent]] = {
            topics.metrics: wire.decode_metric_snapshot, topics.drift: wire.decode_drift_table,
            topics.commands: wire.decode_command, topics.rollout_events: wire.decode_rollout_event}
        self._decoders: dict[str, Callable[[bytes], StatusEvent]] = {
            topic: functools.partial(_decode_with, decode, registry) for topic, decode in decoders.items()}
        # A group id is required by librdkafka even for assigned partitions; nothing is committed.
        self._consumer = Consumer(consumer_config(bootstrap, f"mle-stream-status-{uuid.uuid4().hex[:8]}",
                                                  security=security, **{"enable.partition.eof": False}))
        self._since_ms = since_ms
        self._assign(since_ms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0

    def _assign(self, since_ms: int | None) -> None:
        try:
            metadata = self._consumer.list_topics(timeout=15)
        except KafkaException as exc:
            raise BrokerError(f"cannot list the topics to read the status from: {exc}") from exc
        partitions = [TopicPartition(name, p, OFFSET_BEGINNING if since_ms is None else since_ms)
                      for name in self._decoders if name in metadata.topics
                      for p in sorted(metadata.topics[name].partitions)]
        missing = [name for name in self._decoders if name not in metadata.topics]
        if missing:
            log.warning("status: topics %s do not exist (yet): not read", ", ".join(missing))
        if since_ms is not None and partitions:
            partitions = self._consumer.offsets_for_times(partitions, timeout=15)
            # -1: nothing at or after that time in this partition, so read only what comes next.
            partitions = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                          for tp in partitions]
        self._consumer.assign(partitions)

    def poll(self, timeout_s: float = 0.5) -> int:
        """Read what is there (waiting up to `timeout_s`) into the board; returns messages read."""
        messages = self._consumer.consume(num_messages=500, timeout=timeout_s)
        decoded: list[tuple[int, str, StatusEvent]] = []
        unreadable: dict[str, list[str]] = {}  # topic -> where and why, logged once per batch
        for message in messages:
            if message.error() is not None:
                log.warning("status: consumer error: %s", message.error())
                continue
            topic = message.topic() or ""
            if self._since_ms is not None and message.timestamp()[1] < self._since_ms:
                continue  # the embedded broker answers offsets_for_times with offset 0: filter here too
            try:
                decoded.append((message.timestamp()[1], topic, self._decoders[topic](message.value() or b"")))
            except (InvalidEvent, KeyError) as exc:
                self.skipped += 1
                unreadable.setdefault(topic, []).append(f"{topic}[{message.partition()}]@{message.offset()}: {exc}")
        for topic, problems in unreadable.items():
            # One line per topic and batch: anyone can write garbage to a topic, and a line per
            # message would flood the log as well.
            self._on_ignored(topic, UNDECODABLE, len(problems))
            log.warning("status: skipped %d unreadable message(s), the first at %s", len(problems), problems[0])
        # In time order: a command before the rollout events reporting it, so fewer have to wait for it.
        decoded.sort(key=lambda item: item[0])
        ignored: list[tuple[str, str, int]] = []
        with self.lock:
            for _, topic, event in decoded:
                before = self.board.ignored
                self.board.apply(event)
                # By difference, not apply's result: a rollout event may push waiting ones out as well.
                ignored += [(topic, reason, n - before.get(reason, 0)) for reason, n in self.board.ignored.items()
                            if n != before.get(reason, 0)]
        for topic, reason, n in ignored:
            self._on_ignored(topic, reason, n)
        return len(messages)

    def read_to_end(self, idle_s: float = 1.0, timeout_s: float = 60.0) -> int:
        """Read until no message came for `idle_s` (or `timeout_s` passed); returns messages read.

        Not up to the high watermark: the embedded broker reports it wrong (the first offset of the
        last record batch + 1), so the last batch of a topic could be missed.
        A pause in the stream is the end here; a topic still being written to gets read on.
        """
        total, deadline = 0, time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            n = self.poll(min(0.25, idle_s))
            total += n
            now = time.monotonic()
            if n:
                idle_since = now
            elif now - idle_since >= idle_s:
                break
        return total

    def start(self) -> StatusFeed:
        """Read on in a daemon thread until `close()`."""
        self._thread = threading.Thread(target=self._run, name="mle-stream-status-feed", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll(0.5)
            except Exception:  # the page must keep serving what it has; say why it stopped updating
                log.exception("status: reading the topics failed; retrying in 5 s")
                self._stop.wait(5)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._consumer.close()
