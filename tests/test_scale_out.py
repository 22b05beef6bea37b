"""Scale-out. Two workers in one consumer group over 4 partitions, one joining and
the other leaving mid-run, end with the windows and decisions of the replay of the same input
(`mle_stream.replay`, no broker), and the partitions really move between them: the joining worker
restores the handover checkpoints the other wrote when its partitions were revoked, and the
remaining ones from the checkpoints it wrote when it stopped (SIGTERM).

Both workers run on this host as users run them (`mle-stream worker`), with their status page and
Prometheus metrics off (`MLE_STATUS_PORT=0`, `MLE_METRICS_PORT=0`): two workers on one host must
not fight over ports."""

from __future__ import annotations

import ast
import dataclasses
import os
import random
import re
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Prediction
from mle_stream.core.topology import parse_topology
from mle_stream.kafka import ensure_topics, producer_config
from mle_stream.replay import replay
from test_reliability import RELIABILITY_TOPOLOGY, assert_windows_equal, wait_for_windows
from worker_process import Worker, traffic

pytestmark = [pytest.mark.broker, pytest.mark.reliability]

PARTITIONS = 4
# librdkafka's default partitioner puts a key in partition CRC32(key) % partitions: fraud and credit
# in 2, spam in 1, churn in 0, search in 3. Every partition holds a model, one holds two.
MODELS = ("fraud", "spam", "churn", "search", "credit")
# Only the handover (revocation) and shutdown checkpoints are written in this test: whatever a
# worker restores was written when a partition left the other one.
CHECKPOINT_INTERVAL = "10m"
# Wall time between two windows' messages (1 s of event time each): ~20 s of stream cover both
# rebalances, and the replay of ~100 windows takes a few seconds.
WINDOW_EVERY_S = 0.2

WROTE = re.compile(r"wrote checkpoint (\w+) of partition (\d+) \(offsets (\{.*?\})\)")
RESTORED = re.compile(r"restored partition (\d+) from checkpoint (\w+) \(\d+ models, offsets (\{.*?\})\)")


def reading(log: str) -> list[set[int]]:
    """The input partitions of each assignment the worker positioned itself on, in order; each
    partition number with all three input topics (co-partitioned: one model's records on one worker)."""
    out = []
    for line in log.splitlines():
        if "reading from " in line:
            per_topic: dict[str, set[int]] = {}
            for topic, p in re.findall(r"(\S+)\[(\d+)\] from \d+", line):
                per_topic.setdefault(topic, set()).add(int(p))
            assert len(per_topic) == 3 and len({frozenset(v) for v in per_topic.values()}) == 1, line
            out.append(next(iter(per_topic.values())))
    return out


def test_a_worker_joining_and_one_leaving_mid_run_end_with_the_single_worker_results(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    assert {zlib.crc32(m.encode()) % PARTITIONS for m in MODELS} == set(range(PARTITIONS))
    topics = Topics(**{name: topic_prefix + default for name, default in Topics().__dict__.items()})
    ensure_topics(kafka_bootstrap, topics.all(), partitions=PARTITIONS)
    topologies = tmp_path / "topologies"
    topologies.mkdir()
    for model in MODELS:
        (topologies / f"{model}.yaml").write_text(RELIABILITY_TOPOLOGY.format(model=model))
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": "k" * 32,
           "MLE_WORKER_GROUP": f"scale-{uuid.uuid4().hex[:8]}", "MLE_CHECKPOINT_INTERVAL": CHECKPOINT_INTERVAL,
           "MLE_TOPIC_PARTITIONS": str(PARTITIONS), "MLE_STATUS_PORT": "0", "MLE_METRICS_PORT": "0"}

    rng = random.Random(8)
    base = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    # With this seed, spam's rollback is decided in window 44 and fraud's in window 53 (~9 and
    # ~11 s into the stream, around the rebalances), by whichever worker holds them then.
    preds, labels = traffic(base, 300, rng, bad_candidate="fraud", per_window=24, bad_from=50, models=MODELS)
    assert [m[0].model for m in preds[:len(MODELS)]] == list(MODELS)
    # A labeler stamps a message's labels when it publishes them, after the window's last prediction.
    # (The replay orders records by timestamp and feeds each run of one kind as a batch: with a
    # timestamp per label, each label would be a batch of its own, and the replay would take minutes.)
    labels = [[dataclasses.replace(x, timestamp=p[-1].timestamp + 1) for x in lab] for p, lab in zip(preds, labels)]

    producer = Producer(producer_config(kafka_bootstrap))
    placed: dict[str, set[int]] = {}  # model -> partitions its messages were delivered to

    def send(topic: str, model: str, value: bytes) -> None:
        producer.produce(topic, key=model.encode(), value=value, on_delivery=lambda err, msg: placed.setdefault(
            model, set()).add(msg.partition()) if err is None else None)

    moved, published = threading.Event(), threading.Event()
    sent = [0]  # prediction messages published

    def publish() -> None:  # a steady stream until both rebalances are done, then a little more
        after = None
        for i, m in enumerate(preds):
            send(topics.predictions, m[0].model, wire.encode_predictions(m))
            if i >= len(MODELS):  # a window's labels after the next window's predictions
                lab = labels[i - len(MODELS)]
                send(topics.labels, lab[0].model, wire.encode_labels(lab))
            producer.flush(10)
            sent[0] = i + 1
            if moved.is_set():
                after = i if after is None else after
                if i - after >= 4 * len(MODELS) and i % len(MODELS) == len(MODELS) - 1:
                    break  # after a whole window
            if i % len(MODELS) == len(MODELS) - 1:
                time.sleep(WINDOW_EVERY_S)
        published.set()

    def wait_sent(count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while sent[0] < count:
            assert not published.is_set(), "the stream ended before the workers were done moving: make it longer"
            assert time.monotonic() < deadline, f"only {sent[0]} of {count} messages published"
            time.sleep(0.05)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Worker(tmp_path / "a", env, topologies), Worker(tmp_path / "b", env, topologies)
    publisher = threading.Thread(target=publish, daemon=True)
    try:
        a.start()
        a.wait_for("reading from ", 1, 30)
        publisher.start()
        wait_sent(5 * len(MODELS), 10)  # A alone has had input of every partition
        b.start()
        b.wait_for("reading from ", 1, 45)  # B is in the group: partitions moved from A to B
        a.wait_for("reading from ", 2, 15)
        wait_sent(sent[0] + 5 * len(MODELS), 10)  # both work for a while (~1 s)
        assert a.process is not None
        a.process.terminate()  # SIGTERM: A checkpoints what it holds and leaves the group
        assert a.process.wait(30) == 0, a.text()[-3000:]
        b.wait_for("reading from ", 2, 30)  # B holds every partition
        assert not published.is_set(), "the stream ended before B held every partition: make it longer"
        moved.set()
        assert published.wait(30)
        n = sent[0]
        sent_preds, sent_labels = preds[:n], labels[:max(0, n - len(MODELS))]
        last = labels[max(0, n - len(MODELS)):n]  # the last windows' labels
        end = (max(p.timestamp for m in sent_preds for p in m) // 1000 + 1) * 1000  # after the last window
        # A prediction at `end` + grace closes (judges) every window before `end` in the worker, and no
        # later one; the replay closes every window at the end of its input: windows before `end` compare.
        grace = parse_topology(RELIABILITY_TOPOLOGY.format(model=MODELS[0])).window_grace_ms
        closing = [[Prediction(prediction_id=f"close-{m}", model=m, version="1", timestamp=end + grace, score=0.5)]
                   for m in MODELS]
        for lab in last:
            send(topics.labels, lab[0].model, wire.encode_labels(lab))
        for msg in closing:
            send(topics.predictions, msg[0].model, wire.encode_predictions(msg))
        assert producer.flush(10) == 0
        result = replay([p for m in sent_preds + closing for p in m], [x for m in sent_labels + last for x in m],
                        {m: parse_topology(RELIABILITY_TOPOLOGY.format(model=m)) for m in MODELS})
        expected = {(w.model, w.version, w.segment, w.window_start): w for w in result.windows if w.window_start < end}
        decisions = [d for d in result.decisions if d.window_start < end]
        want = {d.command_id for d in decisions}
        converged = threading.Event()  # the windows are the replay's: B has processed every message
        with ThreadPoolExecutor(1) as pool:  # both readers join a consumer group: ~3 s each here, at once
            reading_commands = pool.submit(read_until, kafka_bootstrap, [topics.commands], lambda ms: converged.is_set()
                                           and want <= {wire.decode_command(m.value()).command_id for m in ms}, 70)
            try:
                latest = wait_for_windows(kafka_bootstrap, topics, expected, timeout_s=60, before=end)
            finally:
                converged.set()
            commands = reading_commands.result()
        assert b.process is not None and b.process.poll() is None, b.text()[-3000:]
        b.kill()  # done: its state is of no more use
    finally:
        a.stop()
        b.stop()
        publisher.join(timeout=1)
    a_log, b_log = a.text(), b.text()

    # Every model's messages landed in its home partition, and every partition is some model's home.
    assert placed == {m: {zlib.crc32(m.encode()) % PARTITIONS} for m in MODELS}, placed

    # The partitions moved. A first held all four; when B joined they were split between the two.
    assert len(reading(a_log)) == 2 and reading(a_log)[0] == set(range(PARTITIONS)), reading(a_log)
    kept, given = reading(a_log)[1], reading(b_log)[0]
    assert kept and given and kept | given == set(range(PARTITIONS)) and not kept & given, (kept, given)
    # After A left, B held all four.
    assert reading(b_log) == [given, set(range(PARTITIONS))], reading(b_log)
    # A wrote checkpoints only when partitions were revoked and when it stopped (the interval is
    # longer than the test): B restored each partition from the last one A wrote of it.
    lines = a_log.splitlines()
    rebalanced = [i for i, line in enumerate(lines) if "reading from " in line][1]
    stopped = next(i for i, line in enumerate(lines) if "Signal received: 15" in line)
    revoked = {cid: int(k) for cid, k, _ in WROTE.findall("\n".join(lines[:rebalanced]))}
    at_stop = {cid: int(k) for cid, k, _ in WROTE.findall("\n".join(lines[stopped:]))}
    written = [(cid, int(k), ast.literal_eval(offsets)) for cid, k, offsets in WROTE.findall(a_log)]
    restored = [(int(k), cid, ast.literal_eval(offsets)) for k, cid, offsets in RESTORED.findall(b_log)]
    assert sorted(k for k, _, _ in restored) == sorted(given | kept), restored
    for k, cid, offsets in restored:
        mine = [(c, o) for c, p, o in written if p == k]
        assert mine and mine[-1] == (cid, offsets), (
            f"B restored partition {k} from checkpoint {cid} {offsets}, not from the last one A wrote: {mine}")
        assert offsets[topics.predictions] > 0, f"A had read nothing of partition {k} before handing it over"
        # Given to B when it joined: A's handover at the revocation. Kept by A, then B's when A left:
        # written as A stopped, with what A read of it meanwhile.
        assert revoked.get(cid) == k if k in given else at_stop.get(cid) == k, (k, cid, revoked, at_stop)

    assert_windows_equal(latest, expected)
    # The decisions are the replay's, each under the replay's id, none emitted under two ids.
    emitted = [wire.decode_command(m.value()) for m in commands]
    assert len({d.model for d in decisions}) >= 2, f"the test must decide something: {decisions}"
    assert {c.command_id for c in emitted} == want
    ids: dict[tuple, set[str]] = {}
    for c in emitted:
        ids.setdefault((c.model, c.kind, c.rule, c.window_start, c.window_end), set()).add(c.command_id)
    assert all(len(v) == 1 for v in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}
    assert ids.keys() == {(d.model, d.kind, d.rule, d.window_start, d.window_end) for d in decisions}
    # A graceful handover republishes nothing: each decision was emitted once.
    assert len(emitted) == len(decisions), sorted((c.model, c.kind, c.window_start) for c in emitted)
