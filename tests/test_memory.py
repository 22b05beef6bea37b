"""Bounded memory. Window retention and the join's expiry really free what they
hold, so the worker's state stops growing once event time has passed its horizons.

The worker's step (StreamProcessor, fed encoded Kafka messages and drained as app.py drains it)
runs over traffic whose event time moves far past every horizon. The truth each check compares
with is counted from the generated records themselves: the records young enough that the
documented semantics must (or may) still hold them, and the distinct (pane, version, segment)
keys of the windows that retention may still hold. Memory is tracemalloc's count of what the
Python heap holds, at a tenth of the traffic (already past the horizons) and at its end."""

from __future__ import annotations

import array
import bisect
import gc
import heapq
import itertools
import random
import sys
import tracemalloc

import pytest

from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Label, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.stream.processor import Incoming, StreamProcessor

pytestmark = pytest.mark.reliability

TOPICS = Topics()
MODEL = "fraud"
SIZE_MS, GRACE_MS, RETENTION_MS, MAX_DELAY_MS = 500, 100, 1_000, 500
TOPOLOGY = parse_topology(f"""\
model: {MODEL}
task: binary
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: {SIZE_MS}ms, grace: {GRACE_MS}ms, retention: {RETENTION_MS}ms}}
labels: {{max_delay: {MAX_DELAY_MS}ms}}
segments: {{dimensions: [country]}}
rollback: {{max_increase: 0.1, consecutive_windows: 3, min_samples: 50}}
""")
PER_SECOND = 1_000  # predictions per second of event time
PREDICTIONS = 50_000  # 50 s of event time: the horizons below are 1.5-2.6 s
BATCH = 500  # predictions per Kafka message, as the client sends them
LABEL_BATCH = 100  # labels per message: a full one waits ~0.1 s of event time, well within max_delay
START = 1_700_000_000_000
NOW = START + PREDICTIONS * 1000 // PER_SECOND + 60_000  # the worker's clock: after every record

# What the topology promises, in event time behind the watermark (the largest prediction timestamp):
# a prediction waits for its label max_delay; a joined pair stays correctable for size + retention
# more; a pane is kept until retention has passed the end of its window. Expiry runs when a window
# closes, i.e. at most one window (plus its grace) late.
JOIN_HORIZON_MS = MAX_DELAY_MS + SIZE_MS + RETENTION_MS
PANE_HORIZON_MS = SIZE_MS + RETENTION_MS
EXPIRY_LAG_MS = SIZE_MS + GRACE_MS


def traffic(seed: int = 5) -> list[Prediction | Label]:
    """Predictions in event-time order, labels for ~90% of them 0-300 ms later (in label-time
    order, as a labeler sends them), ~1% of the labels corrected by a second, different one, and
    orphan labels (no prediction ever comes) for ~2% more ids."""
    rng = random.Random(seed)
    out: list[Prediction | Label] = []
    due: list[tuple[int, int, Label]] = []  # (label time, sequence, label): a heap
    sequence = itertools.count()
    for i in range(PREDICTIONS):
        ts = START + i * 1000 // PER_SECOND
        pid = f"p{i:07d}-{rng.getrandbits(64):016x}"
        out.append(Prediction(prediction_id=pid, model=MODEL, version="2" if rng.random() < 0.2 else "1",
                              timestamp=ts, score=rng.random(), segment={"country": rng.choice("ABC")}))
        if rng.random() < 0.9:
            truth = rng.random() < 0.3
            at = ts + rng.randrange(300)
            heapq.heappush(due, (at, next(sequence), Label(pid, MODEL, at, truth)))
            if rng.random() < 0.01:
                heapq.heappush(due, (at + 30, next(sequence), Label(pid, MODEL, at + 30, not truth)))
        if rng.random() < 0.02:
            heapq.heappush(due, (ts, next(sequence), Label(f"orphan-{i}", MODEL, ts, True)))
        while due and due[0][0] <= ts:
            out.append(heapq.heappop(due)[2])
    while due:
        out.append(heapq.heappop(due)[2])
    return out


def messages(records: list[Prediction | Label]) -> list[tuple[Incoming, int]]:
    """The records as Kafka messages of up to BATCH predictions or LABEL_BATCH labels, in publishing order, each
    with the largest prediction timestamp published up to and including it. A label message goes
    after the predictions its labels are for."""
    out: list[tuple[Incoming, int]] = []
    offsets = {TOPICS.predictions: 0, TOPICS.labels: 0}
    preds: list[Prediction] = []
    labels: list[Label] = []
    watermark = -1

    def send(topic: str, value: bytes) -> None:
        out.append((Incoming(topic, 0, offsets[topic], value), watermark))
        offsets[topic] += 1

    for r in records:
        if isinstance(r, Prediction):
            preds.append(r)
            if len(preds) == BATCH:
                watermark = max(watermark, preds[-1].timestamp)
                send(TOPICS.predictions, wire.encode_predictions(preds))
                preds = []
        else:
            labels.append(r)
            if len(labels) == LABEL_BATCH:
                if preds:  # their predictions go first: only the orphans then wait for a prediction
                    watermark = max(watermark, preds[-1].timestamp)
                    send(TOPICS.predictions, wire.encode_predictions(preds))
                    preds = []
                send(TOPICS.labels, wire.encode_labels(labels))
                labels = []
    if preds:
        watermark = max(watermark, preds[-1].timestamp)
        send(TOPICS.predictions, wire.encode_predictions(preds))
    if labels:
        send(TOPICS.labels, wire.encode_labels(labels))
    return out


def test_retention_frees_windows_and_join_entries_and_memory_stays_flat() -> None:
    records = traffic()
    stream = messages(records)
    predictions = [r for r in records if isinstance(r, Prediction)]
    prediction_ts = [p.timestamp for p in predictions]  # sorted: predictions come in event-time order
    orphan_ts = sorted(r.timestamp for r in records if isinstance(r, Label) and r.prediction_id.startswith("orphan"))
    labeled = {r.prediction_id for r in records if isinstance(r, Label)}

    def younger(timestamps: list[int], than: int, among: int) -> int:
        """How many of the first `among` (sorted) timestamps are > than."""
        return among - bisect.bisect_right(timestamps, than, 0, among)

    processor = StreamProcessor({MODEL: TOPOLOGY}, TOPICS, Signer("memory", b"memory-key".ljust(32, b"-")),
                                clock=lambda: NOW)
    evaluator = processor.evaluators[MODEL]
    batches = range(0, len(stream), 4)  # 4 messages a batch: event time moves ~0.5 s per batch
    # Per batch: predictions published, traced heap, predictions held; allocated before tracing starts.
    published, traced, held_by_batch = (array.array("q", bytes(8 * len(batches))) for _ in range(3))
    checks = seen = 0
    # The (pane, version, segment) keys each prediction updates, from the records themselves.
    pane_keys = [(p.timestamp - p.timestamp % SIZE_MS, p.version, segment) for p in predictions
                 for segment in (None, p.segment["country"])]
    gc.collect()
    gc.freeze()  # the test's own records: full collections below need not walk them
    tracemalloc.start()
    try:
        for k, start in enumerate(batches):
            batch = stream[start:start + 4]
            processor.process([m for m, _ in batch])
            processor.drain_tally()  # as app.py does after every batch
            watermark = batch[-1][1]
            seen = bisect.bisect_right(prediction_ts, watermark)  # predictions published so far
            assert evaluator.panes.watermark == watermark
            waiting, orphans = evaluator.join.pending
            held = waiting + evaluator.join.joined
            if PREDICTIONS // 10 <= seen < PREDICTIONS // 5 or seen >= PREDICTIONS * 9 // 10:
                # CPython keeps freed tuples, floats, lists and dicts in free lists (bounded, a few
                # MB at most), which tracemalloc counts as allocated; a full collection empties them.
                gc.collect()
                published[k], traced[k], held_by_batch[k] = seen, tracemalloc.get_traced_memory()[0], held
            if watermark - START < JOIN_HORIZON_MS + EXPIRY_LAG_MS:
                continue  # the state is still filling up: nothing is old enough to go yet
            checks += 1
            # The join holds no more predictions than are young enough to be held, and every one
            # young enough that it must be (a prediction waits for its label max_delay).
            assert held <= younger(prediction_ts, watermark - JOIN_HORIZON_MS - EXPIRY_LAG_MS, seen)
            assert held >= younger(prediction_ts, watermark - MAX_DELAY_MS - 1, seen)
            assert orphans <= younger(orphan_ts, watermark - JOIN_HORIZON_MS - EXPIRY_LAG_MS,
                                      bisect.bisect_right(orphan_ts, watermark))
            # Panes: at most the distinct (pane, version, segment) keys of the predictions retention keeps.
            first = bisect.bisect_right(prediction_ts, watermark - PANE_HORIZON_MS - EXPIRY_LAG_MS, 0, seen)
            assert 0 < len(evaluator.panes) <= len(set(pane_keys[2 * first:2 * seen]))
    finally:
        tracemalloc.stop()
        gc.unfreeze()

    assert seen == PREDICTIONS and processor.counters["predictions"] == PREDICTIONS and checks > 100
    # The heap after every batch of the second tenth of the traffic (past every horizon) and of the
    # last tenth, ten times more traffic later. What the state holds at one moment depends on where
    # event time stands between two window closings (the join's entries vary by ~+-10% here), so
    # the peaks over many batches are compared, not two single moments.
    heap = [row for row in zip(published, traced, held_by_batch) if row[0]]
    second = [(b, h) for n, b, h in heap if PREDICTIONS // 10 <= n < PREDICTIONS // 5]
    last = [(b, h) for n, b, h in heap if n >= PREDICTIONS * 9 // 10]
    assert len(second) > 10 and len(last) > 10
    tenth, end = max(b for b, _ in second), max(b for b, _ in last)
    # Were nothing freed, the last 90% would add at least the id strings of its labeled predictions
    # (tracemalloc counts each one's object): the growth measured is a small part of even that.
    extra = sum(1 for p in predictions[PREDICTIONS // 10:] if p.prediction_id in labeled)
    leak_floor = extra * sys.getsizeof(predictions[0].prediction_id)
    print(f"traced heap, peak over a tenth of the traffic: {tenth / 2**20:.2f} MB at the second, "
          f"{end / 2**20:.2f} MB at the last; not freeing would add > {leak_floor / 2**20:.1f} MB")
    assert abs(end - tenth) <= 0.1 * tenth  # the bench's bound (MAX_RSS_GROWTH), on the Python heap
    assert end - tenth < 0.05 * leak_floor
    assert max(h for _, h in second + last) < 0.1 * extra  # the state holds a small part of the traffic
    # Retention freed only what was old: no record arrived for a pane already forgotten, and the
    # only labels that expired waiting for their prediction are the orphans.
    assert evaluator.panes.late_dropped == 0
    assert evaluator.join.expired_labels + evaluator.join.pending[1] == len(orphan_ts)
