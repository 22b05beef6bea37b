"""The actuator's Kafka loop: commands in, rollout events out.

Each command is applied, its rollout event is published and flushed, and only then is the offset
committed: a crash in between re-delivers the command, which the Actuator recognises by its id and
skips (or finishes). A message that is not a command goes to the dead-letter topic. Once its event
is out, a notifier (notify.py) may tell people; it only queues, so it never holds the loop up.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, Message, Producer

from mle_stream import codec
from mle_stream.actuator.notify import Notifier
from mle_stream.actuator.ports import RoutingBackend
from mle_stream.actuator.service import Actuator
from mle_stream.config import Topics
from mle_stream.dead_letter import dead_letter_entry
from mle_stream.errors import ActuationError, InvalidEvent
from mle_stream.kafka import consumer_config, producer_config

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
            raise ActuationError(f"no routing configured for model {model!r} (topologies loaded for: {known})") from None

    def get_weights(self, model: str) -> dict[str, int]:
        return self._for(model).get_weights(model)

    def set_weights(self, model: str, weights: dict[str, int], *, command_id: str, reason: str) -> str:
        return self._for(model).set_weights(model, weights, command_id=command_id, reason=reason)

    def last_applied_command(self, model: str) -> str | None:
        return self._for(model).last_applied_command(model)


def run_actuator_loop(actuator: Actuator, bootstrap: str, topics: Topics, stop: threading.Event,
                      group_id: str = "mle-stream-actuator", notifier: Notifier | None = None) -> None:
    consumer = Consumer(consumer_config(bootstrap, group_id))
    producer = Producer(producer_config(bootstrap))
    consumer.subscribe([topics.commands])
    log.info("actuator reading %s on %s", topics.commands, bootstrap)
    try:
        while not stop.is_set():
            for message in consumer.consume(num_messages=50, timeout=0.5):
                if message.error():
                    log.warning("consumer error on %s: %s", topics.commands, message.error())
                    continue
                _handle(actuator, producer, topics, message, notifier)
                consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()
        producer.flush(10)


def _handle(actuator: Actuator, producer: Producer, topics: Topics, message: Message,
            notifier: Notifier | None) -> None:
    payload = message.value() or b""
    try:
        command = codec.decode_command(payload)
    except InvalidEvent as exc:
        log.error("not a command at %s[%s]@%s: %s", message.topic(), message.partition(), message.offset(), exc)
        producer.produce(topics.dead_letter, key=(message.topic() or "").encode(), value=dead_letter_entry(
            reason=str(exc), field=exc.field, source_topic=message.topic() or "", partition=message.partition() or 0,
            offset=message.offset() or 0, record_index=None, at=int(time.time() * 1000), payload=payload))
        producer.flush(10)
        return
    event = actuator.handle(command)
    level = logging.INFO if event.status.value in ("APPLIED", "SKIPPED_DUPLICATE", "DRY_RUN") else logging.ERROR
    log.log(level, "%s %s %s (command %s): %s", event.status.value, event.action, event.model,
            event.command_id, event.details)
    producer.produce(topics.rollout_events, key=command.model.encode(), value=codec.encode_rollout_event(event))
    if producer.flush(10) != 0:
        # The event must be out before the offset is committed, or downstream never hears of it.
        raise ActuationError(f"could not publish the rollout event for command {command.command_id} within 10 s")
    if notifier is not None:
        try:
            notifier.notify(event, command)
        except Exception:  # telling people is best effort: it must never stop the actuator
            log.exception("notifier failed on command %s", command.command_id)
