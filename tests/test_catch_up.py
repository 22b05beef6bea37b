"""Issue 18, exact catch-up: a worker that starts (or restarts) behind a backlog must produce the
windows and decisions of an uninterrupted run, although it reads the predictions far ahead of the
labels (predictions come 500 to a message, labels one to a few: a batch of messages covers much
more prediction time than label time).

The truth is always `mle_stream.replay` of the same records (the same core, no broker, each input
in its own order): the worker's CLOSED snapshot of each window, its last snapshot of each window
and its decisions (under the replay's ids) must be the replay's.

- Without a broker: the worker's step (StreamProcessor) fed two hours of predictions first, then
  all the labels, the order a worker that lags far behind can see them in.
- Over the embedded broker: a worker catching up on a two-hour backlog on a contended core,
  SIGKILLed three times while it catches up and once more while it keeps up; and a second worker
  that joins the group mid-backlog and leaves again.
"""

from __future__ import annotations

import ast
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from unittest import mock

import pytest

from mle_stream import codec, replay as replay_module
from mle_stream.config import Topics
from mle_stream.core.events import Command, CommandKind, Label, MetricSnapshot, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import Topology, parse_topology
from mle_stream.replay import replay
from mle_stream.stream.processor import Incoming, StreamProcessor

MODELS = ("fraud", "spam")  # in partitions 0 and 1 of the two-partition topics (librdkafka: CRC32 of the key)
SIZE_MS, GRACE_MS, MAX_DELAY_MS = 60_000, 10_000, 30_000
CATCH_UP_TOPOLOGY = """\
model: {model}
task: binary
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: 1m, grace: 10s, retention: 10m, updates_every: 0s}}
labels: {{max_delay: 30s}}
segments: {{dimensions: [country]}}
rollback: {{max_increase: 0.1, consecutive_windows: 3, min_samples: 20}}
"""
BAD_FROM = 40  # fraud's candidate is mostly wrong from its 40th window on: a ROLLBACK is due
PER_MESSAGE = 500  # predictions per message, as the client batches them
LABEL_TICK_MS = 2_000  # the labeler publishes what became known every 2 s, stamped with that time


def topologies() -> dict[str, Topology]:
    return {m: parse_topology(CATCH_UP_TOPOLOGY.format(model=m)) for m in MODELS}


@dataclass
class Traffic:
    """Records and the messages they travel in, per input, each input in its topic's order."""

    predictions: list[list[Prediction]] = field(default_factory=list)  # one message each
    labels: list[list[Label]] = field(default_factory=list)

    def flat(self) -> tuple[list[Prediction], list[Label]]:
        return [p for m in self.predictions for p in m], [x for m in self.labels for x in m]

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.predictions + other.predictions, self.labels + other.labels)


def generate(start: int, end: int, rate: float, rng: random.Random, models: Sequence[str] = MODELS,
             per_message: int = PER_MESSAGE, bad_from: int | None = None, origin: int | None = None) -> Traffic:
    """Predictions of every model at `rate` per second of event time in [start, end), `per_message`
    to a message, in timestamp order; labels for 95% of them (5% are never labeled), 1-20 s after
    their prediction: a labeler publishes every LABEL_TICK_MS what became known since, stamped with
    that time, 1-4 labels to a message. Labels that would be stamped at or after `end` are left out
    (they belong to the traffic that follows). fraud's v2 is wrong 70% of the time from window
    `bad_from` (counted from `origin`) on."""
    origin = start if origin is None else origin
    out = Traffic()
    due: dict[int, list[Label]] = {}  # label time -> labels stamped with it
    step = 1000.0 / rate
    for model in models:
        preds: list[Prediction] = []
        i = 0
        while (ts := start + int(i * step)) < end:
            pid = f"{model}-{ts}-{i}-{rng.getrandbits(32):08x}"
            p = Prediction(prediction_id=pid, model=model, version=rng.choice("12"), timestamp=ts, score=rng.random(),
                           segment={"country": rng.choice(["DE", "FR"])})
            preds.append(p)
            i += 1
            if rng.random() < 0.95:
                known = ts + rng.randint(1_000, 20_000 - LABEL_TICK_MS)
                stamp = -(-known // LABEL_TICK_MS) * LABEL_TICK_MS  # the next tick: 1-20 s after the prediction
                if stamp < end:
                    right = rng.random() < 0.8
                    if (bad_from is not None and model == "fraud" and p.version == "2"
                            and (ts - origin) // SIZE_MS >= bad_from):
                        right = rng.random() < 0.3
                    due.setdefault(stamp, []).append(
                        Label(prediction_id=pid, model=model, timestamp=stamp, label=(p.score >= 0.5) == right))
            if len(preds) == per_message:
                out.predictions.append(preds)
                preds = []
        if preds:
            out.predictions.append(preds)
    for stamp in sorted(due):
        for model in models:
            ready = [x for x in due[stamp] if x.model == model]
            while ready:
                k = rng.randint(1, 4)
                out.labels.append(ready[:k])
                ready = ready[k:]
    return out


def closing(end: int) -> Traffic:
    """A prediction of every model at `end` + grace and its label right after: both inputs pass the
    closing time of every window that starts before `end` (which the traffic's last labels are
    stamped before), and of none after."""
    at = end + GRACE_MS
    preds = [[Prediction(prediction_id=f"close-{m}", model=m, version="1", timestamp=at, score=0.5)] for m in MODELS]
    labels = [[Label(prediction_id=f"close-{m}", model=m, timestamp=at + 1, label=True)] for m in MODELS]
    return Traffic(preds, labels)


def window_end_after(traffic: Traffic) -> int:
    """The first window boundary after every record of the traffic."""
    last = max(max(p.timestamp for m in traffic.predictions for p in m),
               max(x.timestamp for m in traffic.labels for x in m))
    return (last // SIZE_MS + 1) * SIZE_MS


# -- the truth -------------------------------------------------------------------------------------

Key = tuple[str, str, Any, int]  # model, version, segment, window start


def key(s: MetricSnapshot) -> Key:
    return (s.model, s.version, s.segment, s.window_start)


def facts(s: MetricSnapshot) -> tuple[Any, ...]:
    """What must be equal: counts, metrics bit for bit (the metric states' sums are exact, so how
    the records are grouped into updates cannot show) and the verdict."""
    return s.predictions, s.labeled, dict(s.metrics), s.verdict


@dataclass
class Truth:
    final: dict[Key, MetricSnapshot]  # the last snapshot of every window
    closed: dict[Key, MetricSnapshot]  # the CLOSED snapshot of every window
    decisions: list[Command]


def truth(traffic: Traffic, before: int) -> Truth:
    """The replay of the traffic, windows starting before `before` (the last ones close at the
    replay's end only)."""
    closed: dict[Key, MetricSnapshot] = {}
    evaluator_class = replay_module.ModelEvaluator

    class Recording(evaluator_class):  # type: ignore[misc, valid-type]
        """The replay's evaluator, keeping the CLOSED snapshots the replay itself only passes on."""

        def advance(self, *args: Any, **kwargs: Any) -> Any:
            out = super().advance(*args, **kwargs)
            for w in out.windows:
                if w.status == "CLOSED":
                    assert key(w) not in closed, f"the replay closed {key(w)} twice"
                    closed[key(w)] = w
            return out

    preds, labels = traffic.flat()
    with mock.patch.object(replay_module, "ModelEvaluator", Recording):
        result = replay(preds, labels, topologies())
    assert not result.rejected, result.rejected[:5]
    return Truth({key(w): w for w in result.windows if w.window_start < before},
                 {k: w for k, w in closed.items() if k[3] < before},
                 [d for d in result.decisions if d.window_start < before])


def assert_same_windows(got: dict[Key, MetricSnapshot], want: dict[Key, MetricSnapshot], what: str) -> None:
    missing = sorted(set(want) - set(got), key=str)
    assert not missing, f"{len(missing)} {what} windows of the replay never published, e.g. {missing[:5]}"
    extra = sorted(set(got) - set(want), key=str)
    assert not extra, f"{len(extra)} {what} windows the replay does not have, e.g. {extra[:5]}"
    wrong = [k for k in sorted(want, key=str) if facts(got[k]) != facts(want[k])]
    assert not wrong, (f"{len(wrong)} of {len(want)} {what} windows differ from the replay's ({labeled(got)} labels "
                       f"joined, the replay {labeled(want)}), e.g. {wrong[0]}: {facts(got[wrong[0]])} != "
                       f"{facts(want[wrong[0]])}")


def assert_same_decisions(emitted: Sequence[Command], want: Sequence[Command]) -> None:
    # The test must decide something: fraud's candidate is rolled back.
    assert any(d.kind is CommandKind.ROLLBACK and d.model == "fraud" for d in want), want
    assert {c.command_id for c in emitted} == {d.command_id for d in want}, (
        sorted((c.model, c.kind.value, c.window_start) for c in emitted),
        sorted((d.model, d.kind.value, d.window_start) for d in want))
    assert {(c.kind, c.rule, c.window_start, c.window_end) for c in emitted} == {
        (d.kind, d.rule, d.window_start, d.window_end) for d in want}


def labeled(windows: dict[Key, MetricSnapshot]) -> int:
    return sum(w.labeled for k, w in windows.items() if k[2] is None)


# -- 1. without a broker ---------------------------------------------------------------------------

TOPICS = Topics()
SIGNER = Signer("catch-up", b"catch-up-key".ljust(32, b"-"))


def encoded(traffic: Traffic, topics: Topics = TOPICS) -> tuple[list[Incoming], list[Incoming]]:
    """The traffic as the worker receives it: Kafka messages of each input, in topic order, each
    model in its own partition."""
    offsets: dict[tuple[str, int], int] = {}

    def message(topic: str, model: str, value: bytes) -> Incoming:
        tp = (topic, MODELS.index(model))
        offsets[tp] = offsets.get(tp, -1) + 1
        return Incoming(topic, tp[1], offsets[tp], value)

    return ([message(topics.predictions, m[0].model, codec.encode_predictions(m)) for m in traffic.predictions],
            [message(topics.labels, m[0].model, codec.encode_labels(m)) for m in traffic.labels])


def batches(messages: Sequence[Incoming], size: int = 200) -> Iterator[list[Incoming]]:
    for i in range(0, len(messages), size):
        yield list(messages[i:i + size])


def test_two_hours_of_predictions_read_before_their_labels_give_the_replay_windows_and_decisions() -> None:
    rng = random.Random(18)
    base = (int(time.time() * 1000) - 9_000_000) // SIZE_MS * SIZE_MS  # 2.5 h ago
    backlog = generate(base, base + 2 * 3_600_000, 2.0, rng, bad_from=BAD_FROM)
    end = window_end_after(backlog)
    traffic = backlog + closing(end)
    want = truth(traffic, before=end)
    # The replay joins the labels: what the worker must do too (today it joined none).
    assert labeled(want.final) > 0.9 * 0.95 * sum(map(len, backlog.predictions))

    processor = StreamProcessor(topologies(), TOPICS, SIGNER, clock=lambda: base + 9_000_000)
    predictions, labels = encoded(traffic)
    outs = []
    for batch in batches(predictions):  # a lagging worker: the predictions' fetches outrun the labels'
        outs += processor.process(batch)
    for batch in batches(labels):
        outs += processor.process(batch)
    assert processor.counters["dead_letter"] == 0
    snapshots = [codec.decode_metric_snapshot(o.value) for o in outs if o.topic == TOPICS.metrics]
    final = {key(s): s for s in snapshots if s.window_start < end}
    closed: dict[Key, MetricSnapshot] = {}
    for s in snapshots:
        if s.status == "CLOSED" and s.window_start < end:
            assert key(s) not in closed, f"{key(s)} closed twice"
            closed[key(s)] = s
    assert_same_windows(closed, want.closed, "CLOSED")
    assert_same_windows(final, want.final, "final")
    emitted = [codec.decode_command(o.value) for o in outs if o.topic == TOPICS.commands]
    assert_same_decisions([c for c in emitted if c.window_start < end], want.decisions)
