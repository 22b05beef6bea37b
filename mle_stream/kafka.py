"""The one place that knows how mle-stream talks to Kafka with confluent-kafka: client settings,
topic creation, and the embedded broker when one is asked for.

Every helper takes the connection's `security` (mle_stream.kafka_security; Settings.kafka_security):
a producer, consumer or admin client built here speaks TLS / SASL exactly when the settings say so."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from mle_stream.broker import EmbeddedBroker
from mle_stream.config import Settings
from mle_stream.errors import BrokerError, ConfigError
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.redact import redact_servers
from mle_stream.retry import Backoff, RetriesExhausted, retrying

log = logging.getLogger(__name__)

# Consumer groups join slowly on the embedded broker with librdkafka's 45 s default; 6 s is also a
# sane value on Apache Kafka.
SESSION_TIMEOUT_MS = 6000


def producer_config(bootstrap: str, *, security: KafkaSecurity = PLAINTEXT, **extra: object) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap, **security.librdkafka_config(), "linger.ms": 5, "compression.type": "none",
            **extra}


def consumer_config(bootstrap: str, group_id: str, *, security: KafkaSecurity = PLAINTEXT,
                    **extra: object) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        **security.librdkafka_config(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 1000,
        **extra,
    }


def admin_client(bootstrap: str, *, security: KafkaSecurity = PLAINTEXT, **extra: Any) -> AdminClient:
    # Any: librdkafka takes callbacks (error_cb) among its settings, which confluent-kafka's stubs omit.
    return AdminClient({"bootstrap.servers": bootstrap, **security.librdkafka_config(), **extra})


# The worker's checkpoints (mle_stream.stream.checkpoints): compaction keeps the latest value of each
# key, i.e. the latest complete checkpoint of each partition. A restarting worker reads whatever is
# not compacted yet, and Kafka never compacts the active segment (1 GB or 7 days by default):
# segments of at most 64 MB or 10 minutes keep that read to a few times the live checkpoints.
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": str(64 * 1024**2), "segment.ms": str(600_000)}


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout_s: float = 15.0,
                  config: Mapping[str, str] | None = None, *, security: KafkaSecurity = PLAINTEXT) -> None:
    """Create the topics that do not exist yet, with this topic `config` (existing ones are left as they are)."""
    admin = admin_client(bootstrap, security=security)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {redact_servers(bootstrap)!r} to list topics: {exc}") from exc
    missing = [n for n in dict.fromkeys(names) if n not in existing]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1,
                                            config=dict(config or {}))
                                   for n in missing])
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s with %d partitions", name, partitions)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name!r} on {redact_servers(bootstrap)!r}: {exc}") from exc


def ensure_state_topic(bootstrap: str, name: str, partitions: int, timeout_s: float = 15.0, *,
                       security: KafkaSecurity = PLAINTEXT) -> None:
    """Create the compacted state topic if it is missing; warn when an existing one is not compacted
    (the delete policy would, after retention.ms, delete the only copy of a checkpoint)."""
    ensure_topics(bootstrap, [name], partitions, timeout_s, config=STATE_TOPIC_CONFIG, security=security)
    admin = admin_client(bootstrap, security=security)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
        config = next(iter(described.values())).result(timeout=timeout_s)
    except KafkaException as exc:
        log.warning("cannot read the configuration of state topic %s (%s): make sure it is compacted", name, exc)
        return
    policy = config["cleanup.policy"].value if "cleanup.policy" in config else None
    if policy is None or "compact" not in policy:
        log.warning("state topic %s has cleanup.policy=%s, not compact: Kafka will delete checkpoints after "
                    "retention.ms and a restart then re-reads the inputs from their beginning. Set "
                    "cleanup.policy=compact on it.", name, policy)


# How long a worker or an actuator waits for an unreachable broker at start: 1 s, doubling up to
# 30 s, ~3.5 min in all (a broker restarting, a cluster still coming up) before it gives up.
BROKER_WAIT = Backoff(attempts=12, base_delay_s=1.0, max_delay_s=30.0)


def wait_for_broker(bootstrap: str, backoff: Backoff = BROKER_WAIT, sleep: Callable[[float], None] = time.sleep, *,
                    security: KafkaSecurity = PLAINTEXT) -> None:
    """Return once Kafka at `bootstrap` answers a metadata request; retry with `backoff` meanwhile,
    saying so in the log, then raise BrokerError saying how long it tried. A failed TLS handshake or
    SASL authentication is raised at once: retrying cannot fix a certificate or a password."""
    refused: list[str] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in (KafkaError._SSL, KafkaError._AUTHENTICATION):
            refused.append(error.str())

    # librdkafka would print every refused connection on stderr: the log lines below say it once per attempt.
    admin = admin_client(bootstrap, security=security, log_level=0, error_cb=on_error)

    def probe() -> None:
        try:
            admin.list_topics(timeout=5)
        except KafkaException:
            admin.poll(0)  # serves on_error
            if refused:
                raise BrokerError(f"Kafka at {redact_servers(bootstrap)!r} refused this client's security settings "
                                  f"({security.describe()}): {refused[-1]}; check the MLE_KAFKA_* settings") from None
            raise

    def transient(exc: Exception) -> str | None:
        return str(exc) if isinstance(exc, KafkaException) else None

    def on_retry(attempt: int, why: str, delay: float) -> None:
        log.warning("Kafka at %s does not answer (attempt %d of %d: %s); trying again in %.0f s",
                    redact_servers(bootstrap), attempt, backoff.attempts, why, delay)

    try:
        retrying(probe, backoff, transient, on_retry, sleep)
    except RetriesExhausted as exc:
        raise BrokerError(f"cannot reach Kafka at {redact_servers(bootstrap)!r}: {exc}; check MLE_BOOTSTRAP_SERVERS "
                          "and that the brokers are up") from exc.__cause__


def partition_counts(bootstrap: str, names: Iterable[str], timeout_s: float = 15.0, *,
                     security: KafkaSecurity = PLAINTEXT) -> dict[str, int]:
    """Partitions per topic, for the topics that exist."""
    admin = admin_client(bootstrap, security=security)
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {redact_servers(bootstrap)!r} to list topics: {exc}") from exc
    return {n: len(topics[n].partitions) for n in names if n in topics}


# MLE_BOOTSTRAP_SERVERS=embedded asks for the embedded broker, as --embedded-broker does.
EMBEDDED = "embedded"


def configured_servers(settings: Settings, *, embedded: bool = False) -> str | None:
    """The brokers to connect to, or None for "start the embedded broker": asked for by `embedded`
    (a command's --embedded-broker; demo and bench, which bring their own) or MLE_BOOTSTRAP_SERVERS=embedded.
    Anything else without MLE_BOOTSTRAP_SERVERS is a ConfigError: a component that quietly ran on a
    private, empty broker would look healthy and evaluate nothing."""
    servers = settings.bootstrap_servers.strip()
    if servers and servers.lower() != EMBEDDED:
        return servers
    if not servers and not embedded:
        raise ConfigError("MLE_BOOTSTRAP_SERVERS is not set: set it to the Kafka brokers (host:port,...), or, for a "
                          "private in-memory broker that lives as long as this process, pass --embedded-broker or "
                          f"set MLE_BOOTSTRAP_SERVERS={EMBEDDED}")
    if settings.kafka_security != PLAINTEXT:
        # The plaintext embedded broker would quietly drop the TLS / SASL asked for.
        raise ConfigError(f"Kafka security is configured ({settings.kafka_security.describe()}) but the embedded "
                          "broker only speaks PLAINTEXT: set MLE_BOOTSTRAP_SERVERS to the brokers, or unset the "
                          "MLE_KAFKA_* variables")
    return None


@contextlib.contextmanager
def bootstrap_servers(settings: Settings, *, embedded: bool = False) -> Iterator[str]:
    """The configured brokers, or an embedded one started for the duration of the block when asked
    for (see `configured_servers`)."""
    servers = configured_servers(settings, embedded=embedded)
    if servers is not None:
        yield servers
        return
    with EmbeddedBroker() as broker:
        log.info("started the embedded broker on %s (memory only: gone when this process ends)",
                 broker.bootstrap_servers)
        yield broker.bootstrap_servers
