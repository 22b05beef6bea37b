"""The evaluator's results depend on each input's own order only, never on how the two inputs were
interleaved, batched, advanced or checkpointed: a worker that read the predictions topic an hour
ahead of the labels topic, or restarted from a checkpoint in the middle, decides as one that read
them in step.

The truth is one fixed reading of the same two sequences: merged by key (each record's input clock
as it arrives, predictions first at ties), one record at a time, advancing after each. Against it,
hypothesis draws the two inputs (out of order within each, duplicates, labels before and long after
their predictions, corrections, predictions never labeled) and a reading: which input goes next,
batch sizes, advance calls, and snapshot/restore points."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import Label, MetricSnapshot, Prediction
from mle_stream.core.topology import parse_topology

NOW = 10**12
TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, hop: 5s, grace: 2s, retention: 30s}\nlabels: {max_delay: 8s}\n"
    "segments: {dimensions: [country]}\n"
    "rollback: {max_increase: 0.1, consecutive_windows: 2, min_samples: 2}\n")

# A prediction: (id, version, ts, score, country); a label: (id, ts, truth). Each input roughly in
# timestamp order, as pods and labelers send. Predictions are sometimes delivered again (the same
# record, later in the topic); labels come from 1 s before their prediction (clocks differ) to
# twice `max_delay` after it, some never, some twice (the same record again, as a producer's retry
# sends it), and some for ids no prediction has. Not drawn (docs/catch-up.md): a label corrected,
# or delivered again much later, before its prediction is read.
@st.composite
def inputs(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    n = draw(st.integers(1, 40))
    preds = [(i, draw(st.sampled_from(["1", "2"])), draw(st.integers(0, 90_000)),
              draw(st.sampled_from([0.1, 0.4, 0.6, 0.9])),
              draw(st.sampled_from(["DE", "FR", None]))) for i in range(n)]
    preds.sort(key=lambda p: p[2] + draw(st.integers(0, 3_000)))
    originals = list(preds)
    for _ in range(draw(st.integers(0, 5))):  # delivered again, later
        preds.insert(draw(st.integers(0, len(preds))), preds[draw(st.integers(0, n - 1))])
    labs = []
    for p in originals:
        if draw(st.integers(0, 9)):  # 1 in 10 is never labeled
            labs.append((p[0], max(0, p[2] + draw(st.integers(-1_000, 16_000))), draw(st.booleans())))
    labs += [(100 + i, draw(st.integers(0, 90_000)), True) for i in range(draw(st.integers(0, 3)))]
    labs.sort(key=lambda lab: lab[1] + draw(st.integers(0, 3_000)))
    for _ in range(draw(st.integers(0, 3)) if labs else 0):  # delivered again, right after (a retry)
        i = draw(st.integers(0, len(labs) - 1))
        labs.insert(i + 1, labs[i])
    return preds, labs


def as_prediction(p: tuple[Any, ...]) -> Prediction:
    return Prediction(prediction_id=str(p[0]), model="fraud", version=p[1], timestamp=p[2], score=p[3],
                      segment=None if p[4] is None else {"country": p[4]})


def as_label(lab: tuple[Any, ...]) -> Label:
    return Label(str(lab[0]), "fraud", lab[1], lab[2])


class Reading:
    """What a reading of the inputs produced: the CLOSED snapshot of each window, the last snapshot
    of each, the commands."""

    def __init__(self) -> None:
        self.ev = ModelEvaluator(TOPOLOGY)
        self.closed: dict[tuple[Any, ...], MetricSnapshot] = {}
        self.last: dict[tuple[Any, ...], MetricSnapshot] = {}
        self.commands: list[str] = []

    def advance(self, updates: bool = True) -> None:
        self.collect(self.ev.advance(NOW, updates=updates))

    def collect(self, out: Any) -> None:
        for w in out.windows:
            key = (w.window_start, w.version, w.segment)
            w = replace(w, emitted_at=0)
            if w.status == "CLOSED":
                assert key not in self.closed, f"window {key} closed twice"
                self.closed[key] = w
            self.last[key] = replace(w, status="final")
        self.commands += [c.command_id for c in out.commands]

    def restart(self) -> None:
        """A checkpoint and a restore into a new evaluator: what a worker's restart does."""
        data = json.loads(json.dumps(self.ev.snapshot()))
        self.ev = ModelEvaluator.restore(TOPOLOGY, data)

    def finish(self) -> None:
        self.collect(self.ev.close_all(NOW))
        # Windows with no result left: never closed with data (e.g. before the first data).
        self.last = {k: w for k, w in self.last.items() if w.predictions or k in self.closed}


def truth(preds: list[tuple[Any, ...]], labs: list[tuple[Any, ...]]) -> Reading:
    events, clock_p, clock_l = [], -1, -1
    for i, p in enumerate(preds):
        clock_p = max(clock_p, p[2])
        events.append((clock_p, 0, i, p))
    for i, lab in enumerate(labs):
        clock_l = max(clock_l, lab[1])
        events.append((clock_l, 1, i, lab))
    r = Reading()
    for _, kind, _, record in sorted(events, key=lambda e: e[:3]):
        if kind == 0:
            r.ev.add_predictions([as_prediction(record)], NOW)
        else:
            r.ev.add_labels([as_label(record)], NOW)
        r.advance()
    r.finish()
    return r


@settings(max_examples=300, deadline=None)
# Read in one batch, the prediction at 0 (read after 17 s) once made window 0 the first, closed
# empty; read one by one, window 5000 had closed first, on the prediction at 10000 (also read
# after its cut).
@example(data=([(1, "1", 17_001, 0.1, "DE"), (2, "1", 10_000, 0.1, "DE"), (3, "1", 0, 0.1, "DE")],
               [(99, 17_000, True)]), steps=[])
@given(inputs(), st.lists(st.tuples(st.booleans(), st.integers(1, 25), st.sampled_from(
    ["none", "advance", "updates", "restart"])), max_size=40))
def test_any_reading_of_the_two_inputs_gives_the_same_windows_and_decisions(
        data: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]], steps: list[tuple[bool, int, str]]) -> None:
    preds, labs = data
    want = truth(preds, labs)
    got = Reading()
    p = lab = 0
    for take_labels, n, then in steps + [(False, len(preds), "none"), (True, len(labs), "none")]:
        if take_labels and lab < len(labs):
            got.ev.add_labels([as_label(x) for x in labs[lab:lab + n]], NOW)
            lab += n
        elif not take_labels and p < len(preds):
            got.ev.add_predictions([as_prediction(x) for x in preds[p:p + n]], NOW)
            p += n
        if then in ("advance", "updates"):
            got.advance(updates=then == "updates")
        elif then == "restart":
            got.restart()
    got.finish()
    assert got.closed == want.closed
    assert got.last == want.last
    assert got.commands == want.commands
