"""The Faust worker: one agent reads predictions and labels (keyed by model, so a model's records
of both topics land in the same partition number and Faust assigns them to the same worker), hands
batches of raw messages to the StreamProcessor and publishes what it returns."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import faust

from mle_stream.config import Settings
from mle_stream.core.topology import Topology
from mle_stream.stream.processor import Incoming, StreamProcessor

log = logging.getLogger(__name__)

# Faust pays ~150 µs per Kafka message here (../shared/DESIGN.md): take many at a time.
BATCH_MESSAGES = 1000
BATCH_WITHIN_S = 0.2


def build_app(settings: Settings, bootstrap: str, topologies: Mapping[str, Topology]) -> tuple[faust.App, StreamProcessor]:
    processor = StreamProcessor(topologies, settings.topics, settings.require_signing_key())
    app = faust.App(
        settings.worker_group,
        broker=f"kafka://{bootstrap}",
        broker_session_timeout=6,  # the embedded broker's group joins stall with the default
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        store="memory://",
        web_enabled=False,
    )
    topics = settings.topics
    source = app.topic(topics.predictions, topics.labels, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    sinks = {name: app.topic(name, key_serializer="raw", value_serializer="raw")
             for name in (topics.metrics, topics.commands, topics.dead_letter)}

    @app.agent(source, name="evaluate")
    async def evaluate(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MESSAGES, within=BATCH_WITHIN_S):
            batch = [Incoming(e.message.topic, e.message.partition, e.message.offset, e.message.value)
                     for e in events]
            for out in processor.process(batch):
                await sinks[out.topic].send(key=out.key, value=out.value)

    return app, processor


def run_worker(settings: Settings, bootstrap: str, topologies: Mapping[str, Topology], loglevel: str = "info") -> None:
    app, _ = build_app(settings, bootstrap, topologies)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False, quiet=True)
    worker.execute_from_commandline()
