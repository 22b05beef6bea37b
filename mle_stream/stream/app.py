"""The Faust worker: one agent reads predictions and labels (keyed by model, so a model's records
of both topics land in the same partition number and Faust assigns them to the same worker), hands
batches of raw messages to the StreamProcessor and publishes what it returns."""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import faust

from mle_stream.config import Settings
from mle_stream.core.topology import Topology
from mle_stream.stream.processor import Incoming, StreamProcessor

log = logging.getLogger(__name__)

# Faust pays ~150 µs per Kafka message here (../shared/DESIGN.md): take many at a time.
BATCH_MESSAGES = 1000
BATCH_WITHIN_S = 0.2


def build_app(settings: Settings, bootstrap: str, topologies: Mapping[str, Topology],
              observer: Callable[[int, int], None] | None = None) -> tuple[faust.App, StreamProcessor]:
    """The Faust app and its processor; `observer(messages, published)`, if given, is called after
    each batch is processed and its outputs handed to Faust (mle-stream bench times the worker with it)."""
    processor = StreamProcessor(topologies, settings.topics, settings.require_signing_key())
    app = faust.App(
        settings.worker_group,
        broker=f"kafka://{bootstrap}",
        broker_session_timeout=6,  # the embedded broker's group joins stall with the default
        # At the 1 MB default a fetch holds ~7 batched prediction messages per partition and the
        # agent idles between fetches; 16 MB measured 1.4-1.7x the events/s (mle-stream bench).
        consumer_max_fetch_size=16 * 1024**2,
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
            outs = processor.process(batch)
            for out in outs:
                await sinks[out.topic].send(key=out.key, value=out.value)
            if observer is not None:
                observer(len(batch), len(outs))

    return app, processor


def run_worker(settings: Settings, bootstrap: str, topologies: Mapping[str, Topology], loglevel: str = "info") -> None:
    app, _ = build_app(settings, bootstrap, topologies)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False, quiet=True)
    worker.execute_from_commandline()
