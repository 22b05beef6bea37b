"""The actuator's Kafka loop: commands in, rollout events out.

Each command is applied, its rollout event is published and flushed, and only then is the offset
committed: a crash in between re-delivers the command, which the Actuator recognises by its id and
skips (or finishes). A command that FAILED on transient errors is not committed but applied again
after a wait (see run_actuator_loop). A message that is not a command goes to the dead-letter
topic. Once its event is out, a notifier (notify.py) may tell people; it only queues, so it never
holds the loop up.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from mle_stream import wire
from mle_stream.actuator.notify import Notifier
from mle_stream.actuator.ports import RoutingBackend
from mle_stream.actuator.service import Actuator, Outcome
from mle_stream.config import Topics
from mle_stream.core.commands import AppliedMarker
from mle_stream.core.events import Command
from mle_stream.errors import ActuationError, InvalidEvent
from mle_stream.health import ActuatorHealth
from mle_stream.kafka import consumer_config, producer_config
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.redact import redact_servers
from mle_stream.retry import Backoff
from mle_stream.telemetry import ActuatorMetrics
from mle_stream.wire import ConfluentOutputs, WriterSchemas, bounded_text, dead_letter_entry

log = logging.getLogger(__name__)


class RoutingByModel:
    """One RoutingBackend per model (each topology names its own route), behind the same interface."""

    def __init__(self, backends: dict[str, RoutingBackend]) -> None:
        self._backends = backends

    def _for(self, model: str) -> RoutingBackend:
        try:
            return self._backends[model]
        except KeyError:
            known = ", ".join(sorted(self._backends)) or "none"
            raise ActuationError(f"no routing configured for model {model!r} (topologies loaded for: "
                                 f"{known})") from None

    def get_weights(self, model: str) -> dict[str, int]:
        return self._for(model).get_weights(model)

    def set_weights(self, model: str, weights: dict[str, int], *, command_id: str, reason: str,
                    issued_at: int = 0) -> str:
        return self._for(model).set_weights(model, weights, command_id=command_id, reason=reason, issued_at=issued_at)

    def last_applied(self, model: str) -> AppliedMarker | None:
        return self._for(model).last_applied(model)


# A command that FAILED on transient errors (a service down) is delivered again after this wait,
# doubling while it keeps failing: the adapters' own retries (~1 min) have already run each time.
# Only its delays are used: redelivery never gives up.
REDELIVER = Backoff(attempts=1, base_delay_s=5.0, max_delay_s=120.0)


def run_actuator_loop(actuator: Actuator, bootstrap: str, topics: Topics, stop: threading.Event,
                      group_id: str = "mle-stream-actuator", notifier: Notifier | None = None,
                      redeliver: Backoff = REDELIVER, metrics: ActuatorMetrics | None = None,
                      health: ActuatorHealth | None = None, security: KafkaSecurity = PLAINTEXT,
                      registry: WriterSchemas | None = None, framing: ConfluentOutputs | None = None) -> None:
    """Apply commands one at a time, in order. A command that FAILED on transient errors is not
    committed: it is applied again after a wait (`redeliver`) until it goes through, holding the
    commands behind it, so an outage of the registry or the API server delays commands but never
    loses one (a rollback the worker emits once must not be dropped). Its FAILED event and alert go
    out once per outage, not once per attempt. `metrics` (telemetry.py) counts commands and outcomes;
    `health` (mle_stream.health) is told of every round, every command and how the loop ended.
    `registry` gives the writer schemas of Confluent-framed commands; `framing` writes the rollout
    events so (MLE_OUTPUT_FORMAT=confluent)."""
    metrics = metrics if metrics is not None else ActuatorMetrics()
    health = health if health is not None else ActuatorHealth()
    consumer = Consumer(consumer_config(bootstrap, group_id, security=security))
    producer = Producer(producer_config(bootstrap, security=security))
    consumer.subscribe([topics.commands], on_assign=lambda _, tps: health.assigned([tp.partition for tp in tps]),
                       on_revoke=lambda *_: health.revoked())
    health.loop_started()
    ended: BaseException | None = None
    log.info("actuator reading %s on %s (%s)", topics.commands, redact_servers(bootstrap), security.describe())
    failing: str | None = None  # the command being delivered again ...
    failures = 0  # ... and how often in a row it failed
    try:
        while not stop.is_set():
            health.loop_beat()
            # One at a time: a command that must be delivered again is sought back to, and nothing
            # fetched after it may have been taken out of the consumer's hands meanwhile.
            for message in consumer.consume(num_messages=1, timeout=0.5):
                if message.error():
                    log.warning("consumer error on %s: %s", topics.commands, message.error())
                    continue
                outcome = _handle(actuator, producer, topics, message, notifier, metrics, announce=failing is None,
                                  registry=registry, framing=framing)
                if outcome is not None and outcome.retry:
                    metrics.redeliveries.labels(outcome.event.action).inc()
                    command_id = outcome.event.command_id
                    failures = failures + 1 if failing == command_id else 1
                    failing = command_id
                    delay = redeliver.delay(failures)
                    log.error("command %s failed on transient errors (%d time(s) in a row): applying it again "
                              "in %.1f s, holding the commands after it", command_id, failures, delay)
                    topic, partition, offset = message.topic(), message.partition(), message.offset()
                    assert topic is not None and partition is not None and offset is not None  # a fetched message
                    consumer.seek(TopicPartition(topic, partition, offset))
                    stop.wait(delay)
                    continue
                failing, failures = None, 0
                consumer.commit(message=message, asynchronous=False)
                health.command_processed()
    except BaseException as exc:
        ended = exc
        raise
    finally:
        # The process may outlive its loop (a non-daemon thread of a library): the probes must say so.
        health.loop_stopped(ended)
        consumer.close()
        producer.flush(10)


def _handle(actuator: Actuator, producer: Producer, topics: Topics, message: Message,
            notifier: Notifier | None, metrics: ActuatorMetrics, announce: bool = True,
            registry: WriterSchemas | None = None, framing: ConfluentOutputs | None = None) -> Outcome | None:
    """Apply one message; None when it is not a command (dead-lettered). `announce`: publish and
    notify a FAILED event that will be retried (False while the same command keeps failing)."""
    payload = message.value() or b""
    try:
        command = wire.decode_command(payload, registry)
    except InvalidEvent as exc:
        log.error("not a command at %s[%s]@%s: %s", message.topic(), message.partition(), message.offset(),
                  bounded_text(str(exc), 500))
        _dead_letter(producer, topics, message, str(exc), exc.field, metrics, "undecodable")
        return None
    try:
        return _apply(actuator, producer, topics, command, notifier, metrics, announce, framing)
    except ActuationError:
        raise  # the broker did not take the event: the command must be delivered again
    except Exception as exc:  # a bug met by this command: report it and go on with the next
        log.exception("failed on the command at %s[%s]@%s", message.topic(), message.partition(), message.offset())
        _dead_letter(producer, topics, message, f"the actuator failed on this command ({type(exc).__name__}: {exc}); "
                     "this is a bug in mle-stream, its traceback is in the actuator's log", "", metrics,
                     "internal_error")
        return None


def _dead_letter(producer: Producer, topics: Topics, message: Message, reason: str, field: str,
                 metrics: ActuatorMetrics, reason_class: str) -> None:
    producer.produce(topics.dead_letter, key=(message.topic() or "").encode(), value=dead_letter_entry(
        reason=reason, field=field, source_topic=message.topic() or "", partition=message.partition() or 0,
        offset=message.offset() or 0, record_index=None, at=int(time.time() * 1000), payload=message.value() or b""))
    if producer.flush(10) != 0:
        raise ActuationError(f"could not dead-letter the message at {message.topic()}[{message.partition()}]@"
                             f"{message.offset()} within 10 s")
    metrics.dead_letters.labels(message.topic() or "", reason_class).inc()


def _apply(actuator: Actuator, producer: Producer, topics: Topics, command: Command, notifier: Notifier | None,
           metrics: ActuatorMetrics, announce: bool, framing: ConfluentOutputs | None = None) -> Outcome:
    """Apply a decoded command and publish its rollout event (see _handle)."""
    kind = command.kind.value
    metrics.commands.labels(kind).inc()
    started = time.perf_counter()
    outcome = actuator.apply(command)
    metrics.apply_seconds.labels(kind).observe(time.perf_counter() - started)
    event = outcome.event
    metrics.outcomes.labels(kind, event.status.value).inc()
    level = logging.INFO if event.status.value in ("APPLIED", "SKIPPED_DUPLICATE", "DRY_RUN") else logging.ERROR
    log.log(level, "%s %s %s (command %s): %s", event.status.value, event.action, event.model,
            event.command_id, event.details,
            extra={"model": event.model, "version": command.candidate_version, "window_start": command.window_start,
                   "window_end": command.window_end, "command_id": event.command_id, "kind": event.action,
                   "status": event.status.value})
    if outcome.retry and not announce:
        return outcome
    value = wire.encode_rollout_event(event)
    if framing is not None:
        value = framing.frame(topics.rollout_events, value)
    producer.produce(topics.rollout_events, key=command.model.encode(), value=value)
    if producer.flush(10) != 0:
        # The event must be out before the offset is committed, or downstream never hears of it.
        raise ActuationError(f"could not publish the rollout event for command {command.command_id} within 10 s")
    if notifier is not None:
        try:
            notifier.notify(event, command)
        except Exception:  # telling people is best effort: it must never stop the actuator
            log.exception("notifier failed on command %s", command.command_id)
    return outcome
