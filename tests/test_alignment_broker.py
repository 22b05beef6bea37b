"""Pausing predictions partitions through aiokafka on Faust's consumer thread (stream/app.py,
`_pause`) over a real broker: it must neither lose nor repeat a record. Faust's own
pause_partitions would (docs/catch-up.md); this test also fails if the Faust or aiokafka internals
the worker reaches for change. And reading the consumer's offsets survives a rebalance that
revokes a partition while its position is awaited."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from confluent_kafka import Producer

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Prediction
from mle_stream.core.topology import load_topologies
from mle_stream.kafka import ensure_topics, producer_config
from mle_stream.replay import replay
from mle_stream.stream.app import read_offsets
from worker_process import MODELS, TOPOLOGY, Worker, same, traffic

pytestmark = pytest.mark.broker

HERE = Path(__file__).resolve().parent
WINDOWS = 40


def test_pausing_and_resuming_at_every_round_loses_and_repeats_no_record(tmp_path: Path, kafka_bootstrap: str,
                                                                         topics: Topics) -> None:
    topologies = tmp_path / "topologies"
    topologies.mkdir()
    for model in MODELS:
        (topologies / f"{model}.yaml").write_text(TOPOLOGY.format(model=model))
    rng = random.Random(18)
    base = (int(time.time() * 1000) - 120_000) // 1000 * 1000
    preds, labels = traffic(base, WINDOWS, rng)
    producer = Producer(producer_config(kafka_bootstrap))
    # Many small messages, so that the worker's small batches (tests/flipping_worker.py) make many rounds.
    for window_preds, window_labels in zip(preds, labels):
        key = window_preds[0].model.encode()
        for i in range(0, len(window_preds), 4):
            producer.produce(topics.predictions, key=key, value=wire.encode_predictions(window_preds[i:i + 4]))
        for i in range(0, len(window_labels), 5):
            producer.produce(topics.labels, key=key, value=wire.encode_labels(window_labels[i:i + 5]))
    closing = [Prediction(prediction_id=f"{m}-closing", model=m, version="1", timestamp=base + (WINDOWS + 2) * 1000,
                          score=0.5) for m in MODELS]
    for p in closing:  # moves each model's predictions clock past its last window
        producer.produce(topics.predictions, key=p.model.encode(), value=wire.encode_prediction(p))
    producer.flush(10)

    all_preds = [p for w in preds for p in w] + closing
    all_labels = [lab for w in labels for lab in w]
    replayed = replay(all_preds, all_labels, load_topologies([topologies]))
    want = {(w.model, w.version, w.segment, w.window_start): w for w in replayed.windows
            if w.window_start < base + WINDOWS * 1000}

    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "MLE_SIGNING_KEY": "alignment-test-key-0123456789abcdef", "MLE_STATUS_PORT": "0", "MLE_METRICS_PORT": "0",
           "MLE_WORKER_GROUP": f"worker-{uuid.uuid4().hex[:8]}"}
    worker = Worker(tmp_path, env, topologies, entry=[str(HERE / "flipping_worker.py")])
    worker.start()
    try:
        def closed(ms: list) -> set[tuple]:
            snaps = (wire.decode_metric_snapshot(m.value()) for m in ms)
            return {(s.model, s.version, s.segment, s.window_start) for s in snaps if s.status == "CLOSED"}

        out = read_until(kafka_bootstrap, [topics.metrics], lambda ms: set(want) <= closed(ms), timeout_s=90)
        assert set(want) <= closed(out), f"windows never closed: {sorted(set(want) - closed(out))[:5]}"
        log = worker.text()
    finally:
        worker.stop()
    last = {}
    for m in out:
        s = wire.decode_metric_snapshot(m.value())
        last[(s.model, s.version, s.segment, s.window_start)] = s
    wrong = [key for key, w in want.items() if not same(last[key], w)]
    assert not wrong, f"{len(wrong)} windows differ from the replay, the first: {last[wrong[0]]} vs {want[wrong[0]]}"
    assert "never delivered" not in log and "pause check failed" not in log
    # Each round flips every held predictions partition: many pauses and resumes happened.
    assert log.count("paused ") >= 20 and log.count("resumed ") >= 20, log[-3000:]


def test_a_partition_revoked_while_its_position_is_awaited_is_left_out(kafka_bootstrap: str,
                                                                        topic_prefix: str) -> None:
    # Under load a rebalance can land while the worker awaits a partition's position; aiokafka's
    # highwater then asserts the partition is assigned, and that assertion, raised in the alignment
    # timer, stopped the worker mid-rebalance.
    topic = topic_prefix + "offsets"
    ensure_topics(kafka_bootstrap, [topic], partitions=2)
    first, second = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def read_while_revoking() -> dict:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([first, second])
            # Runs once read_offsets awaits the first partition's position: a fresh assignment has none yet.
            asyncio.get_running_loop().call_soon(consumer.assign, [second])
            return await read_offsets(consumer, [(topic, 0), (topic, 1)])
        finally:
            await consumer.stop()

    offsets = asyncio.run(read_while_revoking())
    assert list(offsets) == [(topic, 1)], offsets
