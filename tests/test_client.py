"""EvaluationClient: batching per model against a real broker, the drop path, and input checks."""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import os
import threading
import time
import uuid
import weakref
import zlib
from collections import Counter, defaultdict
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mle_stream import wire
from mle_stream.client import ClientStats, EvaluationClient
from mle_stream.config import Topics
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import Label, Prediction
from mle_stream.core.topology import parse_topology
from mle_stream.kafka import consumer_config, ensure_topics

T0 = 1_700_000_000_000
PARTITIONS = 4
UNREACHABLE = "127.0.0.1:1"  # nothing listens there: produce() queues, nothing is ever acknowledged


def make_topics(prefix: str) -> Topics:
    return Topics(**{name: prefix + name.replace("_", "-") for name in Topics.__dataclass_fields__})


def prediction(i: int, model: str = "fraud") -> dict[str, Any]:
    return {
        "prediction_id": f"{model}-{i}", "model": model, "version": "v2", "timestamp": T0 + i,
        "score": (i % 100) / 100, "features": {"amount": float(i), "country": "DE"},
    }


def label(i: int, model: str = "fraud") -> Label:
    return Label(prediction_id=f"{model}-{i}", model=model, timestamp=T0 + 5_000 + i, label=i % 2 == 0)


def consume(bootstrap: str, topics: Topics, expected_records: int, timeout_s: float = 30) -> list[Message]:
    """Every message of the two topics, read until `expected_records` records arrived.

    Partitions are assigned, not subscribed (no slow group join), and the end is the expected
    count, not the high watermark, which the embedded broker reports wrong for batched produce.
    """
    consumer = Consumer(consumer_config(bootstrap, f"test-{uuid.uuid4().hex}"))
    consumer.assign([
        TopicPartition(topic, partition, OFFSET_BEGINNING)
        for topic in (topics.predictions, topics.labels) for partition in range(PARTITIONS)
    ])
    messages: list[Message] = []
    records = 0
    deadline = time.monotonic() + timeout_s
    try:
        while records < expected_records and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                assert message.error() is None, message.error()
                messages.append(message)
                records += len(decode(message, topics))
        # A duplicate would show up as an extra record: read a little past the expected count.
        for message in consumer.consume(1000, timeout=1.0):
            messages.append(message)
    finally:
        consumer.close()
    return messages


def decode(message: Message, topics: Topics) -> list[Prediction] | list[Label]:
    decoder = wire.decode_predictions if message.topic() == topics.predictions else wire.decode_labels
    result = decoder(message.value())
    assert result.errors == []
    return result.records  # type: ignore[return-value]


@pytest.mark.broker
def test_every_record_arrives_once_in_batches_keyed_by_model(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = make_topics(topic_prefix)
    ensure_topics(kafka_bootstrap, [topics.predictions, topics.labels], PARTITIONS)
    models = ("fraud", "churn")
    with EvaluationClient(kafka_bootstrap, topics=topics, linger_ms=50) as client:
        for i in range(1000):
            for model in models:
                assert client.log_prediction(prediction(i, model))
        for i in range(0, 1000, 4):
            for model in models:
                assert client.log_label(label(i, model))
    stats = client.stats
    total = 2000 + 500
    assert stats == ClientStats(queued=0, sent_records=total, sent_messages=stats.sent_messages,
                                dropped_queue_full=0, dropped_delivery_failed=0)

    messages = consume(kafka_bootstrap, topics, total)
    seen: Counter[tuple[str, str]] = Counter()
    partitions: dict[tuple[str, str], set[int]] = defaultdict(set)
    for message in messages:
        records = decode(message, topics)
        model = message.key().decode()
        assert {r.model for r in records} == {model}
        partitions[(message.topic(), model)].add(message.partition())
        seen.update((message.topic(), r.prediction_id) for r in records)
    expected = Counter(
        [(topics.predictions, f"{m}-{i}") for m in models for i in range(1000)]
        + [(topics.labels, f"{m}-{i}") for m in models for i in range(0, 1000, 4)]
    )
    assert seen == expected  # every record exactly once
    assert len(messages) == stats.sent_messages < total / 10  # batched
    assert all(len(p) == 1 for p in partitions.values())  # one partition per model and topic


@pytest.mark.broker
def test_close_delivers_records_queued_just_before(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = make_topics(topic_prefix)
    ensure_topics(kafka_bootstrap, [topics.predictions, topics.labels], PARTITIONS)
    # Neither size nor time would send these batches for a minute: only flush/close do.
    client = EvaluationClient(kafka_bootstrap, topics=topics, batch_size=10_000, linger_ms=60_000)
    for i in range(30):
        client.log_prediction(prediction(i))
    assert client.flush(timeout_s=20) == 0
    for i in range(30, 70):
        client.log_prediction(prediction(i))
        client.log_label(label(i))
    client.close(timeout_s=20)
    assert client.stats == ClientStats(queued=0, sent_records=110, sent_messages=3, dropped_queue_full=0,
                                       dropped_delivery_failed=0)
    ids = [(m.topic(), r.prediction_id) for m in consume(kafka_bootstrap, topics, 110) for r in decode(m, topics)]
    assert sorted(ids) == sorted(
        [(topics.predictions, f"fraud-{i}") for i in range(70)] + [(topics.labels, f"fraud-{i}") for i in range(30, 70)]
    )


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    """Records count against max_queue until Kafka acknowledges them, and nothing listens on
    UNREACHABLE, so the first ten stay queued for the whole test whatever the thread does."""
    client = EvaluationClient(UNREACHABLE, topics=make_topics("drop."), max_queue=10, linger_ms=0)
    results: list[bool] = []

    def log_many() -> None:
        for i in range(100):
            results.append(client.log_prediction(prediction(i)) if i % 2 else client.log_label(label(i)))

    caller = threading.Thread(target=log_many)
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive(), "log_* blocked"
    assert results == [True] * 10 + [False] * 90
    assert client.stats == ClientStats(queued=10, sent_records=0, sent_messages=0, dropped_queue_full=90,
                                       dropped_delivery_failed=0)
    assert client.flush(timeout_s=0.2) == 10
    client.close(timeout_s=0.2)
    assert client.stats == ClientStats(queued=0, sent_records=0, sent_messages=0, dropped_queue_full=90,
                                       dropped_delivery_failed=10)
    assert client.log_prediction(prediction(0)) is False  # after close: refused, counted
    assert client.stats.dropped_queue_full == 91
    client.close()  # idempotent


@pytest.fixture
def offline_client() -> Any:
    client = EvaluationClient(UNREACHABLE, topics=make_topics("offline."))
    yield client
    client.close(timeout_s=0)


def test_invalid_records_are_refused_counted_and_logged_once(offline_client: EvaluationClient,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    invalid: list[Any] = [
        {**prediction(0), "timestamp": 1.5},
        {k: v for k, v in prediction(0).items() if k != "version"},
        {**prediction(0), "prediction_id": "x" * 200},  # the worker holds ids of at most 128 bytes
        {**prediction(0), "latency_ms": 1e200},
        {**prediction(0), "features": {"amount": 10**400}},  # no double holds it
        {**prediction(0), "segment": {"country": "\ud800"}},  # a lone surrogate: no UTF-8, no Avro
        {**prediction(0), "prediction_id": 10**5000},  # too long even to print in an error message
        None,
    ]
    with caplog.at_level("WARNING", logger="mle_stream.client"):
        assert [offline_client.log_prediction(r) for r in invalid] == [False] * len(invalid)
        assert offline_client.log_label({"prediction_id": "p", "model": "m", "timestamp": T0}) is False
        assert offline_client.log_label(Label("p", "m", T0, 2**70)) is False  # valid dataclass, no Avro long
        assert offline_client.log_label(Prediction(**prediction(0))) is False  # type: ignore[arg-type]
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "field 'timestamp'" in refusals[0]  # the first, then throttled
    assert offline_client.stats.dropped_invalid == len(invalid) + 3
    assert offline_client.stats.queued == 0
    # What the worker ignores, the client ignores: an unknown field is no reason to refuse.
    assert offline_client.log_prediction({**prediction(1), "scroe": 0.5}) is True
    assert offline_client.log_label({"prediction_id": "p", "model": "m", "timestamp": T0, "label": "cat"})


def test_bad_settings_fail_at_construction() -> None:
    for kwargs in ({"batch_size": 0}, {"linger_ms": -1}, {"max_queue": 0}):
        with pytest.raises(ValueError):
            EvaluationClient(UNREACHABLE, **kwargs)


def test_a_closed_client_is_freed_without_garbage_collection() -> None:
    """A reference cycle would keep the producer and its broker connections open until a GC run."""
    client = EvaluationClient(UNREACHABLE, topics=make_topics("freed."))
    client.log_prediction(prediction(0))
    client.close(timeout_s=0)
    ref = weakref.ref(client)
    gc.disable()
    try:
        del client
        assert ref() is None
    finally:
        gc.enable()


# -- the client refuses exactly what the worker would dead-letter ----------------------------------

_TOPOLOGIES = {task: parse_topology(f'model: m\ntask: {task}\nbaseline: {{version: "1"}}\ncandidate: '
                                    f'{{version: "2"}}\n')
               for task in ("binary", "regression", "multiclass")}
_odd_text = st.text(st.characters(codec="utf-8") | st.sampled_from(["\ud800", "\udfff", "\x00", "é", "😀"]),
                    max_size=8)
_ids = _odd_text | st.text("ab", min_size=120, max_size=140) | st.text("é", min_size=60, max_size=70)
_numbers = (st.floats(min_value=-1e200, max_value=1e200) | st.sampled_from([math.nan, math.inf, -0.0, 0.5])
            | st.integers(-(2**1100), 2**1100) | st.booleans())
_anything = st.none() | _numbers | _odd_text | st.lists(st.integers(), max_size=2)
_maps = st.none() | st.dictionaries(_odd_text, _numbers | _odd_text | st.none(), max_size=3) | _anything


def _mutated(valid: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    """A valid record with a few fields replaced, removed (_MISSING) or added (unknown names)."""
    record = dict(valid)
    for name, value in changes:
        if value is _MISSING:
            record.pop(name, None)
        else:
            record[name] = value
    return record


_MISSING = object()
_prediction_fields = ["prediction_id", "model", "version", "timestamp", "score", "scores", "value",
                      "predicted_label", "latency_ms", "features", "segment", "error", "scroe", "extra"]
_label_fields = ["prediction_id", "model", "timestamp", "label", "scroe"]
_hostile = _ids | _numbers | _anything | _maps | st.just(_MISSING)
_outputs = (st.fixed_dictionaries({"score": st.floats(0, 1)})
            | st.fixed_dictionaries({"scores": st.dictionaries(st.sampled_from("abc"), st.floats(-0.5, 1), min_size=1)})
            | st.fixed_dictionaries({"value": st.floats(-1e200, 1e200)})
            | st.fixed_dictionaries({"error": st.text(max_size=3)}))
_predictions = st.builds(
    _mutated,
    st.builds(lambda fields, output: {**fields, **output}, st.fixed_dictionaries({
        "prediction_id": st.text("abc-0123", min_size=1, max_size=12), "model": st.just("m"), "version": st.just("2"),
        "timestamp": st.integers(0, 2**62), "latency_ms": st.floats(0, 1e4),
        "features": st.dictionaries(st.text(max_size=3), st.floats(-1e6, 1e6) | st.text(max_size=3), max_size=2),
    }), _outputs),
    st.lists(st.tuples(st.sampled_from(_prediction_fields), _hostile), max_size=2),
)
_labels = st.builds(
    _mutated,
    st.fixed_dictionaries({"prediction_id": st.text("abc-0123", min_size=1, max_size=12), "model": st.just("m"),
                           "timestamp": st.integers(0, 2**62), "label": st.booleans() | st.text(max_size=3)}),
    st.lists(st.tuples(st.sampled_from(_label_fields), _hostile), max_size=2),
)


def _worker_accepts(record: dict[str, Any], is_label: bool) -> bool:
    """What the worker does with the record sent as JSON: its decoder, then its evaluator for the
    task the record's output implies, on a clock that agrees with the record's timestamp (clock
    skew and the model's task are what only the worker can judge)."""
    payload = json.dumps({"records": [record]}).encode()  # lone surrogates travel as \\ud800 escapes
    decoded = (wire.decode_label_columns if is_label else wire.decode_prediction_columns)(payload)
    if decoded.errors:
        return False
    # A multiclass model takes any label (as text): only its task would refuse a label value.
    task = ("multiclass" if is_label or record.get("scores") is not None
            else "regression" if record.get("value") is not None else "binary")
    evaluator = ModelEvaluator(_TOPOLOGIES[task])
    now = int(decoded.columns.timestamp[0])
    if is_label:
        return not evaluator.add_label_columns(decoded.columns, now)
    return not evaluator.add_prediction_columns(decoded.columns, now)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_predictions.map(lambda r: (False, r)) | _labels.map(lambda r: (True, r)),
                        min_size=1, max_size=10))
def test_the_client_accepts_exactly_what_the_worker_accepts(offline_client: EvaluationClient,
                                                            records: list[tuple[bool, dict[str, Any]]]) -> None:
    for is_label, record in records:
        accepted = (offline_client.log_label if is_label else offline_client.log_prediction)(record)
        assert accepted == _worker_accepts(record, is_label), record
        if accepted:  # and the Avro batch the client sends of it reads back the same in the worker (repr: NaN)
            if is_label:
                sent = wire.label_from_dict(record)
                assert repr(wire.decode_labels(wire.encode_labels([sent])).records) == repr([sent])
            else:
                sent_p = wire.prediction_from_dict(record)
                assert repr(wire.decode_predictions(wire.encode_predictions([sent_p])).records) == repr([sent_p])


# -- forking, and a broker that is not there --------------------------------------------------------

def _log_in_child(client: EvaluationClient, first: int) -> None:
    for i in range(first, first + 20):
        assert client.log_prediction(prediction(i))
    client.close(timeout_s=20)
    assert client.stats.sent_records == 20, client.stats  # the exit code says whether this held
    os._exit(0)


@pytest.mark.broker
def test_a_forked_child_sends_its_own_records_and_the_parent_its(kafka_bootstrap: str, topic_prefix: str) -> None:
    """gunicorn and uWSGI fork after the app (and its client) is made; without care the child's
    client queues records that no thread of the child ever sends."""
    topics = make_topics(topic_prefix)
    ensure_topics(kafka_bootstrap, [topics.predictions, topics.labels], PARTITIONS)
    client = EvaluationClient(kafka_bootstrap, topics=topics, linger_ms=20)
    for i in range(10):
        client.log_prediction(prediction(i))
    assert client.flush(timeout_s=20) == 0
    client.log_prediction(prediction(10))  # queued in the parent when it forks: the parent sends it
    child = multiprocessing.get_context("fork").Process(target=_log_in_child, args=(client, 100))
    child.start()
    for i in range(11, 20):
        client.log_prediction(prediction(i))
    child.join(timeout=30)
    assert child.exitcode == 0
    client.close(timeout_s=20)
    assert client.stats.sent_records == 20
    ids = sorted(r.prediction_id for m in consume(kafka_bootstrap, topics, 40) for r in decode(m, topics))
    assert ids == sorted(f"fraud-{i}" for i in [*range(20), *range(100, 120)])  # each once


def test_a_broker_outage_logs_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """librdkafka reports every failed reconnect (~15 in 3 s to a closed port, at ERROR): a serving
    pod's log would be flooded. The first is kept; the rest are counted and reported."""
    with caplog.at_level("WARNING", logger="mle_stream.client"):
        client = EvaluationClient(UNREACHABLE, topics=make_topics("outage."))
        client.log_prediction(prediction(0))
        time.sleep(3)
        during = [r.getMessage() for r in caplog.records]
        client.close(timeout_s=0)
    refused = [m for m in during if "Connect to ipv4#127.0.0.1:1 failed" in m]
    assert len(refused) == 2, during  # librdkafka's line and its error callback, once each
    report = [r.getMessage() for r in caplog.records][len(during):]
    held = [int(m.split()[2]) for m in report if "were not logged" in m]
    assert len(held) == 2 and min(held) >= 3, report  # what was held back is counted at close


def _java_murmur2(key: bytes) -> int:
    """Kafka's Java Utils.murmur2 (unsigned here); Kafka's own UtilsTest vectors check it below."""
    m, n = 0x5BD1E995, len(key)
    h = (0x9747B28C ^ n) & 0xFFFFFFFF
    for i in range(0, n - n % 4, 4):
        k = (int.from_bytes(key[i:i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = n - n % 4
    if n % 4 == 3:
        h ^= key[tail + 2] << 16
    if n % 4 >= 2:
        h ^= key[tail + 1] << 8
    if n % 4:
        h = ((h ^ key[tail]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def test_the_java_murmur2_reference_is_kafkas() -> None:
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
               b"abc": 479470107, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    assert {k: _java_murmur2(k) - (1 << 32) * (_java_murmur2(k) >> 31) for k in vectors} == vectors


@pytest.mark.broker
def test_partitioners_as_docs_production_says(kafka_bootstrap: str, topic_prefix: str) -> None:
    """By default the client puts a model in partition CRC32(model) % n, which is not where a Java
    producer puts it; with partitioner=murmur2_random it is (docs/production.md)."""
    topics = make_topics(topic_prefix)
    ensure_topics(kafka_bootstrap, [topics.predictions, topics.labels], PARTITIONS)
    models = [f"model-{i}" for i in range(12)]
    with EvaluationClient(kafka_bootstrap, topics=topics, linger_ms=10) as default:
        for model in models:
            default.log_prediction(prediction(0, model))
    with EvaluationClient(kafka_bootstrap, topics=topics, linger_ms=10,
                          producer_config={"partitioner": "murmur2_random"}) as java_like:
        for model in models:
            java_like.log_label(label(0, model))
    where = {(m.topic(), m.key().decode()): m.partition() for m in consume(kafka_bootstrap, topics, 2 * len(models))}
    crc32 = {m: zlib.crc32(m.encode()) % PARTITIONS for m in models}
    java = {m: (_java_murmur2(m.encode()) & 0x7FFFFFFF) % PARTITIONS for m in models}
    assert {m: where[(topics.predictions, m)] for m in models} == crc32
    assert {m: where[(topics.labels, m)] for m in models} == java
    assert crc32 != java  # the two defaults disagree: one partitioner for all producers
