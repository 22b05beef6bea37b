"""The one place that knows how mle-stream talks to Kafka with confluent-kafka: client settings,
topic creation, and the embedded-broker fallback."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from mle_stream.broker import EmbeddedBroker
from mle_stream.config import Settings
from mle_stream.errors import BrokerError

log = logging.getLogger(__name__)

# Consumer groups join slowly on the embedded broker with librdkafka's 45 s default
# (../shared/DESIGN.md); 6 s is also a sane value on Apache Kafka.
SESSION_TIMEOUT_MS = 6000


def producer_config(bootstrap: str, **extra: object) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "none", **extra}


def consumer_config(bootstrap: str, group_id: str, **extra: object) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 1000,
        **extra,
    }


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout_s: float = 15.0) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap!r} to list topics: {exc}") from exc
    missing = [n for n in dict.fromkeys(names) if n not in existing]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing])
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s with %d partitions", name, partitions)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name!r} on {bootstrap!r}: {exc}") from exc


@contextlib.contextmanager
def bootstrap_servers(settings: Settings) -> Iterator[str]:
    """The configured brokers, or an embedded one started for the duration of the block."""
    if settings.bootstrap_servers:
        yield settings.bootstrap_servers
        return
    with EmbeddedBroker() as broker:
        log.info("MLE_BOOTSTRAP_SERVERS is empty: started the embedded broker on %s", broker.bootstrap_servers)
        yield broker.bootstrap_servers
