"""Shared fixtures. The broker is Apache Kafka through testcontainers when a Docker engine answers,
and the embedded Tansu broker otherwise (the development machines here have no Docker engine)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Message

from mle_stream.broker import EmbeddedBroker
from mle_stream.config import Topics
from mle_stream.kafka import ensure_topics

if TYPE_CHECKING:
    from mle_stream.actuator.gitops import GitOpsRouting
    from mle_stream.mlflow_registry import MlflowRegistry

log = logging.getLogger(__name__)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no client library, no socket, no engine: all mean "no Docker here"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        # Confluent's build of Apache Kafka: the image testcontainers' Kafka module is written for
        # (it drives the image's own start scripts), in KRaft mode.
        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so tests sharing the session broker never read each other's records."""
    return f"t{uuid.uuid4().hex[:8]}."


def read_until(bootstrap: str, topics: list[str], done: Callable[[list[Message]], bool],
               timeout_s: float = 60.0) -> list[Message]:
    """Consume `topics` from the beginning until `done(messages)` holds or the time is up.

    Never trusts the high watermark: the embedded broker reports it wrong (the first offset of the
    last record batch + 1).
    """
    from confluent_kafka import Consumer

    from mle_stream.kafka import consumer_config

    consumer = Consumer(consumer_config(bootstrap, f"test-reader-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe(topics)
    seen: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(seen):
            seen.extend(m for m in consumer.consume(num_messages=500, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return seen


@pytest.fixture
def topics(kafka_bootstrap: str, topic_prefix: str) -> Topics:
    """A fresh set of the six mle-stream topics on the session broker."""
    names = Topics(**{name: topic_prefix + default for name, default in Topics().__dict__.items()})
    ensure_topics(kafka_bootstrap, names.all(), partitions=2)
    return names


def topic_env(topics: Topics) -> dict[str, str]:
    """The environment that points an mle-stream process at these topics."""
    return {f"MLE_TOPIC_{name.upper()}": value for name, value in topics.__dict__.items()}


def model_with_route(tracking_uri: str, tmp_path: Path, model: str,
                     namespace: str = "default") -> tuple[GitOpsRouting, MlflowRegistry]:
    """`model` at v1 (champion, 90% of traffic) and v2 (challenger, 10%), registered from runs in
    the registry at `tracking_uri`, its route committed to a GitOps repository at tmp_path/gitops."""
    from mle_stream.actuator.gitops import GitOpsRouting
    from mle_stream.mlflow_registry import MlflowRegistry, register_demo_versions

    assert register_demo_versions(tracking_uri, model, 2, tmp_path / "artifacts") == ["1", "2"]
    registry = MlflowRegistry(tracking_uri)
    registry.set_alias(model, "champion", "1")
    registry.set_alias(model, "challenger", "2")
    routing = GitOpsRouting(tmp_path / "gitops", namespace=namespace)
    routing.init_route(model, {"1": 90, "2": 10})
    return routing, registry
