"""Shared fixtures. The broker is Apache Kafka through testcontainers when a Docker engine answers,
and the embedded Tansu broker otherwise (the development machines here have no Docker engine)."""

from __future__ import annotations

import logging
import uuid
from typing import Iterator

import pytest

from mle_stream.broker import EmbeddedBroker

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
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so tests sharing the session broker never read each other's records."""
    return f"t{uuid.uuid4().hex[:8]}."
