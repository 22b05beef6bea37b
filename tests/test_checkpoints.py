"""Checkpoints without Faust: the bytes, the offset bookkeeping around the processor, the schedule,
and the store on a real broker."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
import zlib

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Label, MetricSnapshot, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.errors import BrokerError
from mle_stream.kafka import ensure_state_topic, producer_config
from mle_stream.stream.checkpoints import (
    CHUNK_BYTES,
    CheckpointedProcessor,
    CheckpointError,
    Checkpoints,
    CheckpointStore,
    PartitionCheckpoint,
    WriteReport,
    chunk_key,
    decode_checkpoint,
    encode_checkpoint,
    manifest_key,
)
from mle_stream.stream.metrics import WorkerMetrics
from mle_stream.stream.processor import Incoming, StreamProcessor

TEST_SIGNER = Signer("test", b"checkpoint-tests-signing-key-32b")

TOPICS = Topics()
NOW = 10**12
TOPOLOGY = """\
model: {model}
task: binary
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: 1s, grace: 0s, retention: 1h, updates_every: 0s}}
segments: {{dimensions: [country]}}
rollback: {{max_increase: 0.1, consecutive_windows: 2, min_samples: 10}}
"""
MODELS = {m: parse_topology(TOPOLOGY.format(model=m)) for m in ("fraud", "spam")}


def tracked() -> CheckpointedProcessor:
    return CheckpointedProcessor(StreamProcessor(MODELS, TOPICS, TEST_SIGNER, clock=lambda: NOW))


def traffic(model: str, partition: int, windows: int = 6, seed: int = 1) -> list[tuple[Incoming, bytes]]:
    """Predictions and labels of `model` in partition `partition`, a message per half window, the
    labels of a window one message after its predictions (so some windows close before them)."""
    rng = random.Random(seed)
    out: list[tuple[Incoming, bytes]] = []
    offsets = {TOPICS.predictions: 0, TOPICS.labels: 0, TOPICS.commands: 0}

    def message(topic: str, value: bytes) -> None:
        out.append((Incoming(topic, partition, offsets[topic], value), model.encode()))
        offsets[topic] += 1

    pending: list[Label] = []
    for w in range(windows * 2):
        preds = [Prediction(prediction_id=f"{model}-{w}-{i}", model=model, version=rng.choice("12"),
                            timestamp=NOW - 100_000 + w * 500 + i, score=rng.random(),
                            segment={"country": rng.choice(["DE", "FR"])}) for i in range(30)]
        message(TOPICS.predictions, wire.encode_predictions(preds))
        if pending:
            message(TOPICS.labels, wire.encode_labels(pending))
        pending = [Label(prediction_id=p.prediction_id, model=model, timestamp=p.timestamp + 400,
                         label=rng.random() < 0.7) for p in preds if rng.random() < 0.9]
    message(TOPICS.labels, wire.encode_labels(pending))
    return out


def feed(t: CheckpointedProcessor, messages: list[tuple[Incoming, bytes]]) -> list:
    return t.process([m for m, _ in messages], [k for _, k in messages])


def final_windows(t: CheckpointedProcessor) -> dict[str, list[tuple]]:
    """Every window of every model as the end of a replay reports it (closes them: call once)."""
    def key(w: MetricSnapshot) -> tuple:
        return (w.version, w.segment or "", w.window_start, w.predictions, w.labeled,
                json.dumps(w.metrics, sort_keys=True))

    return {m: sorted(key(w) for w in ev.close_all(NOW).windows) for m, ev in t.processor.evaluators.items()}


def roundtrip(cp: PartitionCheckpoint) -> PartitionCheckpoint:
    return decode_checkpoint(encode_checkpoint(cp))


# -- the bytes ------------------------------------------------------------------------------------


def test_a_checkpoint_survives_its_encoding() -> None:
    cp = PartitionCheckpoint(3, {TOPICS.predictions: 17, TOPICS.labels: 4, TOPICS.commands: 2},
                             {"fraud": {"x": [1, 2.5, None, "ü"]}})
    again = roundtrip(cp)
    assert again == cp
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        decode_checkpoint(encode_checkpoint(cp)[:-5])
    with pytest.raises(CheckpointError, match="format 99"):
        decode_checkpoint(zlib.compress(json.dumps({"format": 99}).encode()))


# -- the processor with offsets --------------------------------------------------------------------


def test_restored_state_plus_the_rest_of_the_input_equals_the_uninterrupted_run() -> None:
    messages = traffic("fraud", 0) + traffic("spam", 1, seed=2)
    messages.sort(key=lambda m: (m[0].offset, m[0].partition, m[0].topic))  # interleave like a fetch would
    for cut in (1, len(messages) // 3, len(messages) - 2):
        original = tracked()
        for k in (0, 1):
            original.assign(k, None)
        feed(original, messages[:cut])
        checkpoints = {k: roundtrip(original.snapshot(k)) for k in (0, 1)}
        assert set(checkpoints[0].models) <= {"fraud"} and set(checkpoints[1].models) <= {"spam"}
        feed(original, messages[cut:])  # the run that was never interrupted

        restored = tracked()
        for k in (0, 1):
            restored.assign(k, checkpoints[k])
        # Redelivery from earlier offsets (e.g. Faust's committed ones) changes nothing: the part
        # the checkpoints include is dropped. Bit for bit: even float sums add up in the same order.
        feed(restored, messages)
        assert restored.dropped["already_included"] == cut
        assert final_windows(restored) == final_windows(original), cut


def test_models_are_attributed_to_the_partition_of_their_messages() -> None:
    t = tracked()
    t.assign(0, None)
    t.assign(1, None)
    feed(t, traffic("fraud", 0)[:2] + traffic("spam", 1)[:2])
    assert set(t.snapshot(0).models) == {"fraud"} and set(t.snapshot(1).models) == {"spam"}
    assert t.snapshot(0).offsets == {TOPICS.predictions: 2, TOPICS.labels: 0, TOPICS.commands: 0}
    assert t.dirty == {0, 1}
    t.mark_clean(0)
    assert t.dirty == {1}


def test_messages_of_partitions_not_held_are_dropped() -> None:
    t = tracked()
    t.assign(0, None)
    assert feed(t, traffic("spam", 1)[:3]) == []
    assert t.dropped["not_held"] == 3 and t.dirty == set()


def test_release_forgets_the_partition_and_empties_its_models() -> None:
    t = tracked()
    t.assign(0, None)
    feed(t, traffic("fraud", 0)[:3])
    assert t.processor.evaluators["fraud"].join.pending[0] > 0
    t.release(0)
    assert t.held == set() and t.processor.evaluators["fraud"].join.pending == (0, 0)
    # A later assignment without a checkpoint starts from offset 0 again.
    t.assign(0, None)
    assert t.positions(0) == {(TOPICS.predictions, 0): 0, (TOPICS.labels, 0): 0, (TOPICS.commands, 0): 0}


def test_a_checkpoint_that_cannot_be_restored_changes_nothing() -> None:
    t = tracked()
    t.assign(0, None)
    feed(t, traffic("fraud", 0)[:3])
    good = t.snapshot(0)
    broken = PartitionCheckpoint(0, good.offsets, {"fraud": {"kind": "something else"}})
    fresh = tracked()
    with pytest.raises(CheckpointError, match="model 'fraud' in the checkpoint of partition 0"):
        fresh.assign(0, broken)
    assert fresh.held == set()
    other_topics = PartitionCheckpoint(0, {"elsewhere": 3}, {})
    with pytest.raises(CheckpointError, match="offsets of"):
        fresh.assign(0, other_topics)


def test_a_model_without_a_topology_now_is_dropped_from_the_restore(caplog: pytest.LogCaptureFixture) -> None:
    t = tracked()
    t.assign(0, None)
    feed(t, traffic("fraud", 0)[:3])
    cp = t.snapshot(0)
    only_spam = CheckpointedProcessor(StreamProcessor({"spam": MODELS["spam"]}, TOPICS, TEST_SIGNER, clock=lambda: NOW))
    with caplog.at_level(logging.WARNING):
        only_spam.assign(0, cp)
    assert "model 'fraud', which has no topology now" in caplog.text
    assert only_spam.positions(0)[(TOPICS.predictions, 0)] == cp.offsets[TOPICS.predictions]


# -- the schedule ---------------------------------------------------------------------------------


class MemoryStore:
    """CheckpointStore's interface, in memory."""

    def __init__(self) -> None:
        self.saved: dict[int, bytes] = {}
        self.reads: list[set[int]] = []

    def write(self, cp: PartitionCheckpoint) -> WriteReport:
        self.saved[cp.partition] = encode_checkpoint(cp)
        return WriteReport(cp.partition, len(cp.models), len(self.saved[cp.partition]), 1, 0.0, 0.0)

    def read(self, partitions):
        self.reads.append(set(partitions))
        return {k: decode_checkpoint(self.saved[k]) if k in self.saved else None for k in partitions}

    def close(self) -> None:
        pass


def test_the_schedule_writes_dirty_partitions_after_flushing_outputs_and_restores_new_ones() -> None:
    async def scenario() -> None:
        clock = [0.0]
        events: list[str] = []

        async def flush() -> None:
            events.append("flush")

        store = MemoryStore()
        cps = Checkpoints(tracked(), store, interval_s=10, flush_outputs=flush, clock=lambda: clock[0])
        positions = await cps.assigned({0, 1})
        assert positions == {(topic, p): 0 for topic in (TOPICS.predictions, TOPICS.labels, TOPICS.commands)
                             for p in (0, 1)}
        messages = traffic("fraud", 0)
        async with cps.batch() as t:
            feed(t, messages[:4])
        await cps.maybe_write()
        assert store.saved == {}  # not yet due
        clock[0] = 11
        await cps.maybe_write()
        assert list(store.saved) == [0] and events == ["flush"]  # partition 1 saw nothing: no checkpoint
        await cps.maybe_write()
        assert events == ["flush"]  # nothing new since

        # A rebalance that keeps partition 0 and takes 1 away: 0 goes on from its own state, unread.
        store.reads.clear()
        positions = await cps.assigned({0})
        assert store.reads == [] and positions[(TOPICS.predictions, 0)] == 3
        # Another worker (here: a fresh one) restores partition 0 from the store.
        other = Checkpoints(tracked(), store, interval_s=10, flush_outputs=flush)
        assert (await other.assigned({0}))[(TOPICS.predictions, 0)] == 3
        assert store.reads == [{0}]

    asyncio.run(scenario())


def test_after_a_failed_batch_no_checkpoint_is_written() -> None:
    async def scenario() -> None:
        store = MemoryStore()

        async def flush() -> None:
            pass

        cps = Checkpoints(tracked(), store, interval_s=10, flush_outputs=flush)
        await cps.assigned({0})
        with pytest.raises(RuntimeError):
            async with cps.batch() as t:
                feed(t, traffic("fraud", 0)[:2])
                raise RuntimeError("the producer failed while the outputs were sent")
        assert await cps.write(None) == [] and store.saved == {}

    asyncio.run(scenario())


def test_write_reports_are_drained_once_each_and_never_pile_up() -> None:
    """What app.py does after every checkpoint round: drain the reports into the metrics. Over many
    rounds the metrics count every write exactly once (the store counts them independently), and
    the reports held between two rounds are that round's alone."""
    class CountingStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.writes = 0
            self.bytes = 0

        def write(self, cp: PartitionCheckpoint) -> WriteReport:
            report = super().write(cp)
            self.writes += 1
            self.bytes += report.bytes
            return report

    async def scenario() -> None:
        async def flush() -> None:
            pass

        store = CountingStore()
        metrics = WorkerMetrics(CollectorRegistry())
        clock = [0.0]
        cps = Checkpoints(tracked(), store, interval_s=1, flush_outputs=flush, clock=lambda: clock[0])
        await cps.assigned({0, 1})
        messages = traffic("fraud", 0, windows=30) + traffic("spam", 1, windows=30, seed=2)
        held = []
        for start in range(0, len(messages), 2):
            async with cps.batch() as t:
                feed(t, messages[start:start + 2])
            clock[0] += 1
            await cps.maybe_write()
            held.append(len(cps.reports))
            metrics.observe_checkpoints(cps.drain_reports(), 0.01)
            assert cps.reports == []
        await cps.close()
        metrics.observe_checkpoints(cps.drain_reports(), 0.01)
        assert store.writes > 50 and max(held) <= 2  # two partitions: at most two reports per round
        registry = metrics.registry
        assert registry.get_sample_value("mle_stream_checkpoints_written_total") == store.writes
        assert registry.get_sample_value("mle_stream_checkpoint_bytes_total") == store.bytes

    asyncio.run(scenario())


# -- the store on a broker --------------------------------------------------------------------------


@pytest.fixture
def store(kafka_bootstrap: str, topic_prefix: str):
    topic = topic_prefix + "state"
    ensure_state_topic(kafka_bootstrap, topic, partitions=2)
    s = CheckpointStore(kafka_bootstrap, topic, f"group-{uuid.uuid4().hex[:6]}", timeout_s=30)
    yield s
    s.close()


def big_checkpoint(partition: int, size: int, tag: str) -> PartitionCheckpoint:
    """About `size` bytes after compression (random hex compresses about 2x)."""
    rng = random.Random(tag)
    blob = "".join(rng.choice("0123456789abcdef") for _ in range(size * 2))
    return PartitionCheckpoint(partition, {"p": 5, "l": 7}, {"m": {"blob": blob, "tag": tag}})


@pytest.mark.broker
def test_the_store_keeps_the_latest_complete_checkpoint_in_chunks(store: CheckpointStore) -> None:
    assert store.read([0, 1]) == {0: None, 1: None}
    first = big_checkpoint(0, int(2.5 * CHUNK_BYTES), "first")
    report = store.write(first)
    assert report.chunks == 3 and report.bytes > 2 * CHUNK_BYTES
    store.write(PartitionCheckpoint(1, {"p": 1, "l": 1}, {}))
    second = big_checkpoint(0, CHUNK_BYTES // 2, "second")
    assert store.write(second).chunks == 1

    reader = CheckpointStore(store.bootstrap, store.topic, store.group)  # another process, e.g. after a restart
    got = reader.read([0, 1])
    assert got[0] == second and got[1] is not None and got[1].offsets == {"p": 1, "l": 1}
    # The next write goes to the other slot than the one the stored manifest names.
    assert reader._slot[0] == 1 and reader._chunks[(0, 0)] == 3
    # Other groups' checkpoints in the same topic are not ours.
    assert CheckpointStore(store.bootstrap, store.topic, "another-group").read([0]) == {0: None}


@pytest.mark.broker
def test_a_crash_while_writing_leaves_the_previous_checkpoint(store: CheckpointStore) -> None:
    first = big_checkpoint(0, CHUNK_BYTES, "first")
    store.write(first)  # slot 0
    # A writer that died after two chunks of the next checkpoint (slot 1), before its manifest.
    producer = Producer(producer_config(store.bootstrap, **{"linger.ms": 0}))
    for i in range(2):
        producer.produce(store.topic, key=chunk_key(store.group, 0, 1, i).encode(), value=b"half" * 1000,
                         partition=store.state_partition(0))
        producer.flush(10)
    assert store.read([0])[0] == first


@pytest.mark.broker
def test_a_damaged_checkpoint_is_refused_with_a_warning(store: CheckpointStore,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    store.write(big_checkpoint(0, CHUNK_BYTES, "first"))  # 2 chunks in slot 0
    producer = Producer(producer_config(store.bootstrap, **{"linger.ms": 0}))
    producer.produce(store.topic, key=chunk_key(store.group, 0, 0, 1).encode(), value=b"overwritten",
                     partition=store.state_partition(0))
    producer.flush(10)
    with caplog.at_level(logging.WARNING):
        assert store.read([0]) == {0: None}
    assert f"chunk 1 of 2 ({chunk_key(store.group, 0, 0, 1)}) does not match the manifest's SHA-256" in caplog.text
    assert "reading the partition from its beginning" in caplog.text

    producer.produce(store.topic, key=manifest_key(store.group, 0).encode(), value=b"{not json",
                     partition=store.state_partition(0))
    producer.flush(10)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert store.read([0]) == {0: None}
    assert f"manifest {manifest_key(store.group, 0)}" in caplog.text


@pytest.mark.broker
def test_after_a_failed_write_the_next_one_never_overwrites_the_current_checkpoint(
        store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    first = big_checkpoint(0, CHUNK_BYTES // 2, "first")
    store.write(first)  # slot 0, current
    send = store._send

    def manifest_lands_but_times_out(key: str, value: bytes | None, partition: int) -> None:
        send(key, value, partition)
        if key == manifest_key(store.group, 0):
            raise BrokerError("not delivered within 60 s")

    monkeypatch.setattr(store, "_send", manifest_lands_but_times_out)
    second = big_checkpoint(0, CHUNK_BYTES // 2, "second")
    with pytest.raises(BrokerError):
        store.write(second)  # to slot 1, and its manifest did land: slot 1 is current
    monkeypatch.setattr(store, "_send", send)
    assert store._slot[0] == 0  # all the writer knows
    third = big_checkpoint(0, CHUNK_BYTES // 2, "third")
    store.write(third)
    # It read the manifest again and wrote to slot 0: had it gone to slot 1, a crash during the
    # write would have destroyed the current checkpoint.
    assert store._slot[0] == 0
    assert CheckpointStore(store.bootstrap, store.topic, store.group).read([0])[0] == third


def test_a_failed_checkpoint_write_keeps_the_worker_going() -> None:
    class FailingStore(MemoryStore):
        def write(self, cp: PartitionCheckpoint):
            raise BrokerError("state topic unreachable")

    async def scenario() -> None:
        async def flush() -> None:
            pass

        cps = Checkpoints(tracked(), FailingStore(), interval_s=10, flush_outputs=flush)
        await cps.assigned({0})
        async with cps.batch() as t:
            feed(t, traffic("fraud", 0)[:2])
        assert await cps.write(None) == []
        assert cps.tracked.dirty == {0}  # tried again at the next interval

    asyncio.run(scenario())
